"""PNG figures people look at after a run: evaluation plots and trial comparison. Matplotlib, Agg backend.

Each figure has two functions: `NAME_figure(...)` draws it and returns the matplotlib Figure (what tests read the
drawn data from; the caller closes it), `NAME_png(path, ...)` writes it (save_figure) and returns the path."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from components.files import atomic_path

FIGSIZE = (10, 6.25)  # inches; at DPI 100 a 1000x625 PNG, readable on a laptop screen without zooming
DPI = 100
INACTIVE = "inactive"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display in CI or under DVC
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 13, "figure.titlesize": 15, "axes.grid": False,
                         "figure.figsize": FIGSIZE, "figure.constrained_layout.use": True})
    return plt


def save_figure(figure, path: Path) -> Path:
    """Write `figure` as PNG via a temp file in the same folder + rename, then free it."""
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(figure)
    return Path(path)


def _message_figure(message: str, title: str = ""):
    """A figure that says why there is nothing to draw."""
    figure, ax = _pyplot().subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=16)
    figure.suptitle(title)
    return figure


def _curve_targets(labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]):
    """(name, 0/1 truth, score) per curve: the positive class for two classes, one-vs-rest otherwise; a class
    absent from the test split has no curve."""
    picked = [1] if len(class_names) == 2 else range(len(class_names))
    targets = [(class_names[i], (labels == i).astype(int), probabilities[:, i]) for i in picked]
    return [(name, truth, score) for name, truth, score in targets if truth.min() != truth.max()]


def _curves_figure(display, title: str, labels: np.ndarray, probabilities: np.ndarray,
                   class_names: Sequence[str], legend: str, chance_level_once: bool):
    """One curve per `_curve_targets` entry, drawn by a scikit-learn display class, with its chance level."""
    figure, ax = _pyplot().subplots()
    for index, (name, truth, score) in enumerate(_curve_targets(labels, probabilities, class_names)):
        display.from_predictions(truth, score, name=name, ax=ax,
                                 plot_chance_level=index == 0 or not chance_level_once)
    ax.set_title(title + (" (one vs rest)" if len(class_names) > 2 else f" (positive class: {class_names[1]})"))
    ax.legend(loc=legend)
    ax.grid(alpha=0.3)
    return figure


def confusion_matrix_figure(matrix, class_names: Sequence[str]):
    """Counts and row-normalised (recall per true class) side by side."""
    from sklearn.metrics import ConfusionMatrixDisplay

    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    figure, axes = _pyplot().subplots(1, 2)
    for ax, values, title, fmt in ((axes[0], counts, "Counts", ".0f"),
                                   (axes[1], normalised, "Normalised by true class", ".2f")):
        ConfusionMatrixDisplay(values, display_labels=list(class_names)).plot(
            ax=ax, cmap="Blues", values_format=fmt, xticks_rotation=45 if len(class_names) > 4 else "horizontal",
            im_kw={"vmin": 0}, colorbar=True)
        ax.set_title(title)
    figure.suptitle(f"Confusion matrix on the test split ({int(counts.sum())} images)")
    return figure


def confusion_matrix_png(path: Path, matrix, class_names: Sequence[str]) -> Path:
    return save_figure(confusion_matrix_figure(matrix, class_names), path)


def roc_figure(labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]):
    from sklearn.metrics import RocCurveDisplay

    # The chance level (the diagonal) is the same for every class: drawn once.
    return _curves_figure(RocCurveDisplay, "ROC curve", labels, probabilities, class_names, "lower right",
                          chance_level_once=True)


def roc_png(path: Path, labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]) -> Path:
    return save_figure(roc_figure(labels, probabilities, class_names), path)


def precision_recall_figure(labels: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str]):
    from sklearn.metrics import PrecisionRecallDisplay

    # Each class's chance level: its base rate, what a classifier guessing at random reaches.
    return _curves_figure(PrecisionRecallDisplay, "Precision-recall curve", labels, probabilities, class_names,
                          "lower left", chance_level_once=False)


def precision_recall_png(path: Path, labels: np.ndarray, probabilities: np.ndarray,
                         class_names: Sequence[str]) -> Path:
    return save_figure(precision_recall_figure(labels, probabilities, class_names), path)


def calibration_figure(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10):
    """Reliability of the predicted class's probability: accuracy per confidence bin, with bin sizes below."""
    from sklearn.calibration import CalibrationDisplay

    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(int)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    gap = float(np.abs(np.bincount(which, correct - confidence, bins)).sum() / max(len(labels), 1))
    figure, (top, bottom) = _pyplot().subplots(2, 1, height_ratios=(3, 1), sharex=True)
    CalibrationDisplay.from_predictions(correct, confidence, n_bins=bins, name="model", ax=top)
    top.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="", ylabel="accuracy in bin",
            title=f"Calibration of the predicted class's probability (expected calibration error {gap:.3f})")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.bar((edges[:-1] + edges[1:]) / 2, counts, width=1 / bins * 0.9, color="tab:grey")
    bottom.set(xlabel="predicted probability of the chosen class", ylabel="images")
    bottom.yaxis.get_major_locator().set_params(integer=True)
    return figure


def calibration_png(path: Path, labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> Path:
    return save_figure(calibration_figure(labels, probabilities, bins), path)


def confident_errors_figure(images: Sequence[np.ndarray | None], true: Sequence[str],
                            predicted: Sequence[str], probability: Sequence[float], names: Sequence[str],
                            total_errors: int):
    """A grid of misclassified images (most confident first) with true/predicted labels and probability."""
    count = len(images)
    if count == 0:
        return _message_figure("No misclassified test images", "Most confidently wrong test images")
    columns = min(count, 6)
    rows = math.ceil(count / columns)
    figure, axes = _pyplot().subplots(rows, columns, figsize=(FIGSIZE[0], max(3.2, 2.9 * rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, t, p, prob, name in zip(axes.flat, images, true, predicted, probability, names):
        if image is None:
            ax.text(0.5, 0.5, "image not found", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(image)
        name = Path(name).name
        name = name if len(name) <= 20 else "…" + name[-19:]  # the end of a long name: what tells files apart
        ax.set_title(f"true: {t}\npredicted: {p} ({prob:.2f})\n{name}", fontsize=9)
    figure.suptitle(f"Most confidently wrong test images ({count} of {total_errors} errors)")
    return figure


def confident_errors_png(path: Path, images: Sequence[np.ndarray | None], true: Sequence[str],
                         predicted: Sequence[str], probability: Sequence[float], names: Sequence[str],
                         total_errors: int) -> Path:
    return save_figure(confident_errors_figure(images, true, predicted, probability, names, total_errors), path)


def _axis_positions(values: Sequence, categories_up_to: int = 6) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Values placed on [0, 1] for a parallel-coordinates axis, and (position, label) ticks: a few distinct values
    are evenly spaced categories, more numbers are spread linearly; text (e.g. `inactive`) has a slot at the bottom."""
    numbers = sorted({float(v) for v in values if _is_number(v)})
    words = sorted({str(v) for v in values if not _is_number(v)})
    if len(numbers) <= categories_up_to:
        slots = [*words, *numbers]
        spacing = 1 / max(len(slots) - 1, 1)
        where = {slot: i * spacing for i, slot in enumerate(slots)}
        positions = np.array([where[float(v)] if _is_number(v) else where[str(v)] for v in values])
        return positions, [(where[s], _label(s)) for s in slots]
    base = 0.15 if words else 0.0  # room for the text slots below the numbers
    where_word = {w: i * base / max(len(words), 1) for i, w in enumerate(words)}
    low, high = numbers[0], numbers[-1]
    span = (high - low) or 1.0

    def place(v):
        return base + (1 - base) * (float(v) - low) / span if _is_number(v) else where_word[str(v)]
    positions = np.array([place(v) for v in values])
    ticks = [(place(t), _label(float(t))) for t in np.linspace(low, high, 5)]
    return positions, ticks + [(where_word[w], w) for w in words]


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def _label(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def parallel_coordinates_figure(trials: Sequence[dict], hp_names: Sequence[str], objective: str,
                                maximise: bool):
    """One line per completed trial across the hyperparameter axes to the objective, coloured by objective."""
    from matplotlib import cm, colors

    scored = [t for t in trials if t.get("score") is not None]
    if not scored:
        return _message_figure("No completed trial to compare")
    figure, ax = _pyplot().subplots()
    columns = [*hp_names, objective]
    scores = np.array([t["score"] for t in scored], dtype=float)
    axes_positions = [_axis_positions([t["params"].get(name, INACTIVE) for t in scored]) for name in hp_names]
    axes_positions.append(_axis_positions(scores.tolist(), categories_up_to=0))
    norm = colors.Normalize(scores.min(), scores.max() if scores.max() > scores.min() else scores.min() + 1e-9)
    colormap = cm.viridis if maximise else cm.viridis_r
    order = np.argsort(scores if maximise else -scores)  # best drawn last, on top
    x = np.arange(len(columns))
    for row in order:
        ax.plot(x, [positions[row] for positions, _ in axes_positions], color=colormap(norm(scores[row])),
                linewidth=2.2, alpha=0.85)
    for column, (_, ticks) in enumerate(axes_positions):
        ax.axvline(column, color="black", linewidth=1)
        for position, label in ticks:
            ax.text(column + 0.03, position, label, va="center", fontsize=9,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})
    ax.set(xticks=x, xticklabels=columns, yticks=[], xlim=(-0.1, len(columns) - 0.6), ylim=(-0.06, 1.06))
    ax.spines[["top", "right", "left"]].set_visible(False)
    figure.colorbar(cm.ScalarMappable(norm=norm, cmap=colormap), ax=ax, label=objective)
    ax.set_title(f"Hyperparameters vs {objective} ({len(scored)} completed trials; "
                 f"{'higher' if maximise else 'lower'} is better)")
    return figure


def parallel_coordinates_png(path: Path, trials: Sequence[dict], hp_names: Sequence[str], objective: str,
                             maximise: bool) -> Path:
    return save_figure(parallel_coordinates_figure(trials, hp_names, objective, maximise), path)


def objective_by_trial_figure(scores: Sequence[float | None], objective: str, maximise: bool):
    """Each trial's score in the order trials ran, failed trials marked, and the best-so-far line."""
    figure, ax = _pyplot().subplots()
    numbers = np.arange(1, len(scores) + 1)
    done = np.array([s is not None for s in scores], dtype=bool)
    values = np.array([np.nan if s is None else s for s in scores], dtype=float)
    best = (np.fmax if maximise else np.fmin).accumulate(values)  # NaN (failed) only until a first score
    ax.scatter(numbers[done], values[done], s=40, zorder=3, label="trial")
    ax.step(numbers, best, where="post", color="tab:orange", linewidth=2, label="best so far")
    if (~done).any():
        worst = (np.nanmin(values) if maximise else np.nanmax(values)) if done.any() else 0.0
        ax.scatter(numbers[~done], np.full((~done).sum(), worst), marker="x", color="tab:red", s=60,
                   label="failed (no score)", zorder=3)
    ax.set(xlabel="trial (in the order run)", ylabel=objective,
           title=f"{objective} by trial ({'higher' if maximise else 'lower'} is better)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return figure


def objective_by_trial_png(path: Path, scores: Sequence[float | None], objective: str, maximise: bool) -> Path:
    return save_figure(objective_by_trial_figure(scores, objective, maximise), path)


def learning_curves_figure(history: dict[str, Sequence[float]], title: str):
    """Loss and accuracy per epoch, train and validation, side by side."""
    figure, axes = _pyplot().subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for name, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = history.get(name)
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, style, marker="o", markersize=3, linewidth=2,
                        label="validation" if name.startswith("val_") else "train")
        ax.set(xlabel="epoch", ylabel=metric, title=metric.capitalize())
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
        ax.grid(alpha=0.3)
    figure.suptitle(title)
    return figure


def learning_curves_png(path: Path, history: dict[str, Sequence[float]], title: str) -> Path:
    return save_figure(learning_curves_figure(history, title), path)
