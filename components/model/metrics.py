"""Test-split metrics of a trained head, written as DVC metrics and plot data."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from components.features.store import FeatureSet
from components.files import write_csv_atomic


def class_probabilities(model, features: np.ndarray) -> np.ndarray:
    """(N, C) probabilities whatever the head's output (one sigmoid unit for two classes)."""
    out = np.asarray(model.predict(features, batch_size=256, verbose=0), dtype=np.float64)
    if out.shape[1] == 1:
        return np.hstack([1.0 - out, out])
    return out


def average_views(probabilities: list[np.ndarray]) -> np.ndarray:
    """Test-time augmentation: the head's probabilities averaged over views (original, mirror) of the same images."""
    return np.mean(probabilities, axis=0)


def evaluate_head(model, test: FeatureSet, flipped: FeatureSet | None = None) -> tuple[dict, np.ndarray]:
    """Metrics dict (loss, accuracy, per-class precision/recall/F1, ROC AUC) and the (N, C) probabilities. With
    `flipped` (the test images mirrored, row for row) they are test-time augmentation's, and
    `accuracy_without_tta` / `accuracy_with_tta` report both."""
    from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

    probabilities = class_probabilities(model, test.features)
    tta = {}
    if flipped is not None:
        plain = probabilities
        probabilities = average_views([plain, class_probabilities(model, flipped.features)])
        tta = {"tta": True, "accuracy_without_tta": float((plain.argmax(axis=1) == test.labels).mean()),
               "accuracy_with_tta": float((probabilities.argmax(axis=1) == test.labels).mean())}
    labels = test.labels
    predicted = probabilities.argmax(axis=1)
    classes = list(range(test.num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes,
                                                                     zero_division=0)
    clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)  # the loss stays finite; rows then renormalised to sum to 1
    metrics = {
        "count": int(len(labels)),
        "loss": float(log_loss(labels, clipped / clipped.sum(axis=1, keepdims=True), labels=classes)),
        "accuracy": float((predicted == labels).mean()),
        "accuracy_ci95": accuracy_interval(predicted == labels),
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(test.class_names)},
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
        **tta,
    }
    if len(set(labels.tolist())) == test.num_classes:
        metrics["roc_auc"] = roc_auc(labels, probabilities)
    return metrics, probabilities


def wilson_interval(successes: int, total: int) -> tuple[float, float]:
    """95% confidence interval of a proportion; sound for small test sets and accuracies near 0 or 1."""
    from scipy.stats import binomtest

    if total == 0:
        return 0.0, 1.0
    interval = binomtest(successes, total).proportion_ci(method="wilson")
    return float(interval.low), float(interval.high)


def accuracy_interval(correct: np.ndarray) -> list[float]:
    """The Wilson 95% interval of an accuracy; `correct`: one bool per image."""
    return list(wilson_interval(int(np.sum(correct)), len(correct)))


def paired_test(first: np.ndarray, second: np.ndarray, names: tuple[str, str] = ("first", "second")) -> dict:
    """McNemar's exact test of two models scored on the same images (`first`, `second`: one bool per image, right
    or wrong): only the images on which they disagree count, and under "equally accurate" each disagreement goes
    either way with probability 1/2 (a two-sided binomial test). p-value 1.0 when they never disagree."""
    from scipy.stats import binomtest

    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    only_first, only_second = int(np.sum(first & ~second)), int(np.sum(second & ~first))
    disagreements = only_first + only_second
    p_value = binomtest(only_first, disagreements).pvalue if disagreements else 1.0
    return {"test": "mcnemar_exact", "images": int(len(first)), f"only_{names[0]}_right": only_first,
            f"only_{names[1]}_right": only_second, "p_value": float(p_value)}


def roc_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Of the positive class for two classes, one-vs-rest otherwise; every class must be among `labels`."""
    from sklearn.metrics import roc_auc_score

    classes = probabilities.shape[1]
    if classes == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", labels=list(range(classes))))


def write_predictions_csv(path: Path, test: FeatureSet, probabilities: np.ndarray) -> None:
    """One row per test image: the data behind DVC's confusion plot and the error grid."""
    guesses = probabilities.argmax(axis=1)
    write_csv_atomic(path, ["path", "actual", "predicted", "probability"],
                     [[rel, test.class_names[label], test.class_names[guess], f"{row[guess]:.6f}"]
                      for rel, label, guess, row in zip(test.paths, test.labels, guesses, probabilities)])


def write_roc_csv(path: Path, test: FeatureSet, probabilities: np.ndarray) -> None:
    """ROC points of the positive class (binary) for DVC's linear plot."""
    from sklearn.metrics import roc_curve

    points = []
    if test.num_classes == 2 and len(set(test.labels.tolist())) == 2:
        points = zip(*roc_curve(test.labels, probabilities[:, 1]))
    write_csv_atomic(path, ["fpr", "tpr", "threshold"],
                     [[f"{fpr:.6f}", f"{tpr:.6f}", f"{min(threshold, 1.0):.6f}"] for fpr, tpr, threshold in points])
