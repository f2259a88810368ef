"""The pipeline's stages as plain functions: the CLI, dvc.yaml and the Prefect flows all call these."""
from __future__ import annotations

import json
from dataclasses import dataclass

from components.backbone import backbone_identity, resolve_weights
from components.config import FLIPPED_SUFFIX, Config
from components.dataset import Split
from components.errors import FFXError
from components.evaluate import evaluate_head, write_predictions_csv, write_roc_csv
from components.extract import extraction_key, load_split_features, output_is_current, split_views
from components.files import content_key, file_sha1, write_json_atomic
from components.registry import Registration, head_paths, load_head, register_classifier, save_head
from components.report import MODEL_CARD_FILE, write_evaluation_plots, write_model_card, write_search_report
from components.search import SearchResult, project_name, run_search
from components.shards import shard_key, shard_path
from components.tracking import setup_mlflow

PREDICTIONS_FILE = "test_predictions.csv"
ROC_FILE = "roc.csv"


def tune_stage(config: Config, progress=None) -> SearchResult:
    """Search on train/valid features, save the best head with the metadata prediction needs."""
    train, valid = load_split_features(config, "train"), load_split_features(config, "valid")
    result = run_search(config, train, valid, progress)
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


@dataclass
class EvaluationResult:
    metrics: dict
    registration: Registration


def evaluate_stage(config: Config, command: str = "ffx evaluate") -> EvaluationResult:
    """Score the saved head on the test split, write metrics, plots and the model card (quoting `command`, how this
    evaluation was started), register it in MLflow."""
    head_file = head_paths(config)[0]
    model, metadata = load_head(head_file)
    test = load_split_features(config, "test")
    if test.class_names != metadata["class_names"]:
        raise FFXError(f"test classes {test.class_names} differ from the model's {metadata['class_names']}")
    flipped = None
    if config.predict.tta:  # scored as prediction scores it: over each test image and its mirror image
        flipped = load_split_features(config, "test" + FLIPPED_SUFFIX)
        if flipped.paths != test.paths:
            raise FFXError(f"{config.features.path('test' + FLIPPED_SUFFIX)} does not mirror "
                           f"{config.features.path('test')} row for row; run `ffx extract` again")
    metrics, probabilities = evaluate_head(model, test, flipped)
    predictions, roc = config.metrics.dir / PREDICTIONS_FILE, config.metrics.dir / ROC_FILE
    write_json_atomic(config.metrics.dir / "test.json", metrics)
    write_predictions_csv(predictions, test, probabilities)
    write_roc_csv(roc, test, probabilities)
    figures = write_evaluation_plots(config, test, probabilities, metrics)
    card = write_model_card(config, metadata, metrics, test, probabilities, command)
    registration = register_classifier(config, head_file, metadata, metrics,
                                       example_image=config.data.root / test.paths[0],
                                       artifacts=[predictions, roc, *figures, card])
    return EvaluationResult(metrics, registration)


# Cache keys for orchestrators (Prefect): (key, current). The key names a stage's inputs; `current` says
# whether the stage's output exists and was made from those inputs, so a deleted or stale output re-runs.

def _configured_identity(config: Config) -> dict:
    """The backbone identity params.yaml asks for, without building the model."""
    _, weights_id = resolve_weights(config.backbone, config.root)
    return backbone_identity(config.backbone, weights_id, config.extract.precision)


def extraction_cache_key(config: Config, split: Split, name: str) -> tuple[str, bool]:
    """`name`: the feature file, made from `split` (test_flip from test)."""
    key = extraction_key(split, _configured_identity(config), split_views(config, name))
    return f"extract-{key}", output_is_current(config.features.path(name), key)


def shard_cache_key(config: Config, rows: list, index: int, name: str) -> tuple[str, bool]:
    """`rows`: shard `index` of feature file `name` (components.shards.shard_rows)."""
    key = shard_key(rows, index, _configured_identity(config))
    return f"shard-{key}", output_is_current(shard_path(config, name, index), key)


def tune_cache_key(config: Config, train_key: str, valid_key: str) -> tuple[str, bool]:
    project = project_name(config, train_key, valid_key)
    model_path, metadata_path = head_paths(config)
    current = (model_path.is_file() and metadata_path.is_file()
               and json.loads(metadata_path.read_text()).get("search", {}).get("project") == project)
    return f"tune-{content_key({'project': project, 'model': config.section('model')})}", current


def evaluate_cache_key(config: Config, test_key: str) -> tuple[str, bool]:
    model_path, _ = head_paths(config)
    head = file_sha1(model_path) if model_path.is_file() else "missing"
    key = content_key({"head": head, "test": test_key, "mlflow": config.section("mlflow"),
                       "registry": config.section("registry"), "metrics": config.section("metrics")})
    outputs = (config.metrics.dir / "test.json", config.reports.dir / MODEL_CARD_FILE)
    return f"evaluate-{key}", all(path.is_file() for path in outputs)
