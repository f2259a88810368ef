"""The end-to-end classifier in the MLflow registry: registration, the champion alias, loading a version.

What a version holds: the head, its spec and the package files the classifier imports (a few MB); the backbone's
weights are shared between versions (components.model.backbone_weights).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from components.config import Config, better
from components.errors import FFXError, ModelNotFoundError
from components.model.backbone_weights import share_backbone_weights
from components.model.classifier import HEAD_ARTIFACT, SPEC_ARTIFACT, input_example, signature, spec_for
from components.tracking import backbones_experiment, server_stop_as_error, setup_mlflow

MODEL_NAME = "classifier"             # the logged model's name inside the run
PACKAGE = Path(__file__).parents[1]  # components/
MODEL_CODE = PACKAGE / "model" / "pyfunc_entry.py"  # MLflow "models from code" entry
# The package files a registered model carries, so that it runs where only its requirements are installed: the
# import closure of pyfunc_entry.py (tests/test_architecture.py checks it), not the whole package.
MODEL_FILES = ("__init__.py", "config.py", "defaults.yaml", "errors.py", "files.py", "runtime.py",
               "data/__init__.py", "data/augment.py", "data/images.py",
               "features/__init__.py", "features/backbone.py", "features/store.py",
               "model/__init__.py", "model/backbone_weights.py", "model/classifier.py", "model/head_file.py",
               "model/metrics.py", "model/pyfunc_entry.py")
# What the served model imports, pinned to the versions that trained it.
SERVING_PACKAGES = ("tensorflow", "keras", "numpy", "pandas", "pillow", "h5py", "pyyaml", "pydantic")


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

    return [f"{package}=={importlib.metadata.version(package)}" for package in SERVING_PACKAGES]


def _copy_code(folder: Path) -> Path:
    target = folder / "components"
    for name in MODEL_FILES:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PACKAGE / name, target / name)
    return target


def comparison_score(config: Config, metadata: dict, test_metrics: dict) -> tuple[str, float, str]:
    """(tag name, score, the metric it is a value of) used to decide champion vs challenger."""
    if config.registry.compare_split == "valid":
        objective = metadata["search"]["objective"]
        return f"valid_{objective}", float(metadata["search"]["score"]), objective
    metric = config.registry.compare_metric
    if metric not in test_metrics:
        raise FFXError(f"params: 'registry.compare_metric' {metric} is not among the test metrics "
                       f"({', '.join(k for k, v in test_metrics.items() if isinstance(v, float))})")
    return f"test_{metric}", float(test_metrics[metric]), metric


def register_classifier(config: Config, head_file: Path, metadata: dict, test_metrics: dict, example_image: Path,
                        artifacts: list[Path] = ()) -> Registration:
    """Log the end-to-end classifier to the search's parent run, register a new version, and move the alias
    per registry.promote."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client, experiment_id = setup_mlflow(config)
    name, alias = config.mlflow.registered_model, config.registry.alias
    run_id = metadata["search"]["parent_run_id"]
    score_tag, score, metric = comparison_score(config, metadata, test_metrics)
    flat = {f"test_{k}": v for k, v in test_metrics.items() if isinstance(v, (int, float))}
    weights = share_backbone_weights(config.root, client, backbones_experiment(config, client), metadata,
                                     earlier_experiment_ids=(experiment_id,))
    spec = spec_for(metadata, config.predict.tta, config.data.max_pixels, config.predict.batch_size, weights)
    client.get_run(run_id)  # through the patient client: a server that is down now is waited for
    with (tempfile.TemporaryDirectory() as folder, server_stop_as_error(config, "ffx evaluate"),
          mlflow.start_run(run_id=run_id, experiment_id=experiment_id)):
        spec_file = Path(folder) / "classifier.json"
        spec_file.write_text(json.dumps(spec, indent=2, sort_keys=True))
        mlflow.log_metrics(flat)
        mlflow.log_dict(test_metrics, "evaluation/test.json")
        for path in artifacts:
            mlflow.log_artifact(str(path), "evaluation")
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=str(MODEL_CODE), code_paths=[str(_copy_code(Path(folder)))],
            artifacts={HEAD_ARTIFACT: str(head_file), SPEC_ARTIFACT: str(spec_file)},
            signature=signature(spec["class_names"]), input_example=input_example(example_image),
            # Explicit requirements: MLflow's inference would load the model in a subprocess (slow).
            pip_requirements=_requirements(), registered_model_name=name, metadata={**metadata, "spec": spec})
    version = str(info.registered_model_version)
    for key, value in {**flat, "backbone_weights": weights["uri"]}.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.set_model_version_tag(name, version, score_tag, str(score))
    try:
        champion = client.get_model_version_by_alias(name, alias)
        champion_score = float(champion.tags[score_tag]) if score_tag in champion.tags else None
    except MlflowException:
        champion, champion_score = None, None
    promoted = config.registry.promote == "always" or better(metric, score, champion_score)
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


def load_registered_classifier(config: Config, reference: str):
    """The pyfunc model at `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/…` or an MLflow model folder."""
    import mlflow
    from mlflow.exceptions import MlflowException

    setup_mlflow(config)
    try:
        return mlflow.pyfunc.load_model(reference)
    except (MlflowException, ModuleNotFoundError) as exc:
        if "No module named 'components." in str(exc):  # its own copy of the code predates the layered package
            raise ModelNotFoundError(
                f"{reference}: registered by an older ffx, whose code (flat components/ modules) cannot load beside "
                "today's package in this process; serve it with `mlflow models serve`, or register the head again "
                "with `ffx evaluate --set registry.promote=always` (docs/serving.md)") from None
        if not isinstance(exc, MlflowException):
            raise
        raise ModelNotFoundError(f"{reference}: not found in the MLflow registry at {config.mlflow.tracking_uri} "
                                 f"({exc.message.splitlines()[0]}); run `ffx evaluate` to register one") from None
