"""The tune stage: the head search on the train and valid features, every trial in MLflow; the best head saved to
models/ with what prediction needs, and the trial comparison under reports/search/."""
from __future__ import annotations

from components.config import Config
from components.features.identity import search_splits
from components.model.head_file import save_head
from components.reports.search_report import write_search_report
from components.search.tuner import SearchResult, run_search
from components.tracking import setup_mlflow


def tune_stage(config: Config, progress=None, on_start=None) -> SearchResult:
    """Search on train and the valid images not held out for decisions, save the best head with the metadata
    prediction needs. `progress(info)` after each trial, `on_start(experiment_id, parent_run_id)` once the search's
    MLflow run is open."""
    train, valid = search_splits(config)
    result = run_search(config, train, valid, progress, on_start)
    metadata = {
        "class_names": train.class_names,
        "backbone": config.section("backbone") | {"precision": config.extract.precision},
        "weights_id": train.attrs["weights"],
        "feature_shape": train.attrs["feature_shape"],
        "features_key": {"train": train.attrs["key"], "valid": valid.attrs["key"]},
        "search": {"parent_run_id": result.parent_run_id, "project": result.project,
                   "objective": config.tuner.objective, "score": result.score,
                   "hyperparameters": result.hyperparameters, "seconds": result.seconds,
                   "trials": len(result.trials)},
    }
    save_head(result.model, metadata, config)
    # Trial comparison, read back from MLflow, logged to the search's parent run next to its trials.
    client, _ = setup_mlflow(config)
    for path in write_search_report(config, result.parent_run_id):
        client.log_artifact(result.parent_run_id, str(path), "search")
    return result
