"""`ffx tune` against a real `mlflow server` on 127.0.0.1: a quiet console (one link to the search, none of MLflow's
per-run links), and a server killed with SIGKILL mid-search: one line that the search waits and for how long, one
when the server is back, or one error when the wait runs out; nothing lost or doubled in MLflow either way."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FFX, ffx_process, free_port, make_dataset, stop_process_group, wait_for_http, write_params
from mlflow.tracking import MlflowClient

from components.config import load_config
from components.stages.extract import extract_stage

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent
GIVE_UP_S = 600  # a safety net against a hung child, not a timing assertion


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with its store in `folder`; killed and started again on the same port."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        log = (self.folder / "server.log").open("a")
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_http(f"{self.url}/health", self.process, timeout=300)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)


@pytest.fixture
def server(tmp_path):
    running = MlflowServer(tmp_path / "server")
    running.start()
    try:
        yield running
    finally:
        running.stop()


def tune_project(root: Path, server: MlflowServer, trials: int, **mlflow) -> Path:
    make_dataset(root / "data")
    write_params(root, tuner={"algorithm": "random", "max_trials": trials, "executions_per_trial": 1,
                              "parallel_heads": 1},
                 train={"epochs": 5, "batch_size": 8}, mlflow={"tracking_uri": server.url, **mlflow})
    extract_stage(load_config(root / "params.yaml"))
    return root


def start_tune(project: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([str(FFX), "tune"], cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for_line(process: subprocess.Popen, log: Path, text: str) -> None:
    deadline = time.monotonic() + GIVE_UP_S
    while text not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


def search_runs(server: MlflowServer):
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name("ffx")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.ffx_kind = 'search'")
    trials = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, trials


def assert_each_trial_once_and_finished(server: MlflowServer, trials: int) -> None:
    parent, runs = search_runs(server)
    assert parent.info.status == "FINISHED"
    trial_ids = [r.data.tags["ffx_trial_id"] for r in runs]
    assert len(trial_ids) == len(set(trial_ids)) == trials, trial_ids  # none lost, none doubled
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_tune_with_a_tracking_server_prints_one_link_to_the_search_and_no_mlflow_run_links(tmp_path, server):
    project = tune_project(tmp_path / "project", server, trials=2)
    result = ffx_process(project, "tune")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "View run" not in output and "View experiment" not in output, output
    parent, _ = search_runs(server)
    links = [line for line in output.splitlines() if line.startswith("MLflow UI, the search run: ")]
    assert links == [f"MLflow UI, the search run: {server.url}/#/experiments/{parent.info.experiment_id}/runs/"
                     f"{parent.info.run_id}?workflowType=machine_learning"], output


def test_a_tracking_server_killed_mid_search_is_waited_for_in_one_line_and_the_search_goes_on(tmp_path, server):
    project = tune_project(tmp_path / "project", server, trials=4)
    log = tmp_path / "tune.log"
    process = start_tune(project, log)
    try:
        wait_for_line(process, log, "trial 1/4")
        server.kill()
        wait_for_line(process, log, "does not answer; waiting up to 900s")
        time.sleep(12)  # a few tries while the server is down
        server.start()
        process.wait(timeout=GIVE_UP_S)
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert process.returncode == 0, output
    assert output.count("does not answer; waiting up to 900s for it (mlflow.wait_for_server_s)") == 1, output
    assert "waiting for " not in output  # a log, not a terminal: no progress line per try
    assert output.count(f"MLflow tracking server {server.url} answers again after") == 1, output
    assert "Traceback" not in output, output
    assert_each_trial_once_and_finished(server, 4)


def test_when_the_wait_for_the_server_runs_out_tune_stops_with_one_error_and_resumes_later(tmp_path, server):
    project = tune_project(tmp_path / "project", server, trials=4, wait_for_server_s=8)
    log = tmp_path / "tune.log"
    process = start_tune(project, log)
    try:
        wait_for_line(process, log, "trial 1/4")
        server.kill()
        process.wait(timeout=GIVE_UP_S)
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert process.returncode == 2, output
    assert "Traceback" not in output, output
    assert errors == [f"error: mlflow.tracking_uri: {server.url} did not answer for 8s (mlflow.wait_for_server_s); "
                      "start it again and run the same command: it resumes where it stopped"], output

    server.start()
    resumed = ffx_process(project, "tune")
    assert resumed.returncode == 0, resumed.stderr
    assert_each_trial_once_and_finished(server, 4)


def test_a_server_that_stops_answering_during_mlflows_fluent_calls_is_one_error_naming_the_command(tmp_path,
                                                                                                   monkeypatch):
    import mlflow

    from components.tracking import ServerUnavailableError, server_stop_as_error

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every request is refused
    write_params(tmp_path, mlflow={"tracking_uri": url})
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mlflow.set_tracking_uri(url)
    try:
        with pytest.raises(ServerUnavailableError) as raised, server_stop_as_error(
                load_config(tmp_path / "params.yaml"), "ffx evaluate"):
            mlflow.log_metric("accuracy", 0.9, run_id="0" * 32)
    finally:
        mlflow.set_tracking_uri(None)
    assert str(raised.value) == (f"mlflow.tracking_uri: {url} stopped answering; start it again and run "
                                 "`ffx evaluate` again")
    with pytest.raises(ValueError, match="a bug"), server_stop_as_error(load_config(tmp_path / "params.yaml"), "x"):
        raise ValueError("a bug")  # anything else keeps its traceback
