"""The trained head on disk (models/head.keras + head.json), and the end-to-end classifier in the MLflow registry.

What a version holds: the head, its spec and this package's code (a few MB). The backbone's weights (58 MB for
VGG16, 80 MB for VGG19) are logged once per backbone identity, as the artifact of a run tagged
`ffx_kind=backbone-weights`, and every version refers to them by a `runs:/` URI with their SHA-256: a hundred
versions of the same backbone share one copy, and any machine that reaches the tracking store can load them.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.config import Config, lower_is_better
from components.errors import FFXError, ModelNotFoundError, UnsafeModelError
from components.files import atomic_path, content_key, file_sha1, write_json_atomic
from components.tracking import setup_mlflow

HEAD_FILE = "head.keras"
METADATA_FILE = "head.json"
MODEL_NAME = "classifier"             # the logged model's name inside the run
WEIGHTS_KIND = "backbone-weights"     # ffx_kind tag of the runs holding shared backbone weights
MODEL_CODE = Path(__file__).with_name("classifier_model.py")  # MLflow "models from code" entry
# The package files a registered model carries, so that it runs where only its requirements are installed: the
# import closure of classifier_model.py (tests/test_dvc_contract.py checks it), not the whole package.
MODEL_FILES = ("__init__.py", "augment.py", "backbone.py", "classifier_model.py", "config.py", "defaults.yaml",
               "errors.py", "evaluate.py", "features.py", "files.py", "images.py", "registry.py", "runtime.py",
               "serving.py", "tracking.py")
# What the served model imports, pinned to the versions that trained it.
SERVING_PACKAGES = ("tensorflow", "keras", "numpy", "pandas", "pillow", "h5py", "pyyaml", "pydantic")


def head_paths(config: Config) -> tuple[Path, Path]:
    return config.model.dir / HEAD_FILE, config.model.dir / METADATA_FILE


def save_head(model, metadata: dict, config: Config) -> Path:
    """Save the head and the metadata prediction needs (classes, backbone) via temp files and rename."""
    model_path, metadata_path = head_paths(config)
    with atomic_path(model_path) as tmp:  # keeps the .keras suffix Keras wants
        model.save(tmp)
    write_json_atomic(metadata_path, metadata)
    return model_path


def load_head(path: Path):
    """(keras model, metadata) from a head saved by save_head."""
    path = Path(path)
    metadata_path = path.with_name(METADATA_FILE) if path.suffix == ".keras" else path / METADATA_FILE
    model_path = path if path.suffix == ".keras" else path / HEAD_FILE
    if not model_path.is_file() or not metadata_path.is_file():
        raise ModelNotFoundError(f"{model_path}: no head model here (expected {HEAD_FILE} and {METADATA_FILE}; "
                                 "run `ffx tune` first)")
    try:
        metadata = json.loads(metadata_path.read_text())
    except ValueError as exc:
        raise ModelNotFoundError(f"{metadata_path}: not valid JSON ({exc})") from None
    return load_keras_safely(model_path), metadata


def load_keras_safely(path: Path):
    """A Keras model file loaded in safe_mode, without its optimizer (prediction needs none); a model that would
    run Python code stored in it, or that does not load, is one clear error."""
    import keras

    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except ValueError as exc:
        if "safe_mode" in str(exc):
            raise UnsafeModelError(
                f"{path}: refused: loading this model would run Python code stored in it (e.g. a Lambda layer); "
                "ffx loads models with Keras safe_mode. Use a head saved by `ffx tune`") from None
        raise ModelNotFoundError(f"{path}: not a loadable Keras model ({str(exc).splitlines()[0]})") from None


def share_backbone_weights(config: Config, client, experiment_id: str, metadata: dict) -> dict:
    """The URI, SHA-256 and size of the backbone's weights in the tracking store, logged on first use.

    Keyed by architecture and weights identity (not input size, pooling, layer or precision, which change how
    the weights are used, not what they are), so every model of that backbone shares the one copy.
    """
    spec = metadata["backbone"]
    key = content_key([spec["name"], metadata["weights_id"]])[:16]
    found = client.search_runs([experiment_id], f"tags.ffx_kind = '{WEIGHTS_KIND}' and tags.ffx_weights_key = "
                                                f"'{key}' and attributes.status = 'FINISHED'", max_results=1)
    if found:
        tags = found[0].data.tags
        return {"uri": tags["ffx_weights_uri"], "sha256": tags["ffx_weights_sha256"],
                "bytes": int(tags["ffx_weights_bytes"])}
    from components.backbone import backbone_of_head

    # The whole base, float32, at the stage's own settings: the weights the features were made with.
    backbone = backbone_of_head(spec, metadata["weights_id"], config.root, layer="last", precision="float32")
    run = client.create_run(experiment_id, run_name=f"backbone-{spec['name']}-{key[:8]}",
                            tags={"ffx_kind": WEIGHTS_KIND, "ffx_weights_key": key,
                                  "weights": metadata["weights_id"], "backbone": spec["name"]})
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{spec['name']}.weights.h5"
        backbone.model.save_weights(path)
        weights = {"uri": f"runs:/{run_id}/backbone/{path.name}", "sha256": file_sha1(path, "sha256"),
                   "bytes": path.stat().st_size}
        client.log_artifact(run_id, str(path), "backbone")
    for name, value in weights.items():
        client.set_tag(run_id, f"ffx_weights_{name}", str(value))
    client.set_terminated(run_id, "FINISHED")  # only a finished run is found and shared
    return weights


def fetch_backbone_weights(weights: dict) -> Path:
    """The shared weights file on this machine (a local store's own file; else downloaded), checked by SHA-256."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        path = Path(mlflow.artifacts.download_artifacts(artifact_uri=weights["uri"]))
    except (MlflowException, OSError) as exc:
        raise ModelNotFoundError(f"backbone weights {weights['uri']}: cannot be read from the tracking store "
                                 f"({str(exc).splitlines()[0]}); was the run holding them deleted?") from None
    if file_sha1(path, "sha256") != weights["sha256"]:
        raise ModelNotFoundError(f"backbone weights {weights['uri']}: SHA-256 differs from the one registered "
                                 f"with the model ({weights['sha256'][:12]}…); the file was changed")
    return path


@dataclass
class Registration:
    name: str
    version: str
    alias: str
    promoted: bool
    score: float
    champion_score: float | None   # the previous champion's score, if there was one
    run_id: str
    decision: str                  # why the alias moved or stayed, with both scores


def _requirements() -> list[str]:
    import importlib.metadata

    return [f"{package}=={importlib.metadata.version(package)}" for package in SERVING_PACKAGES]


def _copy_code(folder: Path) -> Path:
    target = folder / "components"
    target.mkdir()
    for name in MODEL_FILES:
        shutil.copy2(Path(__file__).with_name(name), target / name)
    return target


def comparison_score(config: Config, metadata: dict, test_metrics: dict) -> tuple[str, float, bool]:
    """(tag name, score, lower is better) used to decide champion vs challenger."""
    if config.registry.compare_split == "valid":
        objective = metadata["search"]["objective"]
        return f"valid_{objective}", float(metadata["search"]["score"]), lower_is_better(objective)
    metric = config.registry.compare_metric
    if metric not in test_metrics:
        raise FFXError(f"params: 'registry.compare_metric' {metric} is not among the test metrics "
                       f"({', '.join(k for k, v in test_metrics.items() if isinstance(v, float))})")
    return f"test_{metric}", float(test_metrics[metric]), lower_is_better(metric)


def register_classifier(config: Config, head_file: Path, metadata: dict, test_metrics: dict, example_image: Path,
                        artifacts: list[Path] = ()) -> Registration:
    """Log the end-to-end classifier to the search's parent run, register a new version, and move the alias
    per registry.promote."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from components.serving import HEAD_ARTIFACT, SPEC_ARTIFACT, input_example, signature, spec_for

    client, experiment_id = setup_mlflow(config)
    name, alias = config.mlflow.registered_model, config.registry.alias
    run_id = metadata["search"]["parent_run_id"]
    score_tag, score, lower_wins = comparison_score(config, metadata, test_metrics)
    flat = {f"test_{k}": v for k, v in test_metrics.items() if isinstance(v, (int, float))}
    weights = share_backbone_weights(config, client, experiment_id, metadata)
    spec = spec_for(metadata, config.predict.tta, config.data.max_pixels, config.predict.batch_size, weights)
    with tempfile.TemporaryDirectory() as folder, mlflow.start_run(run_id=run_id, experiment_id=experiment_id):
        spec_file = Path(folder) / "classifier.json"
        spec_file.write_text(json.dumps(spec, indent=2, sort_keys=True))
        mlflow.log_metrics(flat)
        mlflow.log_dict(test_metrics, "evaluation/test.json")
        for path in artifacts:
            mlflow.log_artifact(str(path), "evaluation")
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=str(MODEL_CODE), code_paths=[str(_copy_code(Path(folder)))],
            artifacts={HEAD_ARTIFACT: str(head_file), SPEC_ARTIFACT: str(spec_file)},
            signature=signature(spec["class_names"]), input_example=input_example(example_image),
            # Explicit requirements: MLflow's inference would load the model in a subprocess (slow).
            pip_requirements=_requirements(), registered_model_name=name, metadata={**metadata, "spec": spec})
    version = str(info.registered_model_version)
    for key, value in {**flat, "backbone_weights": weights["uri"]}.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_model_version_tag(name, version, score_tag, str(score))
    try:
        champion = client.get_model_version_by_alias(name, alias)
        champion_score = float(champion.tags[score_tag]) if score_tag in champion.tags else None
    except MlflowException:
        champion, champion_score = None, None
    promoted = config.registry.promote == "always" or champion_score is None or (
        score < champion_score if lower_wins else score > champion_score)
    decision = (f"{'promoted' if promoted else 'kept champion'}: version {version} {score_tag} {score:.4f} vs "
                f"champion {'none' if champion_score is None else f'v{champion.version} {champion_score:.4f}'} "
                f"(promote: {config.registry.promote})")
    client.set_model_version_tag(name, version, "promotion", decision)
    client.set_tag(run_id, "promotion", decision)
    client.log_metric(run_id, "challenger_score", score)
    if champion_score is not None:
        client.log_metric(run_id, "champion_score", champion_score)
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    return Registration(name, version, alias, promoted, score, champion_score, run_id, decision)


def load_registered_classifier(config: Config, reference: str):
    """The pyfunc model at `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/…` or an MLflow model folder."""
    import mlflow
    from mlflow.exceptions import MlflowException

    setup_mlflow(config)
    try:
        return mlflow.pyfunc.load_model(reference)
    except MlflowException as exc:
        raise ModelNotFoundError(f"{reference}: not found in the MLflow registry at {config.mlflow.tracking_uri} "
                                 f"({exc.message.splitlines()[0]}); run `ffx evaluate` to register one") from None
