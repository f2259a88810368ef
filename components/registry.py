"""The trained head on disk (models/head.keras + head.json) and in the MLflow model registry."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.config import Config
from components.errors import FFXError, ModelNotFoundError, UnsafeModelError
from components.files import write_json_atomic
from components.tracking import setup_mlflow

HEAD_FILE = "head.keras"
METADATA_FILE = "head.json"


def head_paths(config: Config) -> tuple[Path, Path]:
    return config.model.dir / HEAD_FILE, config.model.dir / METADATA_FILE


def save_head(model, metadata: dict, config: Config) -> Path:
    """Save the head and the metadata prediction needs (classes, backbone) via temp files and rename."""
    model_path, metadata_path = head_paths(config)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_path.with_name(f".{os.getpid()}.{HEAD_FILE}")  # keras wants the .keras suffix
    model.save(tmp)
    os.replace(tmp, model_path)
    write_json_atomic(metadata_path, metadata)
    return model_path


def load_head(path: Path):
    """(keras model, metadata) from a head saved by save_head."""
    import keras

    path = Path(path)
    metadata_path = path.with_name(METADATA_FILE) if path.suffix == ".keras" else path / METADATA_FILE
    model_path = path if path.suffix == ".keras" else path / HEAD_FILE
    if not model_path.is_file() or not metadata_path.is_file():
        raise ModelNotFoundError(f"{model_path}: no head model here (expected {HEAD_FILE} and {METADATA_FILE}; "
                                 "run `ffx tune` first)")
    # compile=False: prediction needs no optimizer state (and the tuner checkpoint has none built).
    try:
        metadata = json.loads(metadata_path.read_text())
    except ValueError as exc:
        raise ModelNotFoundError(f"{metadata_path}: not valid JSON ({exc})") from None
    model = _refusing_unsafe(model_path, lambda: keras.models.load_model(model_path, compile=False, safe_mode=True))
    return model, metadata


def _refusing_unsafe(source, load):
    """Run `load` (a Keras load in safe_mode) and turn a refused or unreadable model into one clear error."""
    try:
        return load()
    except ValueError as exc:
        if "safe_mode" in str(exc):
            raise UnsafeModelError(
                f"{source}: refused: loading this model would run Python code stored in it (e.g. a Lambda layer); "
                "ffx loads models with Keras safe_mode. Use a head saved by `ffx tune`") from None
        raise ModelNotFoundError(f"{source}: not a loadable Keras model ({str(exc).splitlines()[0]})") from None


@dataclass
class Registration:
    name: str
    version: str
    alias: str
    promoted: bool
    score: float
    champion_score: float | None   # the previous champion's score, if there was one
    run_id: str
    decision: str                  # why the alias moved or stayed, with both scores


def _requirements() -> list[str]:
    import importlib.metadata

    return [f"{package}=={importlib.metadata.version(package)}" for package in ("tensorflow", "keras")]


def comparison_score(config: Config, metadata: dict, test_metrics: dict) -> tuple[str, float, bool]:
    """(tag name, score, lower is better) used to decide champion vs challenger."""
    if config.registry.compare_split == "valid":
        objective = metadata["search"]["objective"]
        return f"valid_{objective}", float(metadata["search"]["score"]), objective.endswith("loss")
    metric = config.registry.compare_metric
    if metric not in test_metrics:
        raise FFXError(f"params: 'registry.compare_metric' {metric} is not among the test metrics "
                       f"({', '.join(k for k, v in test_metrics.items() if isinstance(v, float))})")
    return f"test_{metric}", float(test_metrics[metric]), metric == "loss"


def register_head(config: Config, model, metadata: dict, test_metrics: dict, features_sample: np.ndarray,
                  artifacts: list[Path] = ()) -> Registration:
    """Log the head to the search's parent run, register a new version, and move the alias per registry.promote."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    client, experiment_id = setup_mlflow(config)
    name, alias = config.mlflow.registered_model, config.registry.alias
    run_id = metadata["search"]["parent_run_id"]
    score_tag, score, lower_is_better = comparison_score(config, metadata, test_metrics)
    flat = {f"test_{k}": v for k, v in test_metrics.items() if isinstance(v, (int, float))}
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id):
        mlflow.log_metrics(flat)
        mlflow.log_dict(test_metrics, "evaluation/test.json")
        for path in artifacts:
            mlflow.log_artifact(str(path), "evaluation")
        signature = infer_signature(features_sample, model.predict(features_sample, verbose=0))
        # Explicit requirements: MLflow's inference would re-load the model in a subprocess (slow).
        info = mlflow.keras.log_model(model, name="head", signature=signature, registered_model_name=name,
                                      metadata=metadata, pip_requirements=_requirements())
    version = str(info.registered_model_version)
    for key, value in flat.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_model_version_tag(name, version, score_tag, str(score))
    try:
        champion = client.get_model_version_by_alias(name, alias)
        champion_score = float(champion.tags[score_tag]) if score_tag in champion.tags else None
    except MlflowException:
        champion, champion_score = None, None
    promoted = config.registry.promote == "always" or champion_score is None or (
        score < champion_score if lower_is_better else score > champion_score)
    decision = (f"{'promoted' if promoted else 'kept champion'}: version {version} {score_tag} {score:.4f} vs "
                f"champion {'none' if champion_score is None else f'v{champion.version} {champion_score:.4f}'} "
                f"(promote: {config.registry.promote})")
    client.set_model_version_tag(name, version, "promotion", decision)
    client.set_tag(run_id, "promotion", decision)
    client.log_metric(run_id, "challenger_score", score)
    if champion_score is not None:
        client.log_metric(run_id, "champion_score", champion_score)
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    return Registration(name, version, alias, promoted, score, champion_score, run_id, decision)


def load_registered_head(config: Config, reference: str):
    """(keras model, metadata) from `models:/NAME@ALIAS` or `models:/NAME/VERSION`."""
    import mlflow
    from mlflow.exceptions import MlflowException

    setup_mlflow(config)
    try:
        info = mlflow.models.get_model_info(reference)
        model = _refusing_unsafe(reference, lambda: mlflow.keras.load_model(
            reference, load_model_kwargs={"safe_mode": True}))
        return model, info.metadata or {}
    except MlflowException as exc:
        raise ModelNotFoundError(f"{reference}: not found in the MLflow registry at {config.mlflow.tracking_uri} "
                                 f"({exc.message.splitlines()[0]}); run `ffx evaluate` to register one") from None
