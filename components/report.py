"""What a run is reported as: the search's trial comparison, the evaluation plots and the model card."""
from __future__ import annotations

import datetime
from pathlib import Path

import h5py
import numpy as np
import yaml

from components import plots
from components.config import Config
from components.evaluate import roc_auc
from components.features import FeatureSet, read_attrs
from components.files import write_text_atomic
from components.hypermodel import HP_NAMES
from components.images import ImageReadError, load_rgb
from components.runs import maximises, metric_histories, search_trials, write_trial_table
from components.tracking import git_commit, setup_mlflow

MODEL_CARD_FILE = "model_card.md"
ERROR_GRID_SIZE = 12      # images in the confidently-wrong grid
ERROR_IMAGE_PIXELS = 128  # each shown at this size
BOOTSTRAP_SAMPLES = 1000


def write_search_report(config: Config, parent_run_id: str) -> list[Path]:
    """Trial comparison read back from MLflow: parallel coordinates, objective by trial, trial table (CSV + HTML)
    and the best trial's learning curves, under reports/search/."""
    client, experiment_id = setup_mlflow(config, create=False)
    trials = search_trials(client, experiment_id, parent_run_id)
    objective = config.tuner.objective
    maximise = maximises(objective)
    out = config.reports.dir / "search"
    table_csv, table_html = out / "trials.csv", out / "trials.html"
    write_trial_table(table_csv, table_html, trials, f"Trials of search {parent_run_id}")
    paths = [
        plots.parallel_coordinates_png(out / "parallel_coordinates.png",
                                       [{"params": t.params, "score": t.score} for t in trials], HP_NAMES,
                                       objective, maximise),
        plots.objective_by_trial_png(out / "objective_by_trial.png", [t.score for t in trials], objective, maximise),
    ]
    best_id = client.get_run(parent_run_id).data.tags.get("best_trial_id")
    best = next((t for t in trials if t.trial_id == best_id), None)
    history = metric_histories(client, best.run_id) if best else {}
    paths.append(plots.learning_curves_png(out / "learning_curves.png", history,
                                           f"Learning curves of the best trial ({best_id or 'none'})"))
    return [*paths, table_csv, table_html]


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


def wilson_interval(successes: int, total: int) -> tuple[float, float]:
    """95% confidence interval of a proportion; sound for small test sets and accuracies near 0 or 1."""
    from scipy.stats import binomtest

    if total == 0:
        return 0.0, 1.0
    interval = binomtest(successes, total).proportion_ci(method="wilson")
    return float(interval.low), float(interval.high)


def bootstrap_auc_interval(labels: np.ndarray, probabilities: np.ndarray, seed: int = 0,
                           samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float] | None:
    """Percentile 95% interval of ROC AUC over resamples of the test set (None when too few resamples are usable)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        index = rng.integers(0, len(labels), len(labels))
        if len(np.unique(labels[index])) == probabilities.shape[1]:  # AUC needs every class in the resample
            values.append(roc_auc(labels[index], probabilities[index]))
    if len(values) < samples // 2:
        return None
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def split_summary(path: Path) -> dict:
    """Counts per class and content hash of a feature file, without loading its features."""
    attrs = read_attrs(path)
    with h5py.File(path, "r") as handle:
        labels = handle["labels"][()]
    counts = np.bincount(labels, minlength=len(attrs["class_names"])).tolist()
    return {"counts": dict(zip(attrs["class_names"], counts)), "total": int(len(labels)),
            "content_hash": str(attrs.get("content_hash", "unknown"))}


def _dvc_lock_lines(root: Path) -> list[str]:
    lock = root / "dvc.lock"
    if not lock.is_file():
        return ["  - no `dvc.lock`: the stages were not run through `dvc repro`"]
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    lines = []
    for stage, entry in stages.items():
        for dep in entry.get("deps", []) or []:
            if str(dep.get("md5", "")).endswith(".dir"):  # a data folder (the dataset), not a code file
                lines.append(f"  - `{stage}` ← `{dep.get('path')}`: md5 `{dep['md5']}`")
        for out in entry.get("outs", []) or []:
            lines.append(f"  - `{stage}` → `{out.get('path')}`: md5 `{out.get('md5', '?')}`")
    return lines or ["  - `dvc.lock` lists no outputs yet"]


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def write_model_card(config: Config, metadata: dict, metrics: dict, test: FeatureSet, probabilities: np.ndarray,
                     command: str) -> Path:
    """reports/model_card.md: data, model, search, test metrics with 95% intervals, limits, reproduction."""
    splits = {name: split_summary(config.features.path(name)) for name in ("train", "valid", "test")}
    names = metadata["class_names"]
    search = metadata.get("search", {})
    backbone = metadata.get("backbone", {})
    correct = int(round(metrics["accuracy"] * metrics["count"]))
    low, high = wilson_interval(correct, metrics["count"])

    lines = [f"# Model card: {config.mlflow.registered_model}", "",
             f"Written by `ffx evaluate` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
             f"Classifies images into {len(names)} classes: {', '.join(f'`{n}`' for n in names)}.", "",
             "## Data", "", f"Dataset root: `{_relative(config.data.root, config.root)}`.", "",
             "| split | " + " | ".join(names) + " | total | content hash |",
             "|---|" + "---:|" * len(names) + "---:|---|"]
    for split, info in splits.items():
        lines.append(f"| {split} | " + " | ".join(str(info["counts"].get(n, 0)) for n in names)
                     + f" | {info['total']} | `{info['content_hash'][:16]}` |")
    lines += ["", "## Model", "",
              f"- Backbone: `{backbone.get('name')}`, weights `{backbone.get('weights')}` "
              f"(identity `{metadata.get('weights_id')}`), input {backbone.get('input_size')}×"
              f"{backbone.get('input_size')} pixels, features {metadata.get('feature_shape')}.",
              "- Head: standardised features → Dense(units, relu) → Dropout → [Dense(extra_units, relu)] → "
              + ("sigmoid" if len(names) == 2 else "softmax") + ".",
              "- Best hyperparameters: " + ", ".join(f"`{k}` = {v}" for k, v in
                                                     sorted(search.get("hyperparameters", {}).items())) + ".",
              "", "## Search", "",
              f"- {config.tuner.algorithm} search on `{search.get('objective')}`: {search.get('trials')} trials × "
              f"{config.tuner.executions_per_trial} execution(s), up to {config.train.epochs} epochs each.",
              f"- Best {search.get('objective')}: {search.get('score', float('nan')):.4f}; "
              f"wall time {search.get('seconds', 0):.0f} s.",
              f"- MLflow parent run: `{search.get('parent_run_id')}` (trial table and plots under `search/`).",
              "", "## Test metrics", "",
              f"{metrics['count']} test images. Intervals are 95%: Wilson for proportions, bootstrap "
              f"({BOOTSTRAP_SAMPLES} resamples) for ROC AUC.", "",
              "| metric | value | 95% interval |", "|---|---:|---|",
              f"| accuracy | {_percent(metrics['accuracy'])} | {_percent(low)} – {_percent(high)} |",
              f"| log loss | {metrics['loss']:.4f} | |"]
    if "roc_auc" in metrics:
        interval = bootstrap_auc_interval(test.labels, probabilities, seed=config.tuner.seed)
        shown = f"{interval[0]:.3f} – {interval[1]:.3f}" if interval else "too few images of each class"
        lines.append(f"| ROC AUC{' (one vs rest)' if len(names) > 2 else ''} | {metrics['roc_auc']:.3f} | {shown} |")
    lines += ["", "| class | precision | recall | recall 95% interval | F1 | support |",
              "|---|---:|---:|---|---:|---:|"]
    for name, row in metrics["per_class"].items():
        r_low, r_high = wilson_interval(int(round(row["recall"] * row["support"])), row["support"])
        lines.append(f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {r_low:.3f} – {r_high:.3f} | "
                     f"{row['f1']:.3f} | {row['support']} |")
    lines += ["", "Plots: `evaluation/confusion_matrix.png`, `roc.png`, `precision_recall.png`, `calibration.png`, "
              "`confident_errors.png`.", "", "## Known limits", ""]
    lines += _limits(splits, backbone, metrics)
    commit = git_commit(config.root)
    checkout = [f"git checkout {commit.removesuffix('-dirty')}"] if commit != "unknown" else []
    lines += ["", "## Reproduce", "",
              f"- Code: git commit `{commit}`" + (" (uncommitted changes)." if commit.endswith("-dirty") else "."),
              f"- Parameters: `{_relative(config.source, config.root)}`.",
              f"- Command that wrote this card: `{command}`.",
              "- Data and outputs (`dvc.lock`):", *_dvc_lock_lines(config.root), "",
              "```bash", *checkout, "dvc repro            # or: ffx extract && ffx tune && ffx evaluate", "```", ""]
    path = config.reports.dir / MODEL_CARD_FILE
    write_text_atomic(path, "\n".join(lines))
    return path


def _limits(splits: dict, backbone: dict, metrics: dict) -> list[str]:
    train = splits["train"]["counts"]
    largest, smallest = max(train.values()), min(train.values())
    ratio = largest / max(smallest, 1)
    size = backbone.get("input_size")
    limits = [f"- Class balance (train): largest class {largest} images, smallest {smallest} (ratio {ratio:.1f})."
              + (" Imbalanced: accuracy flatters the majority class; read per-class recall." if ratio >= 1.5 else ""),
              f"- Image size: every image is resized to {size}×{size} pixels without keeping its aspect ratio; detail "
              "smaller than a few pixels at that size is lost."]
    if metrics["count"] < 100:
        limits.append(f"- Small test set ({metrics['count']} images): the intervals above are wide.")
    if str(backbone.get("weights")) == "none":
        limits.append("- Backbone weights `none`: random features, fit for testing the pipeline, not for use.")
    limits.append("- Trained and tested only on images like this dataset's; other sources, classes or image "
                  "sizes are not covered.")
    return limits
