"""The pipeline's stages as plain functions: the CLI, dvc.yaml and the Prefect flows all call these."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.backbone import resolve_weights
from components.config import Config
from components.errors import FFXError
from components.evaluate import evaluate_head, write_predictions_csv, write_roc_csv
from components.features import FeatureSet, read_features
from components.files import write_json_atomic
from components.registry import Registration, head_paths, load_head, register_head, save_head

PREDICTIONS_FILE = "test_predictions.csv"
ROC_FILE = "roc.csv"


def load_split_features(config: Config, split: str) -> FeatureSet:
    """Read a split's features and refuse them if they were made with other backbone settings."""
    features = read_features(config.features.path(split))
    _, weights_id = resolve_weights(config.backbone, config.root)
    expected = {"backbone": config.backbone.name, "weights": weights_id, "input_size": config.backbone.input_size}
    found = {k: features.attrs.get(k) for k in expected}
    if found != expected:
        raise FFXError(f"{config.features.path(split)}: made with {found}, but params.yaml asks for {expected}; "
                       "run `ffx extract` again")
    return features


def tune_stage(config: Config, progress=None):
    """Search on train/valid features, save the best head with the metadata prediction needs."""
    from components.tune import run_search

    train, valid = load_split_features(config, "train"), load_split_features(config, "valid")
    result = run_search(config, train, valid, progress)
    metadata = {
        "class_names": train.class_names,
        "backbone": {"name": config.backbone.name, "weights": config.backbone.weights,
                     "input_size": config.backbone.input_size, "seed": config.backbone.seed},
        "weights_id": train.attrs["weights"],
        "feature_shape": train.attrs["feature_shape"],
        "features_key": {"train": train.attrs["key"], "valid": valid.attrs["key"]},
        "search": {"parent_run_id": result.parent_run_id, "project": result.project,
                   "objective": config.tuner.objective, "score": result.score,
                   "hyperparameters": result.hyperparameters, "seconds": result.seconds,
                   "trials": len(result.trials)},
    }
    save_head(result.model, metadata, config)
    return result


@dataclass
class EvaluationResult:
    metrics: dict
    registration: Registration


def evaluate_stage(config: Config) -> EvaluationResult:
    """Score the saved head on the test split, write metrics and plot data, register it in MLflow."""
    model, metadata = load_head(head_paths(config)[0])
    test = load_split_features(config, "test")
    if test.class_names != metadata["class_names"]:
        raise FFXError(f"test classes {test.class_names} differ from the model's {metadata['class_names']}")
    metrics, probabilities = evaluate_head(model, test)
    metrics_dir = config.metrics.dir
    write_json_atomic(metrics_dir / "test.json", metrics)
    write_predictions_csv(metrics_dir / PREDICTIONS_FILE, test, probabilities)
    write_roc_csv(metrics_dir / ROC_FILE, test, probabilities)
    registration = register_head(config, model, metadata, metrics, test.features[:5],
                                 artifacts=[metrics_dir / PREDICTIONS_FILE, metrics_dir / ROC_FILE])
    return EvaluationResult(metrics, registration)
