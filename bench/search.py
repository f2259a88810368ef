"""Heads trained together (tuner.parallel_heads) against one at a time, measured in one run:

    python -m bench.search [--trials 32] [--seeds 0 1 2] [--data DIR] [--out bench/results/search.json]
                           [--only heads]

1. Heads per compiled graph: milliseconds per head-epoch of the grouped trainer at 1, 2, 4 and 8 heads, with
   and without XLA, on the real features — what the default `tuner.parallel_heads` is set from.
2. The same search (same space, data, seeds and trial budget) with `parallel_heads: 1` (one head at a time)
   and with the default, for each seed, the order alternating so that a busy machine slows both alike.
   Reported: wall time, best validation score and the best head's test accuracy; the wall-time ratio and the
   means over seeds.
3. Each search against its bound from arithmetic (bench.limits): its trials' matmul FLOPs (each trial's sizes and
   the epochs its executions trained, read from its MLflow run) at the float32 matmul peak timed right after it;
   reported as the fraction of the bound's speed the search reaches.

`--only heads` measures part 1 alone.

Features: the face dataset (VGG16 `hed-vgg16`, 150 px, extract.precision as the defaults say) extracted once
through the pipeline into a feature cache kept under bench/results/, so a re-run extracts nothing.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import FACES, REPO, about, log
from bench.limits import logged_trials, matmul_peak, search_flops

HEADS = (1, 2, 4, 8)


def project(work: Path, data: Path, trials: int, seed: int, heads: int, cache: Path):
    from components.config import load_config, write_params

    folder = work / f"seed{seed}-heads{heads}"
    folder.mkdir(parents=True, exist_ok=True)
    params = write_params(folder / "params.yaml", {
        "data": {"root": str(data)}, "backbone": {"name": "vgg16", "weights": "hed-vgg16"},
        "features": {"cache_dir": str(cache)}, "tuner": {"max_trials": trials, "seed": seed, "parallel_heads": heads},
        "mlflow": {"experiment": folder.name}})
    return load_config(params)


def grouped_epoch_ms(train, valid, config, heads: int, epochs: int, jit: bool = True) -> float:
    """ms per head-epoch of `heads` heads of the space's largest size trained in one HeadGroup (validation and
    best-epoch bookkeeping included, as in a search; the first epoch, which traces and compiles, left out)."""
    from components.search.head_group import HeadGroup, HeadSpec
    from components.search.space import feature_statistics, standardise

    statistics = feature_statistics(train)
    data = (standardise(train.features, statistics), train.labels, standardise(valid.features, statistics),
            valid.labels)
    space = config.space
    group = HeadGroup(heads, data[0].shape[1], train.num_classes, max(space.units), max(space.extra_units),
                      config.train.learning_rate, config.train.batch_size, jit_compile=jit)
    specs = [HeadSpec(max(space.units), 0.5, 0, seed) for seed in range(heads)]
    group.train(specs, *data, 1, 0, "val_accuracy", 0)  # compile
    started = time.perf_counter()
    group.train(specs, *data, epochs, 0, "val_accuracy", 1)
    return (time.perf_counter() - started) / epochs / heads * 1000


def heads_per_graph(train, valid, config, epochs: int) -> dict:
    """ms per head-epoch of HeadGroup by heads per graph, with and without XLA."""
    figures = {}
    for jit in (True, False):
        for heads in HEADS:
            ms = figures[f"{'xla' if jit else 'plain'}_{heads}"] = grouped_epoch_ms(train, valid, config, heads,
                                                                                    epochs, jit)
            log(f"  {'XLA  ' if jit else 'plain'} {heads} head(s) per graph: {ms:.0f} ms per head-epoch")
    return figures


def one_search(config) -> dict:
    from components.features.identity import load_split_features
    from components.model.metrics import class_probabilities
    from components.search.tuner import run_search

    train, valid = load_split_features(config, "train"), load_split_features(config, "valid")
    test = load_split_features(config, "test")
    started = time.perf_counter()
    result = run_search(config, train, valid)
    seconds = time.perf_counter() - started
    accuracy = float((class_probabilities(result.model, test.features).argmax(axis=1) == test.labels).mean())
    flops = search_flops(logged_trials(config, result.parent_run_id), train.features.shape[1], train.num_classes,
                         len(train.labels), len(valid.labels))
    bound = flops / matmul_peak("float32")  # the peak timed beside the search it bounds
    return {"seconds": seconds, "best_valid": result.score, "test_accuracy": accuracy,
            "best": result.hyperparameters, "trials": len(result.trials), "gflops": flops / 1e9,
            "bound_s": bound, "fraction_of_bound": bound / seconds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--graph-epochs", type=int, default=10, help="epochs timed per heads-per-graph setting")
    parser.add_argument("--data", type=Path, default=FACES)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "search.json")
    parser.add_argument("--only", choices=["heads"], help="heads: part 1 alone (heads per compiled graph)")
    args = parser.parse_args(argv)
    provenance = about("bench.search", argv)
    from components.runtime import quiet_tensorflow

    quiet_tensorflow()
    from components.config import default_params
    from components.features.identity import load_split_features
    from components.runtime import cpu_flags
    from components.stages.extract import extract_stage

    default_heads = default_params()["tuner"]["parallel_heads"]
    searched = [] if args.only == "heads" else args.seeds  # the seeds part 2 searches with
    cache = args.out.parent / "feature-cache"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ffx-bench-search-") as folder:
        work = Path(folder)
        configs = {(seed, heads): project(work, args.data, args.trials, seed, heads, cache)
                   for seed in searched or args.seeds[:1] for heads in (1, default_heads)}
        first = configs[(args.seeds[0], 1)]
        log(f"data: {args.data}; extraction (cached by content under {cache}) ...")
        extract_stage(first)
        for config in configs.values():  # the other projects assemble the same features from the cache
            extract_stage(config)
        figures = {"about": provenance, "data": str(args.data), "trials": args.trials, "seeds": args.seeds,
                   "default_parallel_heads": default_heads, "precision": first.extract.precision,
                   "cpu_bfloat16": bool({"amx_bf16", "avx512_bf16"} & cpu_flags())}
        log("heads per compiled graph:")
        figures["heads_per_graph_ms"] = heads_per_graph(load_split_features(first, "train"),
                                                        load_split_features(first, "valid"), first,
                                                        args.graph_epochs)
        runs = []
        for index, seed in enumerate(searched):
            order = (1, default_heads) if index % 2 == 0 else (default_heads, 1)
            for heads in order:
                log(f"search: seed {seed}, parallel_heads {heads}, {args.trials} trials ...")
                row = {"seed": seed, "parallel_heads": heads, **one_search(configs[(seed, heads)])}
                log(f"  {row['seconds']:.0f}s, best valid {row['best_valid']:.4f}, test {row['test_accuracy']:.4f}; "
                    f"{row['gflops']:.1f} GFLOP: bound {row['bound_s']:.1f}s, {row['fraction_of_bound']:.3f} of its "
                    "speed")
                runs.append(row)
        figures["searches"] = runs
    if runs:
        figures["summary"] = summary(runs, default_heads)
    figures["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print_summary(figures)
    return figures


def summary(runs: list[dict], default_heads: int) -> dict:
    def mean(heads: int, key: str) -> float:
        return float(np.mean([r[key] for r in runs if r["parallel_heads"] == heads]))

    out = {heads: {key: mean(heads, key) for key in ("seconds", "best_valid", "test_accuracy", "fraction_of_bound")}
           for heads in (1, default_heads)}
    out["wall_time_ratio"] = out[1]["seconds"] / out[default_heads]["seconds"]
    out["best_valid_difference_points"] = 100 * (out[default_heads]["best_valid"] - out[1]["best_valid"])
    return out


def print_summary(figures: dict) -> None:
    s, heads = figures.get("summary"), figures["default_parallel_heads"]
    graph = figures["heads_per_graph_ms"]
    log("\nms per head-epoch: " + ", ".join(f"{k.replace('_', ' ')} heads {v:.0f}" for k, v in graph.items()))
    if s is None:  # --only heads
        return
    log(f"{figures['trials']}-trial search over seeds {figures['seeds']} (means):")
    for h in (1, heads):
        log(f"  parallel_heads {h}: {s[h]['seconds']:.0f}s, best valid {s[h]['best_valid']:.4f}, "
            f"test {s[h]['test_accuracy']:.4f}, {s[h]['fraction_of_bound']:.3f} of the FLOPs bound's speed")
    log(f"  wall-time ratio {s['wall_time_ratio']:.2f}x (target >= 2.5); best valid {heads} vs 1: "
        f"{s['best_valid_difference_points']:+.1f} points (target within 1)")


if __name__ == "__main__":
    main()
