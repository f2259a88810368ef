"""The backbone's weights, shared by every registered version of a backbone identity.

They are logged once per identity (58 MB for VGG16, 80 MB for VGG19), as the artifact of a run tagged
`ffx_kind=backbone-weights`, and every version refers to them by a `runs:/` URI with their SHA-256: a hundred
versions of the same backbone share one copy, and any machine that reaches the tracking store can load them.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from components.errors import ModelNotFoundError
from components.features.backbone import backbone_of_head
from components.files import content_key, file_digest
from components.tracking import create_run_once

WEIGHTS_KIND = "backbone-weights"     # ffx_kind tag of the runs holding shared backbone weights


def share_backbone_weights(root: Path, client, experiment_id: str, metadata: dict) -> dict:
    """The URI, SHA-256 and size of the backbone's weights in the tracking store, logged in `experiment_id` on first
    use.

    Keyed by architecture and weights identity (not input size, pooling, layer or precision, which change how
    the weights are used, not what they are), so every model of that backbone shares the one copy.
    """
    spec = metadata["backbone"]
    key = content_key([spec["name"], metadata["weights_id"]])[:16]
    query = f"tags.ffx_kind = '{WEIGHTS_KIND}' and tags.ffx_weights_key = '{key}' and attributes.status = 'FINISHED'"
    found = client.search_runs([experiment_id], query, max_results=1)
    if found:
        tags = found[0].data.tags
        return {"uri": tags["ffx_weights_uri"], "sha256": tags["ffx_weights_sha256"],
                "bytes": int(tags["ffx_weights_bytes"])}
    # The whole base, float32, at the stage's own settings: the weights the features were made with.
    backbone = backbone_of_head(spec, metadata["weights_id"], root, layer="last", precision="float32")
    run_id = create_run_once(client, experiment_id, f"backbone-{spec['name']}-{key[:8]}",
                             {"ffx_kind": WEIGHTS_KIND, "ffx_weights_key": key, "weights": metadata["weights_id"],
                              "backbone": spec["name"]})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{spec['name']}.weights.h5"
        backbone.model.save_weights(path)
        weights = {"uri": f"runs:/{run_id}/backbone/{path.name}", "sha256": file_digest(path, "sha256"),
                   "bytes": path.stat().st_size}
        client.log_artifact(run_id, str(path), "backbone")
    for name, value in weights.items():
        client.set_tag(run_id, f"ffx_weights_{name}", str(value))
    client.set_terminated(run_id, "FINISHED")  # only a finished run is found and shared
    return weights


@contextlib.contextmanager
def fetched_backbone_weights(weights: dict):
    """The shared weights file on this machine, checked by SHA-256, for the block that loads it: MLflow copies an
    artifact out of any store, local ones included: the copy goes into a temporary folder removed when the block
    ends, so that every model load does not leave tens of MB behind."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="ffx-backbone-weights-") as folder:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=weights["uri"], dst_path=folder))
        except (MlflowException, OSError) as exc:
            raise ModelNotFoundError(f"backbone weights {weights['uri']}: cannot be read from the tracking store "
                                     f"({str(exc).splitlines()[0]}); was the run holding them deleted?") from None
        if file_digest(path, "sha256") != weights["sha256"]:
            raise ModelNotFoundError(f"backbone weights {weights['uri']}: SHA-256 differs from the one registered "
                                     f"with the model ({weights['sha256'][:12]}…); the file was changed")
        yield path
