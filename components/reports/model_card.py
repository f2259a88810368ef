"""reports/model_card.md: the data, the model, the search, test metrics with 95% intervals, known limits and how to
reproduce the run (git commit, params, the data and outputs recorded in dvc.lock)."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import yaml

from components.audit.counts import AUDIT_FILE
from components.config import Config
from components.features.identity import feature_path, features_content_key
from components.features.store import FeatureSet, split_summary
from components.files import file_digest, write_text_atomic
from components.model.metrics import roc_auc, wilson_interval
from components.tracking import git_commit
from components.ui_links import experiment_link, run_link

MODEL_CARD_FILE = "model_card.md"
BOOTSTRAP_SAMPLES = 1000


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


def read_audit_counts(config: Config) -> dict | None:
    """metrics/audit.json, the counts `ffx audit` wrote, when there is one and it was written for these feature
    files (read, not declared: the evaluate stage does not wait for the audit); see stale_artifacts."""
    counts = _audit_file(config)
    return counts if counts is not None and counts.get("features") == features_content_key(config) else None


def _audit_file(config: Config) -> dict | None:
    try:
        return json.loads((config.metrics.dir / AUDIT_FILE).read_text())
    except (OSError, ValueError):
        return None


def stale_artifacts(config: Config) -> list[str]:
    """One line for each artefact the model card would quote that was made from other data than this run's, found
    by content key: it is left out of the card."""
    lines = []
    if _audit_file(config) is not None and read_audit_counts(config) is None:
        lines.append(f"{config.metrics.dir / AUDIT_FILE}: written for other feature files than "
                     f"{config.features.dir}/ holds (stale); not quoted. Run `ffx audit` for these.")
    if _lock_outputs_differ(config):
        lines.append(f"{config.root / 'dvc.lock'}: records other feature files than {config.features.dir}/ "
                     "holds (stale: these were not made by `dvc repro`); its hashes are not quoted.")
    return lines


def _audit_lines(counts: dict | None) -> list[str]:
    if counts is None:
        return ["- Data audit: none yet (`ffx audit`)."]
    lines = [f"- Data audit (`ffx audit`, {counts.get('images')} images): {counts.get('label_issues')} probable "
             f"label issue(s), {counts.get('leaks')} near-duplicate pair(s) across splits, "
             f"{counts.get('near_duplicates')} within a split, {counts.get('outliers')} outlier(s); "
             "see `reports/audit.html`."]
    if counts.get("leaks"):
        lines.append(f"- **Leak:** {counts['leaks']} test or valid image(s) have a near-copy in another split: "
                     "the test score is optimistic.")
    return lines


def _lock_stages(root: Path) -> dict | None:
    lock = root / "dvc.lock"
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else None


def _lock_outputs_differ(config: Config) -> bool:
    """dvc.lock's extract stage records feature files other than those in features.dir (by md5, as DVC hashes a
    file): the lock describes another run's data."""
    stages = _lock_stages(config.root) or {}
    for out in (stages.get("extract") or {}).get("outs", []) or []:
        path = config.root / str(out.get("path", ""))
        if path.suffix == ".h5" and (not path.is_file() or file_digest(path, "md5") != out.get("md5")):
            return True
    return False


def _dvc_lock_lines(config: Config) -> list[str]:
    stages = _lock_stages(config.root)
    if stages is None:
        return ["  - no `dvc.lock`: the stages were not run through `dvc repro`"]
    if _lock_outputs_differ(config):
        return ["  - `dvc.lock` records other data than this run's (stale): not quoted"]
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


def write_model_card(config: Config, experiment_id: str, metadata: dict, metrics: dict, test: FeatureSet,
                     probabilities: np.ndarray, command: str) -> Path:
    """reports/model_card.md: data, model, search, test metrics with 95% intervals, limits, reproduction.
    `experiment_id`: the search's MLflow experiment, for the links into the MLflow UI."""
    splits = {name: split_summary(feature_path(config, name)) for name in ("train", "valid", "test")}
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
              f"- MLflow parent run: `{search.get('parent_run_id')}` (trial table and plots under `search/`): "
              f"<{run_link(config, experiment_id, search.get('parent_run_id'))}>; every trial: "
              f"<{experiment_link(config, experiment_id)}>.",
              *_finetune_lines(metadata.get("finetune"), metrics), "", "## Test metrics", "",
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
    lines += _selection_lines(config)
    lines += _audit_lines(read_audit_counts(config))
    commit = git_commit(config.root)
    checkout = [f"git checkout {commit.removesuffix('-dirty')}"] if commit != "unknown" else []
    lines += ["", "## Reproduce", "",
              f"- Code: git commit `{commit}`" + (" (uncommitted changes)." if commit.endswith("-dirty") else "."),
              f"- Parameters: `{_relative(config.source, config.root)}`.",
              f"- Command that wrote this card: `{command}`.",
              "- Data and outputs (`dvc.lock`):", *_dvc_lock_lines(config), "",
              "```bash", *checkout, "dvc repro  # or: ffx extract && ffx tune && ffx finetune && ffx evaluate",
              "```", ""]
    path = config.reports.dir / MODEL_CARD_FILE
    write_text_atomic(path, "\n".join(lines))
    return path


def _finetune_lines(decision: dict | None, metrics: dict) -> list[str]:
    """The finetune stage's decision: both validation scores and which model these test metrics are of."""
    if not decision:
        return []
    lines = ["", "## Fine-tuning", ""]
    if not decision.get("enabled"):
        return lines + ["- Off (`finetune.enabled: false`): the head alone is scored and registered."]
    finetuned = decision.get("finetuned_score")
    return lines + [
        f"- Backbone layers after `{decision['boundary']}` trained with the head, from features cached at that "
        f"boundary: {decision['epochs_run']} epoch(s), best epoch {decision['best_epoch']}"
        + (", stopped early." if decision.get("stopped_early") else "."),
        f"- Validation `{decision['objective']}` on the {decision.get('decision_images', '?')} valid images held "
        f"out for decisions (seen by neither the search nor early stopping): head alone {decision['head_score']:.4f}, "
        "fine-tuned " + ("none" if finetuned is None else f"{finetuned:.4f}") + f"; kept: **{decision['kept']}** "
        "(the metrics below are of that model).",
        *_paired_test_line(metrics),
        f"- MLflow run: `{decision.get('run_id')}` (per-epoch metrics).",
    ]


def _paired_test_line(metrics: dict) -> list[str]:
    if "head_accuracy" not in metrics or "finetuned_accuracy" not in metrics:
        return []
    paired = metrics.get("paired_test", {})
    intervals = {name: metrics.get(f"{name}_accuracy_ci95", [float("nan")] * 2) for name in ("head", "finetuned")}
    return [f"- Test accuracy of both, for the record (the choice above is made on validation only): head alone "
            f"{metrics['head_accuracy']:.4f} ({_interval(intervals['head'])}), fine-tuned "
            f"{metrics['finetuned_accuracy']:.4f} ({_interval(intervals['finetuned'])}); McNemar's exact test on "
            f"the same {paired.get('images')} images: {paired.get('only_head_right')} right by the head alone, "
            f"{paired.get('only_finetuned_right')} by the fine-tuned model alone, "
            f"p = {paired.get('p_value', 1.0):.3g}."]


def _interval(bounds: list[float]) -> str:
    return f"95% interval {bounds[0]:.4f} – {bounds[1]:.4f}"


def _selection_lines(config: Config) -> list[str]:
    """How the registered champion is chosen, and what that does to its test score."""
    if config.registry.compare_split == "test":
        return ["- **Champion chosen on test** (`registry.compare_split: test`): a version takes the alias when it "
                "scores better on these test images, so over many runs the champion's test score is the best of "
                "many tries on them and biased upward. `valid` (the default) keeps test for the record."]
    return [f"- The champion is chosen on the valid images held out for decisions (`tuner.decision_fraction` "
            f"{config.tuner.decision_fraction}), champion and challenger scored on the same images when this "
            "version was registered; test is read once, for these metrics."]


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
