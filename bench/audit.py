"""The audit's label model on a real dataset: the flipped labels it finds, and the audit's time against cold
extraction, both measured in one run.

    python -m bench.audit [--data DIR] [--seeds 0 1 2] [--flip 0.04] [--audits 3] [--set KEY=VALUE ...]
                          [--work DIR] [--out bench/figures/audit-labels-DATE.json]

1. Time, in a fresh project folder under --work with an empty feature cache: `ffx extract` (cold: every image
   through the backbone), then `ffx audit` --audits times, each its own process as a user runs it, one after the
   other on this machine. The ratio is the median audit's wall time over the extraction's.
2. Flipped labels: per injection seed, --flip of the train images get another class's label, in memory (the
   stored features and the image files stay as they are: the label model reads labels, never files). The audit
   (components.audit.findings.audit_features) then runs on those labels once per label model in MODELS. Per run:
   recall and precision in the top N of the audit's ranking (N the number of flips, so the two are equal),
   cleanlab's flagged count and the flips among them, the label model's out-of-fold accuracy against the true
   labels and against the given ones, and its seconds. Test images never enter the label model.
--set changes a param of the project (as `ffx --set` does), e.g. the backbone: `--set backbone.name=vgg19
--set backbone.weights=imagenet` for the recipe's base where its weights can be had.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bench.common import FACES, REPO, about, ffx, log  # noqa: E402

# (audit.label_features, audit.label_c): the default, the penalties on either side of it, and the audit space.
MODELS = (("search", 0.001), ("search", 0.0003), ("search", 0.003), ("space", 0.1), ("space", 0.01))


def project(work: Path, data: Path, values: list[str]) -> tuple[Path, list[str]]:
    """A project folder with this repository's params.yaml and an empty feature cache of its own; `values`: params
    set on top (KEY=VALUE)."""
    folder = work / "project"
    shutil.rmtree(folder, ignore_errors=True)  # a cold extraction: nothing cached from an earlier run
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text((REPO / "params.yaml").read_text())
    return folder, [f"data.root={data}", f"features.cache_dir={folder / 'feature-cache'}", *values]


def timing(folder: Path, overrides: list[str], audits: int) -> dict:
    extract = ffx(folder, "extract", overrides)
    audit = [ffx(folder, "audit", overrides) for _ in range(audits)]
    median = statistics.median(audit)
    return {"extract_cold_s": round(extract, 2), "audit_s": [round(s, 2) for s in audit],
            "audit_median_s": round(median, 2), "audit_over_extract": round(median / extract, 4)}


def flipped(train, fraction: float, seed: int):
    """(train with `fraction` of its images given another class at random, the flipped image indices)."""
    import numpy as np

    from components.audit.findings import image_rows

    rng = np.random.default_rng(seed)
    images = image_rows(train)
    chosen = np.sort(rng.choice(images, int(round(fraction * images)), replace=False))
    new_label = (train.labels[chosen] + rng.integers(1, train.num_classes, len(chosen))) % train.num_classes
    image_labels = train.labels[:images].copy()
    image_labels[chosen] = new_label
    # An augmented view carries its image's label: rows 0..images-1 are the images, `source` maps every row to one.
    labels = image_labels if train.source is None else image_labels[train.source]
    return dataclasses.replace(train, labels=labels), chosen


def label_run(config, splits: dict, fraction: float, seed: int, features: str, c: float) -> dict:
    from components.audit.findings import audit_features

    train, flips = flipped(splits["train"], fraction, seed)
    settings = config.audit.model_copy(update={"label_features": features, "label_c": c})
    started = time.perf_counter()
    audit = audit_features({**splits, "train": train}, settings)
    seconds = time.perf_counter() - started
    top = set(audit.label_ranking()[:len(flips)])  # train rows lead `audit.paths`: a row is its train index
    flagged = audit.flagged_labels()
    true_labels = audit.labels.copy()
    true_labels[flips] = splits["train"].labels[flips]
    found = len(top & set(flips.tolist()))
    return {"seed": seed, "label_features": features, "label_c": c, "flips": len(flips),
            "recall_at_n": round(found / len(flips), 4), "precision_at_n": round(found / len(flips), 4),
            "flagged": len(flagged), "flagged_flips": len(set(flagged) & set(flips.tolist())),
            "oof_accuracy_true": round(audit.label_issues.accuracy(true_labels[audit.labelled]), 4),
            "oof_accuracy_given": round(audit.label_issues.accuracy(audit.labels[audit.labelled]), 4),
            "audit_features_s": round(seconds, 2)}


def summary(runs: list[dict]) -> dict:
    """Per label model: recall at N per seed, the most flagged against twice the flips, the mean accuracy."""
    out = {}
    for features, c in MODELS:
        group = [r for r in runs if r["label_features"] == features and r["label_c"] == c]
        if group:
            out[f"{features} C={c}"] = {
                "recall_at_n": [r["recall_at_n"] for r in group],
                "min_recall_at_n": min(r["recall_at_n"] for r in group),
                "flagged": [r["flagged"] for r in group], "twice_flips": 2 * group[0]["flips"],
                "oof_accuracy_true": round(statistics.mean(r["oof_accuracy_true"] for r in group), 4),
                "audit_features_s": round(statistics.median(r["audit_features_s"] for r in group), 2)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=FACES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--flip", type=float, default=0.04)
    parser.add_argument("--audits", type=int, default=3)
    parser.add_argument("--set", dest="values", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "audit")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    header = about("bench.audit", argv)
    folder, overrides = project(args.work.resolve(), args.data.resolve(), args.values)
    log("== cold extraction, then the audit")
    times = timing(folder, overrides, args.audits)
    log(json.dumps(times))

    from components.audit.findings import image_rows
    from components.config import load_config
    from components.data.dataset import SPLITS
    from components.features.identity import load_split_features

    config = load_config(folder / "params.yaml", overrides)
    splits = {name: load_split_features(config, name) for name in SPLITS}
    runs = []
    for seed in args.seeds:
        for features, c in MODELS:
            runs.append(label_run(config, splits, args.flip, seed, features, c))
            log(json.dumps(runs[-1]))
    out = args.out or REPO / "bench" / "figures" / f"audit-labels-{time.strftime('%Y-%m-%d')}.json"
    figures = {"about": header, "data": str(args.data), "settings": args.values, "flip": args.flip,
               "images": {name: image_rows(s) for name, s in splits.items()}, "timing": times, "runs": runs,
               "summary": summary(runs)}
    out.write_text(json.dumps(figures, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
