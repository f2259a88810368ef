"""KerasTuner's distributed mode (a chief and 2 workers on loopback) logging to a real `mlflow server`; stopped by
SIGTERM, it closes its runs KILLED and a re-run finishes the search."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import free_port, make_dataset, wait_for_http, write_params
from mlflow.tracking import MlflowClient

BIN = Path(sys.executable).parent


def test_a_worker_whose_tensorflow_already_started_says_it_keeps_its_thread_pools(capsys):
    import tensorflow as tf

    from components.search.distributed import share_cores_among_workers

    tf.constant(1.0) + 1.0  # TensorFlow's runtime starts: its thread pools are fixed from here on
    share_cores_among_workers(2)
    assert capsys.readouterr().err.startswith("warning: TensorFlow had already started in this process")


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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_sigterm_stops_the_workers_closes_every_run_killed_and_the_next_run_finishes_the_search(tmp_path,
                                                                                                 mlflow_server):
    make_dataset(tmp_path / "data")
    write_params(tmp_path, tuner={"max_trials": 4, "algorithm": "random", "executions_per_trial": 1},
                 train={"epochs": 200, "batch_size": 4, "early_stopping_patience": 0},  # trials long enough to stop
                 mlflow={"tracking_uri": mlflow_server})
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", TF_CPP_MIN_LOG_LEVEL="3")
    extract = subprocess.run(["ffx", "extract", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=900)
    assert extract.returncode == 0, extract.stderr[-3000:]
    client = MlflowClient(mlflow_server)
    tune = subprocess.Popen(["ffx", "tune", "--workers", "2"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600  # a safety net against a hung search, not a timing assertion
        while not _running_trials(client):
            assert tune.poll() is None and time.time() < deadline, "no trial started"
            time.sleep(1)
        tune.send_signal(signal.SIGTERM)
        _, stderr = tune.communicate(timeout=600)
    finally:
        if tune.poll() is None:
            os.kill(tune.pid, signal.SIGKILL)
    assert tune.returncode == 143, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.rstrip().splitlines()[-1] == "stopped by SIGTERM; run the same command again to resume", stderr
    experiment = client.get_experiment_by_name("ffx").experiment_id
    (parent,) = client.search_runs([experiment], "tags.ffx_kind = 'search'")
    assert parent.info.status == "KILLED"
    stopped = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert "KILLED" in {r.info.status for r in stopped} and "RUNNING" not in {r.info.status for r in stopped}

    resumed = subprocess.run(["ffx", "tune", "--workers", "2"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (after,) = client.search_runs([experiment], "tags.ffx_kind = 'search'")
    assert after.info.run_id == parent.info.run_id and after.info.status == "FINISHED"
    trials = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(t.data.tags["ffx_trial_id"] for t in trials) == ["0", "1", "2", "3"]  # none lost or doubled
    assert {t.info.status for t in trials} == {"FINISHED"}


def _running_trials(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name("ffx")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.ffx_trial_id != '' and attributes.status = 'RUNNING'")
