"""KerasTuner's distributed mode (a chief and 2 workers on loopback) logging to a real `mlflow server`."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, make_dataset, wait_for_http, write_params
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--default-artifact-root", (store / "a").as_uri()],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_chief_and_two_workers_log_every_trial_once_to_a_tracking_server(tmp_path, mlflow_server):
    make_dataset(tmp_path / "data")
    write_params(tmp_path, tuner={"max_trials": 4, "algorithm": "random", "executions_per_trial": 1},
                 mlflow={"tracking_uri": mlflow_server})
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", TF_CPP_MIN_LOG_LEVEL="3")
    for command in (["ffx", "extract", "-q"], ["ffx", "tune", "--workers", "2"]):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("ffx")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.ffx_kind = 'search'")
    trials = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(t.data.tags["ffx_trial_id"] for t in trials) == ["0", "1", "2", "3"]
    assert {t.info.status for t in trials} == {"FINISHED"} and parent.info.status == "FINISHED"
    for trial in trials:
        assert len(client.get_metric_history(trial.info.run_id, "val_accuracy")) == 2  # no trial ran twice
    assert (tmp_path / "models" / "head.keras").is_file()
