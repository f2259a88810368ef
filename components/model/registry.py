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

from components.codebase import ROOT, closure_files, module_file
from components.config import Config
from components.errors import FFXError, ModelNotFoundError
from components.migrations import flat_layout_model_error
from components.model.backbone_weights import share_backbone_weights
from components.model.comparison import (
    METRIC,
    ComparisonImages,
    challenger_passes,
    champion_version,
    score_version,
)
from components.model.classifier import HEAD_ARTIFACT, SPEC_ARTIFACT, input_example, signature, spec_for
from components.tracking import backbones_experiment, server_stop_as_error, setup_mlflow

MODEL_NAME = "classifier"             # the logged model's name inside the run
MODEL_ENTRY = "components.model.pyfunc_entry"  # MLflow "models from code" entry
MODEL_CODE = module_file(MODEL_ENTRY)
# What the served model imports, pinned to the versions that trained it.
SERVING_PACKAGES = ("tensorflow", "keras", "numpy", "pandas", "pillow", "h5py", "pyyaml", "pydantic")


@dataclass
class Registration:
    name: str
    version: str
    alias: str
    promoted: bool
    score: float                   # the new version's, on the comparison images (registry.compare_split)
    champion_score: float | None   # the champion's, scored now on the same images; None: there was none
    run_id: str
    decision: str                  # why the alias moved or stayed, with both scores


def _requirements() -> list[str]:
    import importlib.metadata

    return [f"{package}=={importlib.metadata.version(package)}" for package in SERVING_PACKAGES]


def copy_model_code(folder: Path) -> Path:
    """The package files a registered model carries, so that it runs where only its requirements are installed: the
    import closure of its entry, not the whole package."""
    for name in closure_files([MODEL_ENTRY]):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, folder / name)
    return folder / "components"


def register_classifier(config: Config, client, experiment_id: str, head_file: Path, metadata: dict,
                        test_metrics: dict, example_image: Path, images: ComparisonImages,
                        artifacts: list[Path] = ()) -> Registration:
    """Log the evaluation and the end-to-end classifier to the search's parent run, register it as a new version,
    score it and the current champion now on `images` (registry.compare_split), and move the alias per
    registry.promote. `client, experiment_id`: the MLflow store as tracking.setup_mlflow set it up."""
    import mlflow

    name, alias = config.mlflow.registered_model, config.registry.alias
    run_id = metadata["search"]["parent_run_id"]
    champion = champion_version(client, name, alias)  # read first: a registry that fails promotes nothing
    weights = share_backbone_weights(config.root, client, backbones_experiment(config, client), metadata)
    spec = spec_for(metadata, config.predict.tta, config.data.max_pixels, config.predict.batch_size, weights)
    client.get_run(run_id)  # through the patient client: a server that is down now is waited for
    with server_stop_as_error(config, "ffx evaluate"), mlflow.start_run(run_id=run_id, experiment_id=experiment_id):
        test_scores = log_evaluation(test_metrics, artifacts)
        version = log_model_version(name, head_file, spec, metadata, example_image)
        for key, value in {**test_scores, "backbone_weights": weights["uri"]}.items():
            client.set_model_version_tag(name, version, key, str(value))
        scores = compare_with_champion(name, version, champion, images)
    promoted, decision = promote(config, client, run_id, version, champion, scores, images)
    return Registration(name, version, alias, promoted, scores.challenger, scores.champion, run_id, decision)


def flat_test_metrics(test_metrics: dict) -> dict[str, float]:
    """The test metrics that are numbers, as `test_<name>`: the run's metrics and the version's tags."""
    return {f"test_{k}": v for k, v in test_metrics.items() if isinstance(v, (int, float))}


def log_evaluation(test_metrics: dict, artifacts: list[Path]) -> dict[str, float]:
    """The test metrics and the evaluation's files (predictions, plots, model card) on the active run; the metrics
    as logged (flat_test_metrics)."""
    import mlflow

    test_scores = flat_test_metrics(test_metrics)
    mlflow.log_metrics(test_scores)
    mlflow.log_dict(test_metrics, "evaluation/test.json")
    for path in artifacts:
        mlflow.log_artifact(str(path), "evaluation")
    return test_scores


def log_model_version(name: str, head_file: Path, spec: dict, metadata: dict, example_image: Path) -> str:
    """The end-to-end classifier logged to the active run (head, spec, the package files it imports) and
    registered as a new version of `name`: that version."""
    import mlflow

    with tempfile.TemporaryDirectory() as folder:
        spec_file = Path(folder) / "classifier.json"
        spec_file.write_text(json.dumps(spec, indent=2, sort_keys=True))
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=str(MODEL_CODE), code_paths=[str(copy_model_code(Path(folder)))],
            artifacts={HEAD_ARTIFACT: str(head_file), SPEC_ARTIFACT: str(spec_file)},
            signature=signature(spec["class_names"]), input_example=input_example(example_image),
            # Explicit requirements: MLflow's inference would load the model in a subprocess (slow).
            pip_requirements=_requirements(), registered_model_name=name, metadata={**metadata, "spec": spec})
    return str(info.registered_model_version)


@dataclass
class Scores:
    challenger: float
    champion: float | None
    challenger_passes: bool


def compare_with_champion(name: str, version: str, champion, images: ComparisonImages) -> Scores:
    """Both registered models scored now on `images` (nested runs of the active run), and MLflow's gate. A champion
    that cannot be loaded here cannot be scored: one line, and nothing is promoted."""
    challenger = score_version(load_model_version(f"models:/{name}/{version}"), images, f"challenger v{version}")
    if champion is None:
        return Scores(challenger.metrics[METRIC], None, True)
    try:
        model = load_model_version(f"models:/{name}/{champion.version}")
    except ModelNotFoundError as exc:
        raise FFXError(f"the champion, version {champion.version}, cannot be scored on today's images ({exc}); "
                       "nothing was promoted") from None
    held = score_version(model, images, f"champion v{champion.version}")
    return Scores(challenger.metrics[METRIC], held.metrics[METRIC], challenger_passes(challenger, held, images))


def promote(config: Config, client, run_id: str, version: str, champion, scores: Scores,
            images: ComparisonImages) -> tuple[bool, str]:
    """The alias moved to the new version when registry.promote says so (always, or if it beats the champion), the
    decision recorded on the version and the run: (promoted, the decision's line)."""
    name, promote_rule = config.mlflow.registered_model, config.registry.promote
    promoted = promote_rule == "always" or scores.challenger_passes
    decision = promotion_decision(promote_rule, promoted, version, champion, scores, images)
    record_decision(client, name, run_id, version, decision, scores, images)
    if promoted:
        client.set_registered_model_alias(name, config.registry.alias, version)
    return promoted, decision


def promotion_decision(promote: str, promoted: bool, version: str, champion, scores: Scores,
                       images: ComparisonImages) -> str:
    """Why the alias moved or stayed, with both scores and the images they were scored on."""
    held = "none" if champion is None else f"v{champion.version} {scores.champion:.4f}"
    return (f"{'promoted' if promoted else 'kept champion'}: version {version} {METRIC} {scores.challenger:.4f} "
            f"vs champion {held} on the same {len(images.paths)} {images.split} images (promote: {promote})")


def record_decision(client, name: str, run_id: str, version: str, decision: str, scores: Scores,
                    images: ComparisonImages) -> None:
    """The decision and the comparison images on the new version and the run; both scores on the run."""
    for key, value in {"promotion": decision, "comparison_split": images.split,
                       "comparison_split_hash": images.content_hash}.items():
        client.set_model_version_tag(name, version, key, value)
        client.set_tag(run_id, key, value)
    client.log_metric(run_id, "challenger_score", scores.challenger)
    if scores.champion is not None:
        client.log_metric(run_id, "champion_score", scores.champion)


def load_registered_classifier(config: Config, reference: str):
    """The pyfunc model at `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/…` or an MLflow model folder, from
    the configured store."""
    setup_mlflow(config)
    return load_model_version(reference)


def load_model_version(reference: str):
    """The pyfunc model at `reference`, from the store MLflow is set up on (tracking.setup_mlflow)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.pyfunc.load_model(reference)
    except (MlflowException, ModuleNotFoundError) as exc:
        flat_layout = flat_layout_model_error(exc, reference)
        if flat_layout is not None:
            raise flat_layout from None
        if not isinstance(exc, MlflowException):
            raise
        raise ModelNotFoundError(f"{reference}: not found in the MLflow registry at {mlflow.get_registry_uri()} "
                                 f"({exc.message.splitlines()[0]}); run `ffx evaluate` to register one") from None
