"""The MLflow UI links the project prints (opened in a browser by tests/test_mlflow_ui.py) and the experiment's
kind tag, on real MLflow stores."""
import json
import re
import urllib.parse

import pytest
from conftest import run_ffx, write_params
from mlflow.tracking import MlflowClient

from components.config import load_config
from components.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, setup_mlflow, tracking_uri
from components.ui_links import compare_link, experiment_link, model_version_link, run_link, ui_address

LINK = re.compile(r"https?://\S+")


def test_links_use_the_tracking_server_or_the_mlflow_ui_default_address(tmp_path):
    local = load_config(write_params(tmp_path))
    assert ui_address(local) == "http://127.0.0.1:5000"
    assert experiment_link(local, "3") == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    server = load_config(tmp_path / "params.yaml", ["mlflow.tracking_uri=https://mlflow.example.org/team/"])
    assert run_link(server, "3", "abc") == ("https://mlflow.example.org/team/#/experiments/3/runs/abc"
                                            "?workflowType=machine_learning")
    assert model_version_link(server, "ffx classifier", "7") == (
        "https://mlflow.example.org/team/#/models/ffx%20classifier/versions/7?workflowType=machine_learning")
    query = urllib.parse.parse_qs(compare_link(local, "3", ["a", "b"]).split("#/compare-runs?")[1])
    assert json.loads(query["runs"][0]) == ["a", "b"] and json.loads(query["experiments"][0]) == ["3"]


def test_the_experiment_is_tagged_as_custom_model_development_when_made_or_used(tmp_path):
    config = load_config(write_params(tmp_path))
    client, experiment_id = setup_mlflow(config)
    assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    older = load_config(tmp_path / "params.yaml", ["mlflow.experiment=made-before-the-tag"])
    made = MlflowClient(tracking_uri(older)).create_experiment("made-before-the-tag")
    _, reading = setup_mlflow(older, create=False)  # `ffx runs` reads: it changes nothing
    assert reading == made and EXPERIMENT_KIND_TAG not in client.get_experiment(made).tags
    setup_mlflow(older)
    assert client.get_experiment(made).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND


@pytest.mark.e2e  # a whole tune and evaluate through the CLI: 1-2 minutes on a loaded 2-core machine
def test_ffx_tune_and_evaluate_print_the_experiment_search_run_and_model_version_links(extracted_project):
    tuned = run_ffx(extracted_project, "tune", "--set", "tuner.max_trials=1")
    assert tuned.returncode == 0, tuned.stderr
    config = load_config(extracted_project / "params.yaml")
    client, experiment_id = setup_mlflow(config, create=False)
    (search,) = client.search_runs([experiment_id], "tags.ffx_kind = 'search'")
    links = LINK.findall(tuned.stderr)
    assert links == [experiment_link(config, experiment_id), run_link(config, experiment_id, search.info.run_id)]
    evaluated = run_ffx(extracted_project, "evaluate")
    assert evaluated.returncode == 0, evaluated.stderr
    assert LINK.findall(evaluated.stderr) == [model_version_link(config, config.mlflow.registered_model, "1")]
    card = (config.reports.dir / "model_card.md").read_text()
    assert f"<{run_link(config, experiment_id, search.info.run_id)}>" in card
    assert f"<{experiment_link(config, experiment_id)}>" in card
