"""Prefect orchestration of the pipeline: the same stage functions as `dvc repro`, as cached tasks.

Tasks are cached by content (image hashes, backbone settings, feature keys, params) with results persisted
under `orchestration.results_dir`; a task whose output file is missing or stale is never a cache hit.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.filesystems import LocalFileSystem
from prefect.logging.handlers import PrefectConsoleHandler

from components.config import Config, load_config
from components.files import user_error
from components.features.backbone import Backbone, build_backbone
from components.features.extraction import ExtractionPlan, feature_files, plan_extraction, source_split
from components.features.shards import ShardResult, extract_shard, merge_shards, shard_rows
from components.stages.audit import audit_stage
from components.stages.evaluate import evaluate_stage
from components.stages.finetune import finetune_stage
from components.stages.extract import extract_planned, write_extraction_reports
from components.stages.tune import tune_stage
from components.tracking import check_tracking_server, setup_mlflow
from components.ui_links import experiment_link, model_version_link, run_link
from flows.cache_keys import (
    audit_cache_key,
    code_keys,
    data_digests,
    evaluate_cache_key,
    extraction_cache_key,
    finetune_cache_key,
    shard_cache_key,
    tune_cache_key,
)

DEPLOYMENT_NAME = "ffx-pipeline"


def _cached(task_, key_and_current: tuple[str, bool]):
    """`task_` cached under its stage's input key. When the stage's output is missing or was made from other inputs
    (`current` false), Prefect runs the task again and overwrites the record (refresh_cache) instead of returning
    a cached result whose file is gone."""
    key, current = key_and_current
    return task_.with_options(cache_key_fn=lambda *_: key, refresh_cache=not current)


@task(name="plan-extraction", cache_policy=NO_CACHE)
def plan_task(config: Config) -> ExtractionPlan:
    """Scan and hash every image, refuse bad ones: always runs, it is what detects changes."""
    return plan_extraction(config)


@task(name="extract", persist_result=True, task_run_name="extract-{split}")
def extract_task(config: Config, plan: ExtractionPlan, split: str, backbone: Backbone) -> dict:
    logger = get_run_logger()
    total = len(plan.splits[source_split(split)].records)
    done = [0]

    def progress(count: int) -> None:
        done[0] += count
        logger.info("extract %s: %d/%d images", split, done[0], total)

    result = extract_planned(config, plan, split, backbone, progress)
    logger.info("%s: %d images, %d through the backbone, %.1fs", split, result.count, result.computed,
                result.seconds)
    return {"split": split, "key": result.key, "count": result.count, "computed": result.computed,
            "path": str(result.path)}


@task(name="extract-shard", persist_result=True, task_run_name="extract-{split}-{index}")
def shard_task(config: Config, plan: ExtractionPlan, split: str, index: int, backbone: Backbone) -> ShardResult:
    result = extract_shard(config, plan.splits[source_split(split)], index, split, backbone)
    get_run_logger().info("%s shard %d: %d images, %d through the backbone", split, index, result.count,
                          result.computed)
    return result


@task(name="merge-shards", cache_policy=NO_CACHE, task_run_name="merge-{split}")
def merge_task(config: Config, plan: ExtractionPlan, split: str, shards: list[ShardResult]) -> dict:
    source = source_split(split)
    result = merge_shards(config, plan.splits[source], shards, plan.skipped[source], split)
    return {"split": split, "key": result.key, "count": result.count, "computed": result.computed,
            "path": str(result.path)}


@task(name="tune", persist_result=True)
def tune_task(config: Config) -> dict:
    logger = get_run_logger()

    def progress(info: dict) -> None:
        logger.info("trial %s/%s: score %s, best %s, elapsed %.0fs", info["done"], info["total"], info["score"],
                    info["best"], info["elapsed"])

    result = tune_stage(config, progress)
    _, experiment_id = setup_mlflow(config, create=False)
    logger.info("MLflow UI, the trials: %s", experiment_link(config, experiment_id))
    logger.info("MLflow UI, the search run: %s", run_link(config, experiment_id, result.parent_run_id))
    return {"score": result.score, "hyperparameters": result.hyperparameters,
            "parent_run_id": result.parent_run_id, "trials": len(result.trials), "seconds": result.seconds}


@task(name="finetune", persist_result=True)
def finetune_task(config: Config) -> dict:
    decision = finetune_stage(config, get_run_logger().info)
    return {key: decision.get(key) for key in ("enabled", "kept", "objective", "head_score", "finetuned_score")}


@task(name="evaluate-and-register", persist_result=True)
def evaluate_task(config: Config) -> dict:
    result = evaluate_stage(config)
    reg = result.registration
    logger = get_run_logger()
    if result.leak_warning:
        logger.warning(result.leak_warning)
    for line in result.stale:
        logger.warning(line)
    logger.info("test accuracy %.4f; %s version %s: %s", result.metrics["accuracy"], reg.name, reg.version,
                reg.decision)
    logger.info("MLflow UI, the model version: %s", model_version_link(config, reg.name, reg.version))
    return {"accuracy": result.metrics["accuracy"], "version": reg.version, "promoted": reg.promoted,
            "decision": reg.decision}


@task(name="audit", persist_result=True)
def audit_task(config: Config) -> dict:
    result = audit_stage(config)
    get_run_logger().info("audit: %s (MLflow run %s)", result.lists["counts"], result.run_id)
    return dict(result.lists["counts"], run_id=result.run_id)


def _with_storage(config: Config, *tasks):
    """Tasks persisting results and cache records under orchestration.results_dir (a block Prefect requires saved),
    retried orchestration.retries times."""
    basepath = str(Path(config.orchestration.results_dir).resolve())
    storage = LocalFileSystem(basepath=basepath)
    storage.save(f"ffx-results-{hashlib.sha1(basepath.encode()).hexdigest()[:10]}", overwrite=True)
    return [t.with_options(result_storage=storage, retries=config.orchestration.retries,
                           retry_condition_fn=_worth_retrying) for t in tasks]


def _worth_retrying(task_, task_run, state) -> bool:
    """A retry is for a fault that may pass (a worker lost, a flaky mount); bad input, bad params and a full disk
    fail the same way again, so they fail at once with their one line."""
    return user_error(state.result(raise_on_failure=False)) is None


class _UserErrorsInOneLine(logging.Filter):
    """Prefect's console shows a failed task's and flow's traceback; for a user error (bad input, a full disk) the
    line naming the error is the whole story, and `ffx` prints it last. The traceback still goes to the Prefect
    API (the UI's logs): that handler sees the record before this one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and user_error(record.exc_info[1]) is not None:
            record.exc_info, record.exc_text = None, None
        return True


def one_line_user_errors() -> None:
    """Console tracebacks of user errors off for this process (`ffx pipeline` without --debug)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _UserErrorsInOneLine) for f in handler.filters):
            handler.addFilter(_UserErrorsInOneLine())


@flow(name="pipeline", log_prints=True)
def pipeline(params_file: str = "params.yaml", overrides: list[str] | None = None) -> dict:
    """extract (one task per split, or per shard) -> audit -> tune -> finetune -> evaluate and register; unchanged
    inputs are cached.

    Returns each task's result and final state name ("Cached" for a cache hit).
    """
    config = load_config(params_file, overrides or [])
    check_tracking_server(config)  # a dead tracking server is found before the backbone work, not after
    extract, shard, tune, finetune, evaluate, audit = _with_storage(config, extract_task, shard_task, tune_task,
                                                                    finetune_task, evaluate_task, audit_task)
    plan = plan_task(config)
    # Built on first use, once per process: threads share this one; a Dask worker builds its own from the settings.
    backbone = build_backbone(config.backbone, config.root, config.extract.precision)
    summary: dict = {"states": {}, "extract": {}}
    code = code_keys()

    def run(name: str, task_, *args):
        state = task_(*args, return_state=True)
        summary["states"][name] = state.name
        return state.result()

    for name in feature_files(config, tuple(plan.splits)):
        split = plan.splits[source_split(name)]
        if config.extract.shard_size:
            futures = [_cached(shard, shard_cache_key(config, rows, index, name, code)).submit(
                config, plan, name, index, backbone) for index, rows in enumerate(shard_rows(config, split, name))]
            shards = [future.result() for future in futures]
            summary["states"].update({f"extract-{name}-{i}": f.state.name for i, f in enumerate(futures)})
            summary["extract"][name] = merge_task(config, plan, name, shards)
            continue
        key = extraction_cache_key(config, split, name, code)
        result = run(f"extract-{name}", _cached(extract, key), config, plan, name, backbone)
        summary["extract"][name] = dict(result, computed=0 if summary["states"][f"extract-{name}"] == "Cached"
                                        else result["computed"])
    keys = {name: result["key"] for name, result in summary["extract"].items()}
    data = data_digests(plan)
    write_extraction_reports(config, plan)
    # The audit before evaluate, which reads its counts.
    summary["audit"] = run("audit", _cached(audit, audit_cache_key(config, keys, code, data)), config)
    summary["tune"] = run("tune", _cached(tune, tune_cache_key(config, keys, code, data)), config)
    summary["finetune"] = run("finetune", _cached(finetune, finetune_cache_key(config, keys, code, data)), config)
    summary["evaluate"] = run("evaluate", _cached(evaluate, evaluate_cache_key(config, keys, code, data)), config)
    return summary


def configured_pipeline(config: Config):
    """The flow with the task runner from params: Dask (a LocalCluster or an existing scheduler) or threads."""
    if config.orchestration.task_runner != "dask":
        return pipeline
    from prefect_dask import DaskTaskRunner

    if config.orchestration.dask_address:
        return pipeline.with_options(task_runner=DaskTaskRunner(address=config.orchestration.dask_address))
    cluster = {"n_workers": config.orchestration.dask_workers, "threads_per_worker": 1, "processes": True,
               "host": "127.0.0.1", "dashboard_address": None}
    return pipeline.with_options(task_runner=DaskTaskRunner(cluster_class="distributed.LocalCluster",
                                                            cluster_kwargs=cluster))


def serve(params_file: str | Path, overrides: list[str] | None = None) -> None:
    """Serve the `ffx-pipeline` deployment on the cron schedule from params.yaml (blocks until stopped)."""
    from prefect.schedules import Cron

    config = load_config(params_file, overrides or [])
    configured_pipeline(config).serve(
        name=DEPLOYMENT_NAME, schedules=[Cron(config.schedule.cron, timezone=config.schedule.timezone)],
        parameters={"params_file": str(Path(params_file).resolve()), "overrides": list(overrides or [])})
