import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from components.config import load_config, tracking_uri
from components.hypermodel import build_head
from components.registry import register_head
from components.tracking import setup_mlflow
from conftest import write_params


def _register(config, accuracy: float, search_score: float = 0.9):
    client, experiment_id = setup_mlflow(config)
    run_id = client.create_run(experiment_id).info.run_id
    client.set_terminated(run_id)
    model = build_head(4, 2, 4, 0.5, 0, 0.001)
    metadata = {"class_names": ["a", "b"], "search": {"parent_run_id": run_id, "objective": "val_accuracy",
                                                      "score": search_score}}
    return register_head(config, model, metadata, {"accuracy": accuracy, "loss": 0.5},
                         np.zeros((2, 4), np.float32))


def test_alias_moves_only_to_a_better_challenger(tmp_path):
    config = load_config(write_params(tmp_path))
    first = _register(config, 0.80)
    assert first.promoted and first.champion_score is None
    worse = _register(config, 0.75)
    assert not worse.promoted and worse.champion_score == pytest.approx(0.80)
    client = MlflowClient(tracking_uri(config), registry_uri=tracking_uri(config))
    assert str(client.get_model_version_by_alias("ffx-head", "champion").version) == first.version
    assert "kept champion" in client.get_run(worse.run_id).data.tags["promotion"]
    assert client.get_run(worse.run_id).data.metrics["champion_score"] == pytest.approx(0.80)
    better = _register(config, 0.85)
    assert better.promoted
    assert str(client.get_model_version_by_alias("ffx-head", "champion").version) == better.version


def test_comparison_can_use_the_validation_score_or_always_promote(tmp_path):
    config = load_config(write_params(tmp_path), ["registry.compare_split=valid"])
    _register(config, 0.9, search_score=0.95)
    assert not _register(config, 0.99, search_score=0.90).promoted  # better test, worse validation
    always = load_config(tmp_path / "params.yaml", ["registry.promote=always"])
    assert _register(always, 0.1).promoted
