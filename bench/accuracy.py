"""Accuracy grid: pooling x augmentation copies x test-time augmentation, pretrained and random VGG16, 3 seeds.

    python -m bench.accuracy [--quick] [--data DIR] [--out bench/results/accuracy] [--docs]

Every image goes through the backbone once per weights setting, as the pipeline does it (`extract_stage`, the
feature cache, `test_flip.h5`); avg / max / avg+max features are derived from the stored flattened 4x4x512
map with the same function `backbone.pooling` uses, so one extraction serves every pooling. Each
(weights, pooling, copies, seed) cell runs the real search (`run_search`: KerasTuner + MLflow in the work
folder) with a fixed small budget and is scored on the test split without and with TTA. Cells are appended to
`cells.jsonl` as they finish, so a stopped run resumes and a partial grid still gives a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from bench.common import FACES, REPO, about, subset_project  # noqa: E402

README_START, README_END = "<!-- accuracy-grid:start -->", "<!-- accuracy-grid:end -->"
WEIGHTS_LABEL = {"hed-vgg16": "hed-vgg16 (pretrained)", "none": "random", "imagenet": "ImageNet"}


@dataclass(frozen=True)
class Grid:
    weights: tuple[str, ...]
    poolings: tuple[str, ...]
    copies: tuple[int, ...]
    seeds: tuple[int, ...]
    trials: int            # search budget per cell: trials x epochs, one execution each
    epochs: int
    per_class: int         # images per class and split (0: all)


FULL = Grid(weights=("hed-vgg16", "none"), poolings=("flatten", "avg", "max", "avg+max"), copies=(0, 1),
            seeds=(0, 1, 2), trials=3, epochs=20, per_class=0)
QUICK = Grid(weights=("hed-vgg16",), poolings=("flatten", "avg+max"), copies=(0, 1), seeds=(0,), trials=2,
             epochs=10, per_class=40)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def make_config(work: Path, data: Path, weights: str, copies: int, grid: Grid, seed: int = 0,
                features: str = "features"):
    """A params file over the packaged defaults, everything inside `work`; loaded as the pipeline loads it."""
    from components.config import load_config, write_params

    return load_config(write_params(work / f"params-{weights}-{copies}-{seed}.yaml", {
        "data": {"root": str(data)},
        "backbone": {"name": "vgg16", "weights": weights, "input_size": 150, "pooling": "flatten", "layer": "last"},
        "extract": {"augment": {"copies": copies}},
        "features": {"dir": f"{features}-{weights}", "cache_dir": "cache"},
        "predict": {"tta": True},
        "tuner": {"algorithm": "bayesian", "max_trials": grid.trials, "executions_per_trial": 1, "seed": seed,
                  "directory": "tuner"},
        "train": {"epochs": grid.epochs, "early_stopping_patience": 5},
        "mlflow": {"tracking_uri": "sqlite:///mlruns/mlflow.db", "artifact_location": "mlruns/artifacts",
                   "experiment": "accuracy-grid"}}))


def extract(work: Path, data: Path, weights: str, grid: Grid) -> dict:
    """Extract every feature file once per weights setting; returns seconds per part (cached parts: 0 + stored)."""
    from components.stages.extract import extract_stage

    timings_path = work / f"extraction-{weights}.json"
    if timings_path.is_file():
        return json.loads(timings_path.read_text())
    timings = {}
    config = make_config(work, data, weights, 0, grid)
    for name, result in extract_stage(config).items():
        timings[name] = {"seconds": result.seconds, "rows": result.count, "computed": result.computed}
        log(f"extract {weights} {name}: {result.count} rows, {result.computed} computed, {result.seconds:.0f}s")
    for copies in (c for c in grid.copies if c):
        # Same cache: the originals are found there, only the augmented views go through the backbone.
        config = make_config(work, data, weights, copies, grid, features=f"features-aug{copies}")
        result = extract_stage(config, splits=("train",))["train"]
        timings[f"views{copies}"] = {"seconds": result.seconds, "rows": result.count, "computed": result.computed}
        log(f"extract {weights} train + {copies} views: {result.computed} computed, {result.seconds:.0f}s")
    timings_path.write_text(json.dumps(timings, indent=1))
    return timings


def pooled(features, pooling: str, shape: tuple[int, ...]):
    """The same FeatureSet with `backbone.pooling` applied to its flattened maps; its key names the pooling."""
    from components.features.backbone import pooled_again

    attrs = dict(features.attrs, pooling=pooling, key=f"{features.attrs['key']}-{pooling}")
    return dataclasses.replace(features, features=pooled_again(features.features, shape, pooling), attrs=attrs)


def run_cell(work: Path, data: Path, weights: str, pooling: str, copies: int, seed: int, grid: Grid) -> dict:
    from components.features.identity import feature_path
    from components.features.store import read_features
    from components.model.metrics import evaluate_head
    from components.search.tuner import run_search

    config = make_config(work, data, weights, copies, grid, seed,
                         features=f"features-aug{copies}" if copies else "features")
    base = make_config(work, data, weights, 0, grid)
    shape = tuple(read_features(feature_path(base, "valid")).attrs["feature_shape"])
    train = pooled(read_features(feature_path(config, "train")), pooling, shape)
    valid, test, flipped = (pooled(read_features(feature_path(base, n)), pooling, shape)
                            for n in ("valid", "test", "test_flip"))
    search = run_search(config, train, valid)
    metrics, _ = evaluate_head(search.model, test, flipped)
    return {"weights": weights, "pooling": pooling, "copies": copies, "seed": seed,
            "accuracy": metrics["accuracy_without_tta"], "accuracy_tta": metrics["accuracy_with_tta"],
            "valid_score": search.score, "tuning_seconds": search.seconds, "train_rows": len(train.labels),
            "features": int(train.features.shape[1]), "hyperparameters": search.hyperparameters}


def table(cells: list[dict], timings: dict[str, dict], grid: Grid) -> str:
    """Markdown: one row per (weights, pooling, copies, TTA), mean ± std over the seeds that finished."""
    lines = ["| weights | pooling | aug copies | TTA | test accuracy (mean ± std) | seeds | extraction s | "
             "tuning s (mean) |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for weights in grid.weights:
        parts = timings.get(weights, {})
        for pooling in grid.poolings:
            for copies in grid.copies:
                done = [c for c in cells if (c["weights"], c["pooling"], c["copies"]) == (weights, pooling, copies)]
                for tta in (False, True):
                    names = ["train", "valid", "test"] + (["test_flip"] if tta else []) + (
                        [f"views{copies}"] if copies else [])
                    seconds = sum(parts[n]["seconds"] for n in names if n in parts)
                    if not done:
                        accuracy, tuning = "not run", "–"
                    else:
                        values = np.array([c["accuracy_tta" if tta else "accuracy"] for c in done]) * 100
                        spread = values.std(ddof=1) if len(values) > 1 else 0.0  # sample std over seeds
                        accuracy = f"{values.mean():.1f}% ± {spread:.1f}"
                        tuning = f"{np.mean([c['tuning_seconds'] for c in done]):.0f}"
                    lines.append(f"| {WEIGHTS_LABEL.get(weights, weights)} | {pooling} | {copies} | "
                                 f"{'on' if tta else 'off'} | {accuracy} | {len(done)}/{len(grid.seeds)} | "
                                 f"{seconds:.0f} | {tuning} |")
    sizes = {w: t for w, t in timings.items() if "train" in t}
    caption = (f"VGG16 at 150 px; search: {grid.trials} trials x up to {grid.epochs} epochs per cell; images: "
               + "; ".join(f"{WEIGHTS_LABEL.get(w, w)} {t['train']['rows']} train / {t['valid']['rows']} valid / "
                           f"{t['test']['rows']} test" for w, t in sizes.items())
               + ". Extraction seconds: train + valid + test, plus the views and the mirrored test split where used.")
    return caption + "\n\n" + "\n".join(lines)


def write_readme(text: str, readme: Path = REPO / "docs" / "accuracy.md") -> None:
    """Replace the block between the accuracy-grid markers in docs/accuracy.md (atomically)."""
    from components.files import write_text_atomic

    content = readme.read_text()
    start, end = content.find(README_START), content.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no {README_START} ... {README_END} block to fill")
    write_text_atomic(readme, content[:start + len(README_START)] + "\n" + text + "\n" + content[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, two poolings, 40 images per class")
    parser.add_argument("--data", type=Path, default=FACES)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "accuracy")
    parser.add_argument("--docs", action="store_true", help="also write the table into docs/accuracy.md")
    parser.add_argument("--weights", action="append", choices=tuple(WEIGHTS_LABEL),
                        help="only these weights settings (repeatable; default: hed-vgg16 and none; imagenet "
                             "needs the download or the file in ~/.keras/models)")
    parser.add_argument("--per-class", type=int, help="images per class and split (default: the grid's)")
    args = parser.parse_args(argv)
    provenance = about("bench.accuracy", argv)
    grid = QUICK if args.quick else FULL
    if args.weights:
        grid = dataclasses.replace(grid, weights=tuple(args.weights))
    name = "quick" if args.quick else "full"
    if args.per_class is not None:
        grid = dataclasses.replace(grid, per_class=args.per_class)
        name += f"-{args.per_class}-per-class"  # other data: its own work folder, cache and results
    work = (args.out / name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not (args.data / "train").is_dir():
        raise SystemExit(f"{args.data}: no train/ folder (the face dataset, see docs/accuracy.md)")
    data = subset_project(args.data.resolve(), work, grid.per_class)
    log(f"grid {dataclasses.asdict(grid)} on {args.data}; work folder {work}")
    cells_path = work / "cells.jsonl"
    cells = [json.loads(line) for line in cells_path.read_text().splitlines()] if cells_path.is_file() else []
    timings: dict[str, dict] = {}
    for weights in grid.weights:
        timings[weights] = extract(work, data, weights, grid)
        for seed in grid.seeds:  # seed-major: a partial run has every configuration for its first seeds
            for pooling in grid.poolings:
                for copies in grid.copies:
                    if any((c["weights"], c["pooling"], c["copies"], c["seed"]) == (weights, pooling, copies, seed)
                           for c in cells):
                        continue
                    cell = run_cell(work, data, weights, pooling, copies, seed, grid)
                    cells.append(cell)
                    with open(cells_path, "a") as handle:
                        handle.write(json.dumps(cell) + "\n")
                    log(f"{weights} {pooling} copies={copies} seed={seed}: test {cell['accuracy']:.4f}, "
                        f"with TTA {cell['accuracy_tta']:.4f} ({cell['tuning_seconds']:.0f}s tuning)")
                    _write_outputs(work, cells, timings, grid, provenance)
    text = _write_outputs(work, cells, timings, grid, provenance)
    print(text)
    if args.docs:
        write_readme(text)
    return 0


def _write_outputs(work: Path, cells: list[dict], timings: dict, grid: Grid, provenance: dict) -> str:
    from components.files import write_json_atomic, write_text_atomic

    text = table(cells, timings, grid)
    write_text_atomic(work / "accuracy.md", text + "\n")
    write_json_atomic(work / "accuracy.json", {"about": provenance, "grid": dataclasses.asdict(grid),
                                               "timings": timings, "cells": cells})
    return text


if __name__ == "__main__":
    raise SystemExit(main())
