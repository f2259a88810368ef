"""Hyperparameter search with KerasTuner; every trial is a nested MLflow run under one parent run."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import keras_tuner as kt
import numpy as np

from components.config import Config
from components.errors import FFXError
from components.features import FeatureSet
from components.hypermodel import (HP_NAMES, HeadHyperModel, check_space, feature_statistics, steps_per_execution,
                                   training_datasets, with_standardisation)
from components.files import write_text_atomic
from components.oracle import GridBayesianOracle
from components.tracking import git_commit, setup_mlflow

PARENT_RUN_FILE = "mlflow_parent_run_id"
TrialProgress = Callable[[dict], None]


@dataclass
class SearchResult:
    model: keras.Model
    hyperparameters: dict
    score: float
    parent_run_id: str
    trials: list[dict]
    seconds: float
    project: str


def mean_per_epoch(series: list[list[float]]) -> list[float]:
    """Mean over executions, epoch by epoch; an execution stopped early counts only in the epochs it ran."""
    return [float(np.mean([s[epoch] for s in series if epoch < len(s)])) for epoch in range(max(map(len, series)))]


class MlflowTrialLogging:
    """Mixed into a KerasTuner tuner: opens, fills and closes one MLflow run per trial."""

    def attach_mlflow(self, client, experiment_id: str, parent_run_id: str, progress: TrialProgress | None):
        self._client = client
        self._experiment_id = experiment_id
        self._parent_run_id = parent_run_id
        self._progress = progress
        self._trial_runs: dict[str, tuple[str, float]] = {}
        self._search_started = time.perf_counter()

    def _try_build(self, hp):
        # KerasTuner clears the Keras session and runs a full gc.collect() before every build: a second or more
        # per execution in a process holding TensorFlow and MLflow, to free tiny heads that reference counting
        # frees anyway. Skipping it also keeps the compiled heads HeadHyperModel reuses.
        return self._build_hypermodel(hp)

    def _existing_trial_run(self, trial_id: str) -> str | None:
        runs = self._client.search_runs(
            [self._experiment_id],
            f"tags.mlflow.parentRunId = '{self._parent_run_id}' and tags.ffx_trial_id = '{trial_id}'")
        return runs[0].info.run_id if runs else None

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        from mlflow.entities import Param

        run_id = self._existing_trial_run(trial.trial_id)  # a trial cut short by a kill is re-run in its own run
        if run_id is None:
            run = self._client.create_run(
                self._experiment_id, run_name=f"trial-{trial.trial_id}",
                tags={"mlflow.parentRunId": self._parent_run_id, "ffx_trial_id": trial.trial_id})
            run_id = run.info.run_id
        else:
            self._client.update_run(run_id, status="RUNNING")
        # Logged on a re-run too (same values, so MLflow accepts them): a kill may have come before they were.
        hp = trial.hyperparameters
        values = {name: (hp.values[name] if name in hp.values and hp.is_active(name) else "inactive")
                  for name in HP_NAMES}
        values.update({k: v for k, v in hp.values.items() if k not in values})
        self._client.log_batch(run_id, params=[Param(k, str(v)) for k, v in values.items()])
        self._trial_runs[trial.trial_id] = (run_id, time.perf_counter())

    def run_trial(self, trial, *args, **kwargs):
        histories = super().run_trial(trial, *args, **kwargs)
        from mlflow.entities import Metric

        run_id, _ = self._trial_runs[trial.trial_id]
        now = int(time.time() * 1000)
        metrics = []
        names = histories[0].history.keys()
        for name in names:
            # Mean over executions per epoch; the trial's score uses each execution's best epoch, as KerasTuner does.
            per_epoch = mean_per_epoch([h.history[name] for h in histories])
            metrics += [Metric(name, float(v), now, step) for step, v in enumerate(per_epoch)]
        epoch_seconds = mean_per_epoch([h.epoch_seconds for h in histories])
        metrics += [Metric("epoch_seconds", float(v), now, step) for step, v in enumerate(epoch_seconds)]
        metrics.append(Metric("mean_epoch_seconds", float(np.mean(epoch_seconds)), now, 0))
        for start in range(0, len(metrics), 1000):
            self._client.log_batch(run_id, metrics=metrics[start:start + 1000])
        return histories

    def on_trial_end(self, trial):
        try:
            super().on_trial_end(trial)  # the oracle scores the trial here (and raises after too many failures)
        finally:
            seconds = self._close_trial_run(trial)  # recorded, with its error, even when the oracle raises
        if self._progress:
            best = self.oracle.get_best_trials(1)
            self._progress({
                "trial_id": trial.trial_id, "total": self.oracle.max_trials,
                # a distributed worker's oracle client cannot list trials: count this worker's own
                "done": len(self.oracle.trials) if hasattr(self.oracle, "trials") else self._finished_here(),
                "status": str(trial.status), "score": trial.score, "best": best[0].score if best else None,
                "elapsed": time.perf_counter() - self._search_started, "trial_seconds": seconds,
            })

    def _finished_here(self) -> int:
        self._finished_count = getattr(self, "_finished_count", 0) + 1
        return self._finished_count

    def _close_trial_run(self, trial) -> float:
        run_id, started = self._trial_runs.pop(trial.trial_id)
        seconds = time.perf_counter() - started
        self._client.log_metric(run_id, "trial_seconds", seconds)
        status = str(trial.status)
        self._client.set_tag(run_id, "trial_status", status)
        if trial.score is not None:
            self._client.log_metric(run_id, "score", float(trial.score))
        failed = status != "COMPLETED"
        if failed and trial.message:
            self._client.set_tag(run_id, "error", trial.message[-4000:])
            self._client.log_text(run_id, trial.message, "error.txt")
        self._client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
        return seconds


class BayesianTuner(MlflowTrialLogging, kt.Tuner):
    """KerasTuner's Bayesian optimisation with the acquisition scored over the whole (finite) space."""

    def __init__(self, hypermodel, objective, max_trials: int, seed: int, **kwargs):
        oracle = GridBayesianOracle(objective=objective, max_trials=max_trials, seed=seed)
        super().__init__(oracle=oracle, hypermodel=hypermodel, **kwargs)


class RandomTuner(MlflowTrialLogging, kt.RandomSearch):
    pass


class HyperbandTuner(MlflowTrialLogging, kt.Hyperband):
    pass


def objective(config: Config) -> kt.Objective:
    name = config.tuner.objective
    return kt.Objective(name, direction="min" if name.endswith("loss") else "max")


def search_key(config: Config, train_key: str, valid_key: str) -> str:
    """Same features (by extraction key) and search settings -> same KerasTuner project, so a re-run resumes it."""
    payload = {"train": train_key, "valid": valid_key,
               "tuner": {k: v for k, v in config.section("tuner").items() if k not in ("directory", "workers")},
               "train_cfg": config.section("train"), "space": config.section("space")}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def check_compatible(train: FeatureSet, valid: FeatureSet) -> None:
    if train.class_names != valid.class_names:
        raise FFXError(f"features: train classes {train.class_names} differ from valid classes {valid.class_names}")
    if train.attrs.get("backbone_key") != valid.attrs.get("backbone_key"):
        raise FFXError("features: train.h5 and valid.h5 were extracted with different backbone settings; "
                       "run `ffx extract` again")


def make_tuner(config: Config, hypermodel: HeadHyperModel, project: str):
    common = dict(objective=objective(config), executions_per_trial=config.tuner.executions_per_trial,
                  seed=config.tuner.seed, directory=str(config.tuner.directory), project_name=project,
                  overwrite=False)
    resuming = (config.tuner.directory / project / "oracle.json").exists()
    try:
        if config.tuner.algorithm == "bayesian":
            return BayesianTuner(hypermodel, max_trials=config.tuner.max_trials, **common)
        if config.tuner.algorithm == "random":
            return RandomTuner(hypermodel, max_trials=config.tuner.max_trials, **common)
        return HyperbandTuner(hypermodel, max_epochs=config.train.epochs, **common)
    except (ValueError, KeyError, RuntimeError) as exc:
        if not resuming:
            raise
        # KerasTuner writes its state files in place: a kill mid-write can leave one unreadable.
        raise FFXError(f"{config.tuner.directory / project}: saved search state is unreadable "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); delete this "
                       "folder to start the search over") from None


def _close_open_trials(client, experiment_id: str, parent_run_id: str, status: str) -> None:
    """Trial runs still RUNNING under the parent (their process was killed or stopped): closed with `status`."""
    for run in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                                   "and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, status)


def distributed_role() -> str:
    """single | chief | worker, from KerasTuner's own environment variables."""
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID")
    if not tuner_id or "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    return "chief" if tuner_id == "chief" else "worker"


def share_cores_among_workers(workers: int) -> None:
    """A distributed worker's TensorFlow uses its share of this machine's cores.

    A small dense head gains nothing from a second thread (per-op overhead dominates), so parallel trials are
    where more cores pay; without a limit each worker would spread over every core and they would contend.
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))
    except RuntimeError:  # TensorFlow already started in this process: its thread pools are fixed
        pass


def run_tuner_processes(config: Config, workers: int) -> None:
    """KerasTuner's distributed mode on this machine: a chief oracle and `workers` worker processes.

    Each is `ffx tune` with KERASTUNER_TUNER_ID / KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT set; the workers
    attach to the parent run already created, take trials from the chief and log each one to MLflow.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "ffx", "tune", "--params", str(config.source), "--quiet"]
    for override in config.overrides:
        command += ["--set", override]
    base = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1", KERASTUNER_ORACLE_PORT=str(port))
    chief = subprocess.Popen(command, env=dict(base, KERASTUNER_TUNER_ID="chief"))
    crew = [subprocess.Popen([c for c in command if c != "--quiet"], env=dict(base, KERASTUNER_TUNER_ID=f"tuner{i}"))
            for i in range(workers)]
    try:
        codes = [process.wait() for process in crew]
        chief_code = chief.wait(timeout=300) if not any(codes) else None
    finally:
        for process in [chief, *crew]:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
    if any(codes) or chief_code:
        raise FFXError(f"distributed tuning failed: worker exit codes {codes}, chief {chief_code} "
                       "(their errors are printed above)")


def _parent_run(client, experiment_id: str, project_dir: Path, config: Config, tags: dict) -> str:
    """Reuse the parent run of an interrupted search in `project_dir`; otherwise start one."""
    marker = project_dir / PARENT_RUN_FILE
    if marker.is_file():
        run_id = marker.read_text().strip()
        try:
            client.get_run(run_id)
        except Exception:
            run_id = None
        if run_id:
            if distributed_role() == "single":  # distributed workers share the run their coordinator opened
                client.update_run(run_id, status="RUNNING")
                # Trials left RUNNING by a killed process: closed as KILLED; a retried one re-opens its run.
                _close_open_trials(client, experiment_id, run_id, "KILLED")
            return run_id
    run = client.create_run(experiment_id, run_name=project_dir.name, tags=tags)
    write_text_atomic(marker, run.info.run_id)
    return run.info.run_id


def run_search(config: Config, train: FeatureSet, valid: FeatureSet,
               progress: TrialProgress | None = None) -> SearchResult:
    """Search the head's hyperparameters on in-memory features; resumes an interrupted identical search."""
    from mlflow.entities import Param

    check_compatible(train, valid)
    if distributed_role() == "worker":
        share_cores_among_workers(config.tuner.workers)
    if not check_space(config.space) and config.space.extra_units and config.space.extra_when_units:
        raise FFXError("params: 'space.extra_when_units' names no size in 'space.units'; the extra layer "
                       "could never be chosen")
    started = time.perf_counter()
    client, experiment_id = setup_mlflow(config)
    project = f"search-{search_key(config, train.attrs.get('key'), valid.attrs.get('key'))}"
    project_dir = config.tuner.directory / project
    tags = {"ffx_kind": "search", "git_commit": git_commit(config.root),
            "train_content_hash": str(train.attrs.get("content_hash")),
            "valid_content_hash": str(valid.attrs.get("content_hash")),
            "train_features_key": str(train.attrs.get("key")), "valid_features_key": str(valid.attrs.get("key")),
            "backbone": str(train.attrs.get("backbone")), "weights": str(train.attrs.get("weights")),
            "input_size": str(train.attrs.get("input_size")),
            "precision": str(train.attrs.get("precision", "float32")),
            "pooling": str(train.attrs.get("pooling", "flatten")), "layer": str(train.attrs.get("layer", "last")),
            # train rows beyond the images: augmented views (extract.augment), all used for training
            "augment": json.dumps((train.attrs.get("views") or {}).get("augment")),
            "train_rows": str(len(train.labels))}
    parent_run_id = _parent_run(client, experiment_id, project_dir, config, tags)
    if not client.get_run(parent_run_id).data.params:
        params = {f"{section}.{k}": v for section in ("tuner", "train", "space")
                  for k, v in config.section(section).items() if k != "directory"}
        client.log_batch(parent_run_id, params=[Param(k, str(v)) for k, v in params.items()])
    skipped = {"train": train.attrs.get("skipped") or {}, "valid": valid.attrs.get("skipped") or {}}
    if any(skipped.values()):  # data.on_bad_image: skip left these out of the features
        client.log_dict(parent_run_id, skipped, "skipped_images.json")
        client.set_tag(parent_run_id, "skipped_images", str(sum(len(v) for v in skipped.values())))

    keras.utils.set_random_seed(config.tuner.seed)
    batch_size = config.train.batch_size
    statistics = feature_statistics(train) if config.train.normalize else None
    hypermodel = HeadHyperModel(config.space, config.train, train.features.shape[1], train.num_classes,
                                steps_per_execution(len(train.labels), batch_size), config.tuner.objective)
    role = distributed_role()
    if role == "single" and config.tuner.workers:
        run_tuner_processes(config, config.tuner.workers)  # then the search below reloads the finished oracle
    tuner = make_tuner(config, hypermodel, project)
    tuner.attach_mlflow(client, experiment_id, parent_run_id, progress)
    try:
        train_inputs, valid_inputs = training_datasets(train, valid, batch_size, config.tuner.seed, statistics)
        tuner.search(train_inputs, validation_data=valid_inputs,
                     epochs=config.train.epochs, shuffle=False, verbose=0)
    except BaseException as exc:
        if role != "single":
            raise  # the coordinator owns the parent run
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"  # Ctrl-C: the search resumes on a re-run
        _close_open_trials(client, experiment_id, parent_run_id, status)
        client.set_terminated(parent_run_id, status)
        if isinstance(exc, RuntimeError) and "consecutive failures" in str(exc):
            last = [line for line in str(exc).splitlines() if line.strip()][-1]
            raise FFXError(f"tuning stopped: {str(exc).splitlines()[0]} Last error: {last.strip()} "
                           "(each failed trial's error is in its MLflow run)") from None
        raise

    if role == "chief":
        tuner.save()  # the chief's oracle state on disk otherwise still lists the last trials as ongoing
    if role != "single":
        return None  # chief and workers only run trials; the coordinator reports the search
    trials = [{"trial_id": t.trial_id, "status": str(t.status), "score": t.score,
               "hyperparameters": dict(t.hyperparameters.values)} for t in tuner.oracle.trials.values()]
    # Best first; among equal scores the earliest trial, so a re-run of a finished search picks the same one.
    sign = -1 if tuner.oracle.objective.direction == "max" else 1
    completed = sorted((t for t in tuner.oracle.trials.values() if str(t.status) == "COMPLETED"),
                       key=lambda t: (sign * t.score, t.trial_id))
    if not completed:
        client.set_terminated(parent_run_id, "FAILED")
        raise FFXError(f"tuning: no trial completed ({len(trials)} failed); see the trial runs in MLflow")
    best = completed[0]
    with warnings.catch_warnings():
        # The checkpoint holds optimizer slots the freshly built head does not have yet; prediction needs none.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model = tuner.load_model(best)
    if statistics is not None:
        model = with_standardisation(model, statistics)
    seconds = time.perf_counter() - started
    hps = dict(best.hyperparameters.values)
    client.log_batch(parent_run_id, params=[Param(f"best.{k}", str(v)) for k, v in hps.items()])
    client.log_metric(parent_run_id, "best_score", float(best.score))
    client.log_metric(parent_run_id, "search_seconds", seconds)
    client.log_metric(parent_run_id, "trials_completed", len(completed))
    client.log_metric(parent_run_id, "trials_failed", len(trials) - len(completed))
    client.set_tag(parent_run_id, "best_trial_id", best.trial_id)
    client.set_terminated(parent_run_id, "FINISHED")
    return SearchResult(model, hps, float(best.score), parent_run_id, trials, seconds, project)
