"""Browser check: `mlflow ui` over a tiny run's store, pages loaded in headless Chromium.

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
from conftest import free_port, page_text, stop_process_group

from components.tracking import tracking_uri

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


def test_mlflow_compare_page_lists_the_trial_runs_side_by_side(chromium, tiny_run, mlflow_ui, tmp_path):
    experiment_id = _experiment_id(mlflow_ui, tiny_run.config.mlflow.experiment)
    trials = {name: run_id for name, run_id in _runs(mlflow_ui, experiment_id).items() if name.startswith("trial-")}
    assert sorted(trials) == ["trial-0", "trial-1", "trial-2"]
    query = urllib.parse.urlencode({"runs": json.dumps(list(trials.values())),
                                    "experiments": json.dumps([experiment_id])})
    expected = ["Comparing 3 Runs", *trials, "dropout", "extra_units", "units", "val_accuracy", "score"]
    _, text = page_text(chromium, f"{mlflow_ui}/#/compare-runs?{query}", tmp_path / "profile", expected)
    missing = [item for item in expected if item not in text]
    assert not missing, f"not on the compare page: {missing}\n{text[:2000]}"


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
