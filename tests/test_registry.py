"""Registration of the end-to-end classifier: champion/challenger aliases, one shared copy of the backbone weights."""
from pathlib import Path

import pytest
from conftest import write_params
from mlflow.tracking import MlflowClient

from components.config import load_config
from components.features.store import read_features
from components.model.backbone_weights import WEIGHTS_KIND, share_backbone_weights
from components.model.head_file import head_paths, load_head
from components.model.registry import register_classifier
from components.tracking import backbones_experiment, setup_mlflow, tracking_uri


def _store(tmp_path, tiny_run, *overrides):
    """A fresh MLflow store next to the tiny run's data, head and features."""
    return load_config(write_params(tmp_path, data={"root": str(tiny_run.config.data.root)}), list(overrides))


def _register(config, tiny_run, accuracy: float, search_score: float = 0.9):
    """Register the tiny run's head as a new version under a new parent run, with the given scores."""
    client, experiment_id = setup_mlflow(config)
    run_id = client.create_run(experiment_id).info.run_id
    client.set_terminated(run_id)
    head_file = head_paths(tiny_run.config)[0]
    _, metadata = load_head(head_file)
    metadata["search"].update(parent_run_id=run_id, objective="val_accuracy", score=search_score)
    test = read_features(tiny_run.config.features.path("test"))
    return register_classifier(config, head_file, metadata, {"accuracy": accuracy, "loss": 0.5},
                               tiny_run.config.data.root / test.paths[0])


def test_alias_moves_only_to_a_better_challenger(tmp_path, tiny_run):
    config = _store(tmp_path, tiny_run)
    first = _register(config, tiny_run, 0.80)
    assert first.promoted and first.champion_score is None
    worse = _register(config, tiny_run, 0.75)
    assert not worse.promoted and worse.champion_score == pytest.approx(0.80)
    client = MlflowClient(tracking_uri(config), registry_uri=tracking_uri(config))
    name = config.mlflow.registered_model
    assert str(client.get_model_version_by_alias(name, "champion").version) == first.version
    assert "kept champion" in client.get_run(worse.run_id).data.tags["promotion"]
    assert client.get_run(worse.run_id).data.metrics["champion_score"] == pytest.approx(0.80)
    better = _register(config, tiny_run, 0.85)
    assert better.promoted
    assert str(client.get_model_version_by_alias(name, "champion").version) == better.version


def test_comparison_can_use_the_validation_score_or_always_promote(tmp_path, tiny_run):
    config = _store(tmp_path, tiny_run, "registry.compare_split=valid")
    _register(config, tiny_run, 0.9, search_score=0.95)
    assert not _register(config, tiny_run, 0.99, search_score=0.90).promoted  # better test, worse validation
    always = load_config(tmp_path / "params.yaml", ["registry.promote=always"])
    assert _register(always, tiny_run, 0.1).promoted


def test_every_version_refers_to_one_shared_copy_of_the_backbone_weights(tmp_path, tiny_run):
    config = _store(tmp_path, tiny_run)
    versions = [_register(config, tiny_run, accuracy).version for accuracy in (0.8, 0.9)]
    client, experiment_id = setup_mlflow(config)
    assert not client.search_runs([experiment_id], f"tags.ffx_kind = '{WEIGHTS_KIND}'")  # not among the searches
    weights_runs = client.search_runs([backbones_experiment(config, client)], f"tags.ffx_kind = '{WEIGHTS_KIND}'")
    assert len(weights_runs) == 1
    name = config.mlflow.registered_model
    uris = {client.get_model_version(name, v).tags["backbone_weights"] for v in versions}
    assert uris == {weights_runs[0].data.tags["ffx_weights_uri"]}
    assert int(weights_runs[0].data.tags["ffx_weights_bytes"]) > 50_000_000  # VGG19's convolutions, once
    for version in versions:  # a version holds the head, its spec and code: far less than the weights
        source = Path(client.get_model_version_download_uri(name, version).removeprefix("file://"))
        assert sum(f.stat().st_size for f in source.rglob("*") if f.is_file()) < 5_000_000


def test_weights_logged_in_the_project_experiment_before_are_reused_and_the_version_loads(tmp_path, tiny_run,
                                                                                          monkeypatch):
    """Stores from before the backbones had an experiment of their own: their weights run sits among the searches,
    and a new version still shares it (by its runs:/ URI) instead of logging a second copy. Loading it leaves no
    copy of the weights behind (one per load filled a disk)."""
    import tempfile

    import numpy as np
    import pandas as pd

    from components.model.registry import load_registered_classifier

    config = _store(tmp_path, tiny_run)
    client, experiment_id = setup_mlflow(config)
    _, metadata = load_head(head_paths(tiny_run.config)[0])
    earlier = share_backbone_weights(config.root, client, experiment_id, metadata)  # where they used to be logged
    version = _register(config, tiny_run, 0.8).version
    name = config.mlflow.registered_model
    assert client.get_model_version(name, version).tags["backbone_weights"] == earlier["uri"]
    assert not client.search_runs([backbones_experiment(config, client)], f"tags.ffx_kind = '{WEIGHTS_KIND}'")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where MLflow and ffx put their temporary copies
    model = load_registered_classifier(config, f"models:/{name}/{version}")
    assert not list(scratch.rglob("*.weights.h5"))
    image = tiny_run.config.data.root / read_features(tiny_run.config.features.path("test")).paths[0]
    (probability,) = model.predict(pd.DataFrame({"path": [str(image)]}))["probability"]
    assert 0.0 <= probability <= 1.0 and np.isfinite(probability)
