"""The head search: KerasTuner over in-memory features, every trial a nested MLflow run under one parent run,
and the best head as its result. With tuner.workers > 0 the trials run in processes (components.search.distributed)."""
from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import keras
import keras_tuner as kt
from mlflow.entities import Param

from components.config import Config, lower_is_better, minimised
from components.errors import FFXError
from components.features.backbone import check_same_identity
from components.features.mlflow_datasets import feature_datasets
from components.features.store import FeatureSet
from components.files import content_key
from components.search.distributed import distributed_role, run_tuner_processes
from components.search.grouped_trials import GroupedTrials
from components.search.head_group import HeadGroup
from components.search.oracle import GridBayesianOracle
from components.search.space import HeadHyperModel, feature_statistics, standardise, with_standardisation
from components.search.trial_logging import (
    MlflowTrialLogging,
    TrialProgress,
    close_open_trials,
    finish_completed_trials,
)
from components.tracking import closed_on_stop, create_run_once, git_commit, setup_mlflow

SearchStarted = Callable[[str, str], None]  # (experiment id, parent run id)
PROJECT_TAG = "ffx_tuner_project"  # on the parent run: the KerasTuner project it records, how a re-run finds it


@dataclass
class SearchResult:
    model: keras.Model
    hyperparameters: dict
    score: float
    parent_run_id: str
    trials: list[dict]
    seconds: float
    project: str


@dataclass
class ParentRun:
    client: object  # MlflowClient
    experiment_id: str
    run_id: str
    project: str


class BayesianTuner(GroupedTrials, MlflowTrialLogging, kt.Tuner):
    """Bayesian optimisation with the acquisition scored over the whole (finite) space (GridBayesianOracle)."""

    def __init__(self, hypermodel, objective, max_trials: int, seed: int, max_consecutive_failed_trials: int | None,
                 **kwargs):
        oracle = GridBayesianOracle(objective=objective, max_trials=max_trials, seed=seed,
                                    max_consecutive_failed_trials=max_consecutive_failed_trials)
        super().__init__(oracle=oracle, hypermodel=hypermodel, **kwargs)


class RandomTuner(GroupedTrials, MlflowTrialLogging, kt.RandomSearch):
    pass


class HyperbandTuner(GroupedTrials, MlflowTrialLogging, kt.Hyperband):
    pass


def objective(config: Config) -> kt.Objective:
    name = config.tuner.objective
    return kt.Objective(name, direction="min" if lower_is_better(name) else "max")


def project_name(config: Config, train_key: str, valid_key: str) -> str:
    """Same features (by extraction key) and search settings -> same KerasTuner project, so a re-run resumes it."""
    payload = {"train": train_key, "valid": valid_key,
               "tuner": {k: v for k, v in config.section("tuner").items() if k not in ("directory", "workers")},
               "train_cfg": config.section("train"), "space": config.section("space")}
    return f"search-{content_key(payload)[:12]}"


def check_compatible(train: FeatureSet, valid: FeatureSet) -> None:
    if train.class_names != valid.class_names:
        raise FFXError(f"features: train classes {train.class_names} differ from valid classes {valid.class_names}")
    check_same_identity("features: valid.h5 was extracted with other backbone settings than train.h5",
                        valid.attrs.get("identity") or {}, train.attrs.get("identity") or {}, "run `ffx extract` again")


def make_tuner(config: Config, hypermodel: HeadHyperModel, project: str):
    # No failure limit in the oracle: KerasTunerTrials counts failed trials and stops the search with a clear error.
    common = dict(objective=objective(config), executions_per_trial=config.tuner.executions_per_trial,
                  seed=config.tuner.seed, directory=str(config.tuner.directory), project_name=project,
                  overwrite=False, max_consecutive_failed_trials=None)
    resuming = (config.tuner.directory / project / "oracle.json").exists()
    try:
        if config.tuner.algorithm == "bayesian":
            tuner = BayesianTuner(hypermodel, max_trials=config.tuner.max_trials, **common)
        elif config.tuner.algorithm == "random":
            tuner = RandomTuner(hypermodel, max_trials=config.tuner.max_trials, **common)
        else:
            tuner = HyperbandTuner(hypermodel, max_epochs=config.train.epochs, **common)
        if resuming and distributed_role() == "single" and not tuner.oracle.trials:
            # KerasTuner reloads the oracle only with this process's own tuner file; after distributed workers
            # that file may not exist (another worker ran every trial), and the oracle's state is the search's.
            tuner.oracle.reload()
        return tuner
    except (ValueError, KeyError, RuntimeError) as exc:
        if not resuming:
            raise
        # KerasTuner writes its state files in place: a kill mid-write can leave one unreadable.
        raise FFXError(f"{config.tuner.directory / project}: saved search state is unreadable "
                       f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); delete this "
                       "folder to start the search over") from None


def open_parent_run(config: Config, train: FeatureSet, valid: FeatureSet, joining: bool) -> ParentRun:
    """The search's MLflow parent run, found by its project tag.

    A search whose KerasTuner state is in tuner.directory (interrupted or finished) goes on in its latest parent
    run, and so does a process `joining` a distributed search; a new search (or one started over by deleting
    tuner.directory) gets a new run.
    """
    client, experiment_id = setup_mlflow(config)
    project = project_name(config, train.attrs.get("key"), valid.attrs.get("key"))
    found = []
    if joining or (config.tuner.directory / project / "oracle.json").exists():
        found = client.search_runs([experiment_id], f"tags.{PROJECT_TAG} = '{project}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        run_id = found[0].info.run_id
        if not joining:  # the processes of a distributed search share the run their coordinator opened
            client.update_run(run_id, status="RUNNING")
            # Trials left RUNNING by a killed process: closed as KILLED; a retried one re-opens its run.
            close_open_trials(client, experiment_id, run_id, "KILLED")
        return ParentRun(client, experiment_id, run_id, project)
    tags = {"ffx_kind": "search", PROJECT_TAG: project, "git_commit": git_commit(config.root),
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
    run_id = create_run_once(client, experiment_id, project, tags)
    params = {f"{section}.{k}": v for section in ("tuner", "train", "space")
              for k, v in config.section(section).items() if k != "directory"}
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_inputs(run_id, datasets=feature_datasets(config.data.root, {"train": train, "valid": valid}))
    skipped = {"train": train.attrs.get("skipped") or {}, "valid": valid.attrs.get("skipped") or {}}
    if any(skipped.values()):  # data.on_bad_image: skip left these out of the features
        client.log_dict(run_id, skipped, "skipped_images.json")
        client.set_tag(run_id, "skipped_images", str(sum(len(v) for v in skipped.values())))
    return ParentRun(client, experiment_id, run_id, project)


def _record_stop(parent: ParentRun, status: str) -> None:
    """The search's run and every trial run still open under it closed as `status`."""
    close_open_trials(parent.client, parent.experiment_id, parent.run_id, status)
    parent.client.set_terminated(parent.run_id, status)


def run_trials(config: Config, train: FeatureSet, valid: FeatureSet, parent: ParentRun,
               progress: TrialProgress | None, owner: bool):
    """KerasTuner's search loop in this process: every trial, a distributed worker's share of them, or the chief's
    oracle. `owner`: this process owns the parent run and closes it when the search fails or is stopped.

    Returns the tuner and the train statistics the heads were trained with (None: raw features).
    """
    keras.utils.set_random_seed(config.tuner.seed)
    statistics = feature_statistics(train) if config.train.normalize else None
    hypermodel = HeadHyperModel(config.space, train.features.shape[1], train.num_classes)
    tuner = make_tuner(config, hypermodel, parent.project)
    tuner.attach_mlflow(parent.client, parent.experiment_id, parent.run_id, progress,
                        feature_datasets(config.data.root, {"train": train, "valid": valid}))
    if owner:
        finish_completed_trials(parent.client, parent.experiment_id, parent.run_id, tuner.oracle)
    # A distributed worker closes its own trials' runs on a stop; the search's run is its owner's to close.
    close = functools.partial(_record_stop, parent) if owner else tuner.close_own_trial_runs
    with closed_on_stop(close):
        if distributed_role() == "chief":  # it only hands out trials: tuner.search starts its oracle server
            tuner.search(verbose=0)
        else:
            space, standardised = config.space, [standardise(s.features, statistics) if statistics is not None
                                                 else s.features for s in (train, valid)]
            group = HeadGroup(config.tuner.parallel_heads, train.features.shape[1], train.num_classes,
                              max(space.units), max(space.extra_units, default=0), config.train.learning_rate,
                              config.train.batch_size)
            tuner.search_grouped(group, (standardised[0], train.labels, standardised[1], valid.labels),
                                 config.train.epochs, config.train.early_stopping_patience, config.tuner.seed)
    return tuner, statistics


def run_search(config: Config, train: FeatureSet, valid: FeatureSet,
               progress: TrialProgress | None = None, on_start: SearchStarted | None = None) -> SearchResult:
    """Search the head's hyperparameters on in-memory features; resumes an interrupted identical search.
    `on_start(experiment_id, parent_run_id)` is called once the search's MLflow run is open."""
    if "KERASTUNER_ORACLE_IP" in os.environ:  # KerasTuner would make this process a chief or worker
        raise FFXError("KERASTUNER_ORACLE_IP is set: chief and worker processes run `python -m "
                       "components.search.worker`; unset the KERASTUNER_* variables to run or report the search")
    check_compatible(train, valid)
    started = time.perf_counter()
    parent = open_parent_run(config, train, valid, joining=False)
    if on_start:
        on_start(parent.experiment_id, parent.run_id)
    if config.tuner.workers:
        with closed_on_stop(functools.partial(_record_stop, parent)):  # the workers closed their trials' runs
            run_tuner_processes(config, show_progress=progress is not None)  # the tuner below reloads their oracle
    tuner, statistics = run_trials(config, train, valid, parent, progress, owner=True)
    client, run_id = parent.client, parent.run_id
    trials = [{"trial_id": t.trial_id, "status": str(t.status), "score": t.score,
               "hyperparameters": dict(t.hyperparameters.values)} for t in tuner.oracle.trials.values()]
    # Best first; among equal scores the earliest trial, so a re-run of a finished search picks the same one.
    completed = sorted((t for t in tuner.oracle.trials.values() if str(t.status) == "COMPLETED"),
                       key=lambda t: (minimised(config.tuner.objective, t.score), t.trial_id))
    if not completed:
        client.set_terminated(run_id, "FAILED")
        raise FFXError(f"tuning: no trial completed ({len(trials)} failed); see the trial runs in MLflow")
    best = completed[0]
    # Built and loaded here: tuner.load_model would first clear the Keras session and run a full gc.collect().
    model = tuner.hypermodel.build(best.hyperparameters)
    model.load_weights(tuner.head_weights_path(best.trial_id))
    if statistics is not None:
        model = with_standardisation(model, statistics)
    seconds = time.perf_counter() - started
    hps = dict(best.hyperparameters.values)
    client.log_batch(run_id, params=[Param(f"best.{k}", str(v)) for k, v in hps.items()])
    client.log_metric(run_id, "best_score", float(best.score))
    client.log_metric(run_id, "search_seconds", seconds)
    client.log_metric(run_id, "trials_completed", len(completed))
    client.log_metric(run_id, "trials_failed", len(trials) - len(completed))
    client.set_tag(run_id, "best_trial_id", best.trial_id)
    client.set_terminated(run_id, "FINISHED")
    return SearchResult(model, hps, float(best.score), run_id, trials, seconds, parent.project)
