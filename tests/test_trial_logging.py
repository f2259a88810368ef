"""One MLflow run per KerasTuner trial (components/search/trial_logging.py), against a real SQLite MLflow store and
a real KerasTuner oracle; no training."""
import keras_tuner as kt
import pytest
from conftest import write_params
from mlflow.tracking import MlflowClient

from components.config import load_config
from components.search.space import HeadHyperModel
from components.search.trial_logging import (
    MlflowTrialLogging,
    close_open_trials,
    finish_completed_trials,
    mean_per_epoch,
    progress_line,
)


class OracleTuner:
    """What MlflowTrialLogging is mixed into, reduced to its trial hooks: the oracle scores a trial at its end."""

    def __init__(self, oracle):
        self.oracle = oracle

    def on_trial_begin(self, trial):
        pass

    def on_trial_end(self, trial):
        self.oracle.end_trial(trial)


class LoggedTuner(MlflowTrialLogging, OracleTuner):
    pass


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """One SQLite MLflow store for the module (creating one takes seconds); each test has its own experiment."""
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")


@pytest.fixture
def store(client, tmp_path):
    """(client, experiment id, parent run id, tuner with its oracle over the head's space)."""
    experiment_id = client.create_experiment(tmp_path.name, artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="search").info.run_id
    oracle = kt.oracles.RandomSearchOracle(kt.Objective("val_accuracy", "max"), max_trials=5, seed=0)
    oracle._set_project_dir(str(tmp_path / "tuner"), "p")
    hp = kt.HyperParameters()
    HeadHyperModel(load_config(write_params(tmp_path)).space, 8, 2).sizes(hp)
    oracle.update_space(hp)
    tuner = LoggedTuner(oracle)
    return client, experiment_id, parent, tuner


def _trial_runs(client, experiment_id, parent):
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    return {run.data.tags["ffx_trial_id"]: run for run in runs}


def test_mean_per_epoch_counts_an_execution_only_in_the_epochs_it_ran():
    assert mean_per_epoch([[1.0, 2.0, 3.0], [3.0, 4.0]]) == [2.0, 3.0, 3.0]
    assert mean_per_epoch([[0.5]]) == [0.5]


def test_progress_line_says_score_best_and_times_or_why_there_is_no_score():
    info = {"done": 2, "total": 5, "trial_id": "01", "status": "COMPLETED", "score": 0.91234, "best": 0.95,
            "trial_seconds": 3.21, "elapsed": 12.6}
    assert progress_line(info) == "trial 2/5 (01): score 0.9123, best 0.9500, 3.2s, elapsed 13s"
    assert "score failed, best -" in progress_line(info | {"status": "FAILED", "score": None, "best": None})
    assert "score scored by the chief" in progress_line(info | {"score": None})
    assert progress_line(info | {"total": None}).startswith("trial 2/? (01)")


def test_a_trial_gets_its_own_run_with_params_epoch_metrics_score_and_status(store):
    client, experiment_id, parent, tuner = store
    seen = []
    tuner.attach_mlflow(client, experiment_id, parent, seen.append)
    trial = tuner.oracle.create_trial("tuner0")
    tuner.on_trial_begin(trial)
    tuner.log_heads_in_graph(trial, 4)
    histories = [{"loss": [0.9, 0.5], "val_accuracy": [0.6, 0.8]}, {"loss": [0.7], "val_accuracy": [0.9]}]
    tuner.log_executions(trial, histories, [[1.0, 3.0], [2.0]])
    tuner.oracle.update_trial(trial.trial_id, {"val_accuracy": 0.85})
    trial.status = "COMPLETED"
    tuner.on_trial_end(trial)

    (run,) = _trial_runs(client, experiment_id, parent).values()
    assert run.info.status == "FINISHED" and run.info.run_name == f"trial-{trial.trial_id}"
    assert run.data.tags["trial_status"] == "COMPLETED" and run.data.tags["heads_in_graph"] == "4"
    hp = trial.hyperparameters
    assert run.data.params["units"] == str(hp.values["units"])
    assert run.data.params["extra_units"] == (str(hp.values["extra_units"]) if hp.is_active("extra_units")
                                              else "inactive")
    history = {name: [m.value for m in sorted(client.get_metric_history(run.info.run_id, name),
                                              key=lambda m: m.step)]
               for name in ("loss", "val_accuracy", "epoch_seconds")}
    assert history == {"loss": [0.8, 0.5], "val_accuracy": [0.75, 0.8], "epoch_seconds": [1.5, 3.0]}
    assert run.data.metrics["score"] == pytest.approx(0.85)
    assert run.data.metrics["mean_epoch_seconds"] == pytest.approx(2.25) and run.data.metrics["trial_seconds"] > 0
    (progress,) = seen
    assert (progress["trial_id"], progress["done"], progress["total"]) == (trial.trial_id, 1, 5)
    assert progress["score"] == pytest.approx(0.85) and progress["best"] == pytest.approx(0.85)


def test_a_failed_trial_run_is_closed_failed_with_its_error(store):
    client, experiment_id, parent, tuner = store
    tuner.attach_mlflow(client, experiment_id, parent, None)
    trial = tuner.oracle.create_trial("tuner0")
    tuner.on_trial_begin(trial)
    trial.status, trial.message = "FAILED", "Traceback ...\nValueError: boom"
    tuner.on_trial_end(trial)
    (run,) = _trial_runs(client, experiment_id, parent).values()
    assert run.info.status == "FAILED" and run.data.tags["trial_status"] == "FAILED"
    assert run.data.tags["error"].endswith("ValueError: boom") and "score" not in run.data.metrics
    error = client.download_artifacts(run.info.run_id, "error.txt")
    assert open(error).read() == trial.message


def test_a_trial_begun_again_after_a_kill_reuses_its_run(store):
    client, experiment_id, parent, tuner = store
    tuner.attach_mlflow(client, experiment_id, parent, None)
    trial = tuner.oracle.create_trial("tuner0")
    tuner.on_trial_begin(trial)
    close_open_trials(client, experiment_id, parent, "KILLED")  # what a resumed search does first
    (killed,) = _trial_runs(client, experiment_id, parent).values()
    assert killed.info.status == "KILLED"
    tuner.attach_mlflow(client, experiment_id, parent, None)
    tuner.on_trial_begin(trial)
    (again,) = _trial_runs(client, experiment_id, parent).values()
    assert again.info.run_id == killed.info.run_id and again.info.status == "RUNNING"


def test_close_open_trials_closes_only_running_trial_runs_of_that_search(store):
    client, experiment_id, parent, _ = store
    other_parent = client.create_run(experiment_id).info.run_id
    running = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, "ffx_trial_id": "0"})
    done = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent, "ffx_trial_id": "1"})
    client.set_terminated(done.info.run_id, "FINISHED")
    elsewhere = client.create_run(experiment_id, tags={"mlflow.parentRunId": other_parent, "ffx_trial_id": "0"})
    close_open_trials(client, experiment_id, parent, "KILLED")
    status = {run.info.run_id: client.get_run(run.info.run_id).info.status for run in (running, done, elsewhere)}
    assert status == {running.info.run_id: "KILLED", done.info.run_id: "FINISHED",
                      elsewhere.info.run_id: "RUNNING"}


def test_finish_completed_trials_finishes_killed_runs_the_oracle_had_completed(store):
    client, experiment_id, parent, tuner = store
    oracle = tuner.oracle
    completed, unfinished = oracle.create_trial("tuner0"), oracle.create_trial("tuner1")
    oracle.update_trial(completed.trial_id, {"val_accuracy": 0.7})
    completed.status = "COMPLETED"
    oracle.end_trial(completed)  # the oracle recorded it; the kill came before its run was closed
    runs = {t.trial_id: client.create_run(experiment_id, tags={"mlflow.parentRunId": parent,
                                                                "ffx_trial_id": t.trial_id}).info.run_id
            for t in (completed, unfinished)}
    close_open_trials(client, experiment_id, parent, "KILLED")
    finish_completed_trials(client, experiment_id, parent, oracle)
    finished, killed = (client.get_run(runs[t.trial_id]) for t in (completed, unfinished))
    assert finished.info.status == "FINISHED" and finished.data.tags["trial_status"] == "COMPLETED"
    assert finished.data.metrics["score"] == pytest.approx(0.7)
    assert killed.info.status == "KILLED"  # the oracle had not completed it: it runs again
