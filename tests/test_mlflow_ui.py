"""Browser check: `mlflow ui` over a tiny run's store, the links the project prints loaded in headless Chromium
(a fresh profile each: the UI's GenAI / Model training toggle starts at its default).

Skipped when Chromium is not installed, except under CI=true (see the `chromium` fixture); .ci/run installs it.
"""
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, page_text, run_ffx, stop_process_group
from mlflow.tracking import MlflowClient

from components.model.backbone_weights import WEIGHTS_KIND
from components.tracking import backbones_experiment, tracking_uri
from components.ui_links import LOCAL_UI, model_version_link, run_link

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
START_LIMIT_S = 300   # mlflow ui starts in seconds on an idle machine, far slower on a loaded 2-core one


@pytest.fixture(scope="module")
def mlflow_ui(chromium, tiny_run, tmp_path_factory):
    """Base URL of `mlflow ui` on 127.0.0.1 and a free port (started only when Chromium is there to look at it);
    always stopped afterwards."""
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow_ui") / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", tracking_uri(tiny_run.config),
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                  cwd=tiny_run.root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"mlflow ui exited with {server.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow ui did not answer on {base} within {START_LIMIT_S}s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield base
    finally:
        stop_process_group(server)


def _runs(base: str, experiment_id: str) -> dict[str, str]:
    request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", method="POST",
                                     data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return {r["info"]["run_name"]: r["info"]["run_id"] for r in json.load(response)["runs"]}


def _experiment_id(base: str, name: str) -> str:
    query = urllib.parse.urlencode({"experiment_name": name})
    with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=30) as response:
        return json.load(response)["experiment"]["experiment_id"]


def _printed_links(tiny_run, mlflow_ui: str) -> list[str]:
    """The links `ffx runs` prints (the experiment's, then the compare link of the best trials), pointed at this
    test's server instead of `mlflow ui`'s default address."""
    out = run_ffx(tiny_run.root, "runs").stdout
    links = re.findall(r"https?://[^\s)]+", out)
    assert len(links) == 2 and all(link.startswith(LOCAL_UI + "/#/") for link in links), out
    return [mlflow_ui + link.removeprefix(LOCAL_UI) for link in links]


def test_the_printed_experiment_link_opens_on_the_runs_table_with_datasets_and_no_backbone_run(
        chromium, tiny_run, mlflow_ui, tmp_path):
    experiment_url, _ = _printed_links(tiny_run, mlflow_ui)
    config = tiny_run.config
    client = MlflowClient(tracking_uri(config), registry_uri=tracking_uri(config))
    experiment_id = client.get_experiment_by_name(config.mlflow.experiment).experiment_id
    backbones = client.search_runs([backbones_experiment(config, client)], f"tags.ffx_kind = '{WEIGHTS_KIND}'")
    assert len(backbones) == 1  # the evaluation shared the backbone's weights, outside the project's experiment
    runs = client.search_runs([experiment_id])
    assert {r.data.tags.get("ffx_kind") for r in runs if "mlflow.parentRunId" not in r.data.tags} == {"search"}
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == tiny_run.search.parent_run_id]
    assert len(trials) == 3 and all({d.dataset.name for d in r.inputs.dataset_inputs} == {"train", "valid"}
                                    for r in trials)

    digest = {d.dataset.name: d.dataset.digest for d in trials[0].inputs.dataset_inputs}
    # The Runs table: its columns, the search run (its trials nested under it) and its datasets, name (digest).
    expected = ["Runs - Experiment", "Run Name", "Dataset", "Duration", tiny_run.search.project, f"train ({digest['train']})",
                f"valid ({digest['valid']})", "4 matching runs"]
    _, text = page_text(chromium, experiment_url, tmp_path / "profile", expected)
    missing = [item for item in expected if item not in text]
    assert not missing, f"not on the experiment page: {missing}\n{text[:3000]}"
    # The GenAI overview a fresh browser opens without ?workflowType (titled "Overview - Experiment N" in 3.17,
    # although the experiment is tagged custom_model_development): trace counters, an empty chart, a pop-up.
    genai = [item for item in ("Traces 0", "Detect Issues", "No data available", "Overview") if item in text]
    assert not genai, f"GenAI overview shown: {genai}\n{text[:3000]}"
    assert backbones[0].info.run_name not in text


def test_the_printed_compare_link_shows_the_trials_side_by_side(chromium, tiny_run, mlflow_ui, tmp_path):
    _, compare_url = _printed_links(tiny_run, mlflow_ui)
    experiment_id = _experiment_id(mlflow_ui, tiny_run.config.mlflow.experiment)
    trials = {name: run_id for name, run_id in _runs(mlflow_ui, experiment_id).items() if name.startswith("trial-")}
    assert sorted(trials) == ["trial-0", "trial-1", "trial-2"]
    expected = ["Comparing 3 Runs", *trials, "dropout", "extra_units", "units", "val_accuracy", "score"]
    _, text = page_text(chromium, compare_url, tmp_path / "profile", expected)
    missing = [item for item in expected if item not in text]
    assert not missing, f"not on the compare page: {missing}\n{text[:2000]}"


def test_the_printed_search_run_and_model_version_links_open_their_pages(chromium, tiny_run, mlflow_ui, tmp_path):
    config, registration = tiny_run.config, tiny_run.evaluation.registration
    experiment_id = _experiment_id(mlflow_ui, config.mlflow.experiment)
    served = lambda link: mlflow_ui + link.removeprefix(LOCAL_UI)  # noqa: E731
    run_url = served(run_link(config, experiment_id, tiny_run.search.parent_run_id))
    expected = [tiny_run.search.project, "best_score", "Child runs", "trial-0", "Datasets", "train (",
                "Registered models", f"{registration.name} v{registration.version}"]
    _, text = page_text(chromium, run_url, tmp_path / "run", expected)
    missing = [item for item in expected if item not in text]
    assert not missing, f"not on the search run's page: {missing}\n{text[:3000]}"
    version_url = served(model_version_link(config, registration.name, registration.version))
    expected = [f"Version {registration.version}", registration.name, "Source Run", tiny_run.search.project]
    _, text = page_text(chromium, version_url, tmp_path / "version", expected)
    missing = [item for item in expected if item not in text]
    assert not missing, f"not on the model version's page: {missing}\n{text[:3000]}"


def test_mlflow_run_page_lists_the_plots_trial_table_and_model_card(chromium, tiny_run, mlflow_ui, tmp_path):
    experiment_id = _experiment_id(mlflow_ui, tiny_run.config.mlflow.experiment)
    run_id = tiny_run.search.parent_run_id
    page = f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{run_id}/artifacts"

    search_files = ["parallel_coordinates.png", "objective_by_trial.png", "learning_curves.png", "trials.csv",
                    "trials.html"]
    dom, text = page_text(chromium, f"{page}/search/parallel_coordinates.png", tmp_path / "search", search_files)
    missing = [name for name in search_files if name not in text]
    assert not missing, f"not listed under search/: {missing}\n{text[:2000]}"
    assert re.search(r'<img[^>]*alt="search/parallel_coordinates.png"', dom)  # the preview shows the image

    evaluation_files = ["model_card.md", "confusion_matrix.png", "roc.png", "precision_recall.png",
                        "calibration.png", "confident_errors.png"]
    _, text = page_text(chromium, f"{page}/evaluation/model_card.md", tmp_path / "evaluation", evaluation_files)
    missing = [name for name in evaluation_files if name not in text]
    assert not missing, f"not listed under evaluation/: {missing}\n{text[:2000]}"
    assert "Model card: ffx-classifier" in text  # the Markdown preview rendered the card
