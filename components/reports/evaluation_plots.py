"""The evaluation's figures: confusion matrix, ROC, precision-recall, calibration and the most confidently wrong
test images, under reports/evaluation/."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from components.config import Config
from components.data.images import ImageReadError, load_rgb
from components.features.store import FeatureSet
from components.reports import plots

ERROR_GRID_SIZE = 12      # images in the confidently-wrong grid
ERROR_IMAGE_PIXELS = 128  # each shown at this size


def write_evaluation_plots(config: Config, test: FeatureSet, probabilities: np.ndarray, metrics: dict) -> list[Path]:
    """Confusion matrix, ROC, precision-recall, calibration and the most confidently wrong images."""
    out = config.reports.dir / "evaluation"
    labels, names = test.labels, test.class_names
    paths = [
        plots.confusion_matrix_png(out / "confusion_matrix.png", metrics["confusion_matrix"], names),
        plots.roc_png(out / "roc.png", labels, probabilities, names),
        plots.precision_recall_png(out / "precision_recall.png", labels, probabilities, names),
        plots.calibration_png(out / "calibration.png", labels, probabilities),
    ]
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    shown = wrong[np.argsort(-probabilities[wrong, predicted[wrong]], kind="stable")][:ERROR_GRID_SIZE]
    images = [_image_or_none(config.data.root / test.paths[i], config.data.max_pixels) for i in shown]
    paths.append(plots.confident_errors_png(
        out / "confident_errors.png", images, [names[labels[i]] for i in shown], [names[predicted[i]] for i in shown],
        [float(probabilities[i, predicted[i]]) for i in shown], [test.paths[i] for i in shown], len(wrong)))
    return paths


def _image_or_none(path: Path, max_pixels: int) -> np.ndarray | None:
    try:
        return load_rgb(path, ERROR_IMAGE_PIXELS, max_pixels)
    except (ImageReadError, OSError):
        return None  # the dataset moved since extraction: the grid says so instead of failing the evaluation
