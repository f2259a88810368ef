"""The evaluate stage: the saved head scored on the test split; metrics, plot data, figures and the model card
written; the end-to-end classifier registered in MLflow."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from components.config import Config
from components.errors import FFXError
from components.features.identity import FLIPPED_SUFFIX, feature_path, load_split_features, valid_parts
from components.features.mlflow_datasets import feature_datasets
from components.files import write_json_atomic
from components.finetune.boundary import load_boundary_features
from components.finetune.decision import (
    KEPT_FINETUNED,
    KEPT_HEAD,
    decision_is_current,
    decision_path,
    finetuned_dir,
    read_decision,
)
from components.model.head_file import HEAD_FILE, head_paths, load_head
from components.model.metrics import (
    accuracy_interval,
    evaluate_head,
    paired_test,
    write_predictions_csv,
    write_roc_csv,
)
from components.model.comparison import ComparisonImages
from components.model.registry import Registration, register_classifier
from components.reports.evaluation_plots import write_evaluation_plots
from components.reports.model_card import read_audit_counts, stale_artifacts, write_model_card
from components.tracking import setup_mlflow

PREDICTIONS_FILE = "test_predictions.csv"
ROC_FILE = "roc.csv"
METRICS_FILE = "test.json"
VALID_HELD_OUT = "valid_held_out"  # the comparison images' name with registry.compare_split: valid


@dataclass
class EvaluationResult:
    metrics: dict
    registration: Registration
    audit: dict | None = None  # metrics/audit.json's counts when `ffx audit` wrote them for these features
    stale: list[str] = field(default_factory=list)  # artefacts of other data, left out of the card: a line each

    @property
    def leak_warning(self) -> str | None:
        leaks = (self.audit or {}).get("leaks", 0)
        return (f"warning: the audit found {leaks} near-duplicate pair(s) across splits (metrics/audit.json, "
                "reports/audit.html): the test score is optimistic") if leaks else None


def evaluate_stage(config: Config, command: str = "ffx evaluate") -> EvaluationResult:
    """Score the saved head on the test split, write metrics, plots and the model card (quoting `command`, how this
    evaluation was started), register it in MLflow."""
    head_file, model, metadata, features = _kept_model(config)
    test, flipped = _test_sets(config, features, metadata["class_names"])
    metrics, probabilities = evaluate_head(model, test, flipped)
    metrics |= _paired_test_scores(config, metadata.get("finetune"), probabilities.argmax(axis=1) == test.labels)
    predictions, roc = config.metrics.dir / PREDICTIONS_FILE, config.metrics.dir / ROC_FILE
    write_json_atomic(config.metrics.dir / METRICS_FILE, metrics)
    write_predictions_csv(predictions, test, probabilities)
    write_roc_csv(roc, test, probabilities)
    figures = write_evaluation_plots(config, test, probabilities, metrics)
    client, experiment_id = setup_mlflow(config, create=False)  # the search's store and experiment, made by tune
    card = write_model_card(config, experiment_id, metadata, metrics, test, probabilities, command)
    registration = register_classifier(config, client, experiment_id, head_file, metadata, metrics,
                                       example_image=config.data.root / test.paths[0],
                                       images=_comparison_images(config, test),
                                       artifacts=[predictions, roc, *figures, card])
    # The evaluation's run (the search's): the test features it was scored on
    scored = {"test": test} | ({"test" + FLIPPED_SUFFIX: flipped} if flipped is not None else {})
    client.log_inputs(registration.run_id, datasets=feature_datasets(config.data.root, scored))
    stale = stale_artifacts(config) + _stale_decision(config, head_file)
    return EvaluationResult(metrics, registration, read_audit_counts(config), stale)


def _comparison_images(config: Config, test) -> ComparisonImages:
    """The images champion and challenger are both scored on (registry.compare_split)."""
    if config.registry.compare_split == "test":
        return ComparisonImages.of(config.data.root, test, "test")
    _, held = valid_parts(config, load_split_features(config, "valid"))
    return ComparisonImages.of(config.data.root, held, VALID_HELD_OUT)


def _test_sets(config: Config, features, class_names: list[str]):
    """(test, its mirror image or None): the mirror when predict.tta scores as prediction does, over both."""
    test = features("test")
    if test.class_names != class_names:
        raise FFXError(f"test classes {test.class_names} differ from the model's {class_names}")
    if not config.predict.tta:
        return test, None
    flipped = features("test" + FLIPPED_SUFFIX)
    if flipped.paths != test.paths:
        raise FFXError(f"{feature_path(config, 'test' + FLIPPED_SUFFIX)} does not mirror "
                       f"{feature_path(config, 'test')} row for row; run `ffx extract` again")
    return test, flipped


def _paired_test_scores(config: Config, decision: dict | None, kept_correct: np.ndarray) -> dict:
    """When the finetune stage trained a model: both models' test accuracy with its interval, and McNemar's exact
    test on the same images (what the choice on validation gained or cost). Reported only: the choice stays the
    validation one, and each model reads test once."""
    if not _both_trained(config, decision):
        return {}
    other = KEPT_HEAD if decision["kept"] == KEPT_FINETUNED else KEPT_FINETUNED
    correct = {decision["kept"]: kept_correct, other: _test_correct(config, decision, other)}
    return {**{f"{name}_accuracy": float(correct[name].mean()) for name in (KEPT_HEAD, KEPT_FINETUNED)},
            **{f"{name}_accuracy_ci95": accuracy_interval(correct[name]) for name in (KEPT_HEAD, KEPT_FINETUNED)},
            "paired_test": paired_test(correct[KEPT_HEAD], correct[KEPT_FINETUNED], (KEPT_HEAD, KEPT_FINETUNED))}


def candidate_test_scores(config: Config, decision: dict | None) -> dict[str, np.ndarray]:
    """Right or wrong on each test image, for the head and the fine-tuned model the finetune stage trained."""
    if not _both_trained(config, decision):
        raise FFXError(f"{decision_path(config)}: no fine-tuned model to compare; run `ffx finetune` with "
                       "finetune.enabled: true")
    return {name: _test_correct(config, decision, name) for name in (KEPT_HEAD, KEPT_FINETUNED)}


def _both_trained(config: Config, decision: dict | None) -> bool:
    return bool(decision and decision.get("enabled") and (finetuned_dir(config) / HEAD_FILE).is_file())


def _test_correct(config: Config, decision: dict, which: str) -> np.ndarray:
    _, model, metadata, features = _candidate(config, decision, which)
    test, flipped = _test_sets(config, features, metadata["class_names"])
    _, probabilities = evaluate_head(model, test, flipped)
    return probabilities.argmax(axis=1) == test.labels


def _stale_decision(config: Config, model_file) -> list[str]:
    """A line when the finetune stage's decision was made for another head or other settings: the head alone was
    scored, and the decision is not quoted."""
    decision = read_decision(config)
    if decision is None or model_file != head_paths(config)[0] or decision_is_current(config, model_file):
        return []
    return [f"{decision_path(config)}: made for another head or other finetune settings (stale); not quoted, the "
            "head alone was scored. Run `ffx finetune` for this head."]


def _kept_model(config: Config):
    """(model file, model, metadata, the features it takes by split name): the fine-tuned model on the boundary
    features when the finetune stage kept it, else the head on the extract stage's features. The metadata carries
    the stage's decision (both validation scores) for the model card and the registered version."""
    head_file = head_paths(config)[0]
    decision = read_decision(config)
    if decision is not None and not decision_is_current(config, head_file):
        if decision["kept"] == KEPT_FINETUNED:  # made from an earlier head: neither it nor its scores stand
            raise FFXError(f"{decision_path(config)}: made for another head ({head_file}) or other finetune "
                           "settings; run `ffx finetune` again")
        decision = None  # the head alone, as without the stage
    if decision is None:  # the finetune stage never ran here
        return _candidate(config, None, KEPT_HEAD)
    model_file, model, metadata, features = _candidate(config, decision, decision["kept"])
    return model_file, model, dict(metadata, finetune=decision), features


def _candidate(config: Config, decision: dict | None, which: str):
    """(model file, model, metadata, features by split name) of the head or the fine-tuned model (the decision
    names its boundary)."""
    if which == KEPT_FINETUNED:
        model_file = finetuned_dir(config) / HEAD_FILE
        model, metadata = load_head(model_file)
        return model_file, model, metadata, lambda split: load_boundary_features(config, decision["boundary"], split)
    model_file = head_paths(config)[0]
    model, metadata = load_head(model_file)
    return model_file, model, metadata, lambda split: load_split_features(config, split)
