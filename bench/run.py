"""Side-by-side benchmark, in one process run: the original recipe vs the ffx path vs the limits (extraction: the
batched forward pass alone, in float32 and in the precision `auto` resolves to; extraction, head epoch and search:
their matmul FLOPs at the machine's matmul peak, a large tf.matmul timed in the same run: bench.limits).

    python -m bench.run [--quick] [--out bench/results/bench.json] [--data DIR]

Timed paths run in interleaved rounds on the same images, so a busy neighbour on the machine slows every
path alike and the printed ratios stay meaningful even when absolute figures do not.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from bench.common import FACES, REPO, about, cpu_model, log, subset_project  # noqa: E402
from bench.limits import (  # noqa: E402
    backbone_forward_flops,
    head_epoch_flops,
    MATMUL_SIZE,
    head_layers,
    logged_trials,
    matmul_peaks,
    search_flops,
)

TARGETS = {"extract_vs_baseline": 2.3, "extract_vs_limit": 0.9, "head_epoch_speedup": 4.0,
           "cache_hit_fraction": 0.10, "rss_growth_4n": 1.2, "auto_vs_fp32": 2.3, "auto_vs_baseline": 4.5,
           "auto_vs_limit": 0.9}


@dataclass(frozen=True)
class Sizes:
    extract_images: int        # images each extraction path runs on (the same images for every path)
    rounds: int                # interleaved rounds over those images
    rss_images: int            # N for the peak-RSS check, run at N and 4N
    pipeline_per_class: int    # images per class and split in the cache-check project; 0: the whole dataset
    head_rows: int             # train rows for head timing (extracted rows repeated when fewer were extracted)
    head_valid_rows: int       # valid rows, likewise
    head_epochs: int
    search_trials: int         # trials of the small search in the cache-check pipeline
    head_batch_size: int = 32  # the recipe's


QUICK = Sizes(extract_images=64, rounds=2, rss_images=32, pipeline_per_class=8, head_rows=1611, head_valid_rows=346,
              head_epochs=10, search_trials=2)  # head rows: the face dataset's train and valid sizes
FULL = Sizes(extract_images=256, rounds=2, rss_images=128, pipeline_per_class=0, head_rows=0, head_valid_rows=0,
             head_epochs=50, search_trials=4)


# ---------------------------------------------------------------------------------------------- data

def source_dataset(data: Path | None, work: Path, sizes: Sizes) -> tuple[Path, str]:
    """The face dataset when present, otherwise generated demo images (enough for every section)."""
    for candidate in ([data] if data else [FACES]):
        if candidate and (candidate / "train").is_dir():
            return candidate, str(candidate)
    from components.data.sampledata import make_demo_dataset

    per_class = max(sizes.extract_images, 4 * sizes.rss_images) // 2
    evaluation = max(sizes.pipeline_per_class, 8)
    root = work / "generated"
    make_demo_dataset(root, {"train": max(per_class, evaluation), "valid": evaluation, "test": evaluation})
    return root, "generated (components.sampledata)"


def train_records(root: Path, count: int):
    """`count` train images, classes interleaved, with the hashes the ffx path needs."""
    from components.data.dataset import Split, scan_split

    split = scan_split(root, "train")
    by_class = [[r for r in split.records if r.label == label] for label in range(len(split.class_names))]
    chosen = [r for group in zip(*by_class) for r in group][:count]
    if len(chosen) < count:
        raise SystemExit(f"{root}/train: {len(chosen)} images usable, {count} needed")
    return Split("train", split.root, split.class_names, tuple(chosen))


def write_bench_params(folder: Path, data_root: Path, backbone: dict, sizes: Sizes, batch_size: int) -> Path:
    from components.config import write_params

    return write_params(folder / "params.yaml", {
        "data": {"root": str(data_root)}, "backbone": backbone, "extract": {"batch_size": batch_size},
        "tuner": {"algorithm": "random", "max_trials": sizes.search_trials, "executions_per_trial": 1},
        "train": {"epochs": 5, "batch_size": sizes.head_batch_size}})


# ---------------------------------------------------------------------------------------------- extraction

def bench_extraction(split, backbones: dict, batch_size: int, rounds: int, work: Path) -> dict:
    """images/s of the recipe's per-image loop, the ffx extraction path (float32, and `auto` where it resolves to
    bfloat16) and the forward-pass limit of each precision timed; and the backbone's FLOPs per image."""
    from bench.baseline import baseline_extract
    from components.data.dataset import Split
    from components.features.extraction import decode_batch, extract_split

    fp32 = backbones["float32"]
    size = fp32.config.input_size
    max_pixels = 89478485
    records = list(split.records)
    chunk = len(records) // rounds
    chunks = [records[i * chunk:(i + 1) * chunk] for i in range(rounds)]
    decoded = [[decode_batch([r.path for r in c[i:i + batch_size]], size, max_pixels)
                for i in range(0, len(c), batch_size)] for c in chunks]

    def baseline(index: int, c) -> None:
        baseline_extract([r.path for r in c], [r.label for r in c], fp32.model, fp32.preprocess, size,
                         work / f"baseline-{index}.h5")

    def ffx(precision: str):
        def run(index: int, c) -> None:
            folder = work / f"ffx-{precision}-{index}"  # fresh output and feature cache: nothing is reused
            extract_split(Split("train", split.root, split.class_names, tuple(c)), backbones[precision],
                          folder / "train.h5", folder / "cache", batch_size, max_pixels)
        return run

    def limit(precision: str):
        def run(index: int, c) -> None:
            for batch in decoded[index]:
                backbones[precision].features(batch)
        return run

    paths = {"baseline": baseline, "ffx": ffx("float32"), "limit": limit("float32")}
    if "auto" in backbones:  # precision auto judged against its own forward pass (bfloat16 here)
        paths["ffx_auto"] = ffx("auto")
        paths["limit_auto"] = limit("auto")
    log("  warm-up (graph tracing, first predict) ...")
    baseline(-1, records[:1])
    for backbone in backbones.values():
        backbone.features(decoded[0][0])
    seconds = dict.fromkeys(paths, 0.0)
    names = list(paths)
    for index, c in enumerate(chunks):
        for name in names[index % len(names):] + names[:index % len(names)]:  # rotate the order every round
            started = time.perf_counter()
            paths[name](index, c)
            seconds[name] += time.perf_counter() - started
            log(f"  round {index + 1}/{rounds} {name}: {len(c) / (time.perf_counter() - started):.1f} images/s")
    count = chunk * rounds
    result = {f"{name}_images_per_s": count / s for name, s in seconds.items()}
    result["images"] = count
    result["ffx_vs_baseline"] = result["ffx_images_per_s"] / result["baseline_images_per_s"]
    result["ffx_vs_limit"] = result["ffx_images_per_s"] / result["limit_images_per_s"]
    if "ffx_auto_images_per_s" in result:
        result["auto_vs_fp32"] = result["ffx_auto_images_per_s"] / result["ffx_images_per_s"]
        result["auto_vs_baseline"] = result["ffx_auto_images_per_s"] / result["baseline_images_per_s"]
        result["auto_vs_limit"] = result["ffx_auto_images_per_s"] / result["limit_auto_images_per_s"]
    result["gflops_per_image"] = backbone_forward_flops(fp32.model) / 1e9
    return result


def extraction_bounds(extraction: dict, peak: dict) -> dict:
    """images/s the backbone's FLOPs allow at each precision's matmul peak (FLOP/s by dtype), and the float32
    forward pass as a fraction of its bound."""
    out = {f"bound_{dtype}_images_per_s": peak[dtype] / (1e9 * extraction["gflops_per_image"])
           for dtype in ("float32", "bfloat16")}
    out["limit_fraction_of_bound"] = extraction["limit_images_per_s"] / out["bound_float32_images_per_s"]
    return out


# ---------------------------------------------------------------------------------------------- cache

def bench_pipeline_cache(params_file: Path) -> tuple[dict, object, object]:
    """The extract + tune stages cold, then re-run on unchanged inputs (feature cache and finished search hit).
    Also returned: the config and the cold search's result."""
    from components.config import load_config
    from components.stages.extract import extract_stage
    from components.stages.tune import tune_stage

    config = load_config(params_file)
    timings = {}
    searches = []
    for run in ("cold", "rerun"):
        started = time.perf_counter()
        results = extract_stage(config)
        extracted = time.perf_counter()
        searches.append(tune_stage(config))
        finished = time.perf_counter()
        timings[run] = {"extract_s": extracted - started, "tune_s": finished - extracted,
                        "total_s": finished - started, "computed_images": sum(r.computed for r in results.values())}
        log(f"  {run}: extract {timings[run]['extract_s']:.1f}s ({timings[run]['computed_images']} images "
            f"computed), tune {timings[run]['tune_s']:.1f}s")
    timings["images"] = sum(r.count for r in results.values())
    timings["rerun_fraction"] = timings["rerun"]["total_s"] / timings["cold"]["total_s"]
    timings["extract_rerun_fraction"] = timings["rerun"]["extract_s"] / timings["cold"]["extract_s"]
    return timings, config, searches[0]


def search_bound(config, search, peak: dict) -> dict:
    """The cold search against its bound: its trials' matmul FLOPs (each trial's sizes and epochs, from its MLflow
    run) at the float32 matmul peak."""
    from components.features.identity import load_split_features

    train, valid = load_split_features(config, "train"), load_split_features(config, "valid")
    trials = logged_trials(config, search.parent_run_id)
    flops = search_flops(trials, train.features.shape[1], train.num_classes, len(train.labels), len(valid.labels))
    out = {"trials": len(trials), "epochs": sum(t["epochs"] for t in trials), "train_rows": len(train.labels),
           "valid_rows": len(valid.labels), "gflops": flops / 1e9, "search_s": search.seconds,
           "bound_s": flops / peak["float32"]}
    out["fraction_of_bound"] = out["bound_s"] / out["search_s"]
    log(f"  cold search: {out['trials']} trials, {out['epochs']} epochs, {out['gflops']:.3f} GFLOP: bound "
        f"{1000 * out['bound_s']:.2f} ms, search {out['search_s']:.1f}s")
    return out


# ---------------------------------------------------------------------------------------------- head

def head_data(config, rows: int, valid_rows: int, work: Path):
    """train/valid features of the pipeline run, rows repeated up to `rows` / `valid_rows` when fewer were extracted."""
    import h5py

    from components.features.identity import load_split_features
    from components.features.store import FeatureSet

    def repeated(data: FeatureSet, count: int) -> FeatureSet:
        if count <= len(data.labels):
            return data
        index = np.resize(np.arange(len(data.labels)), count)
        return FeatureSet(data.features[index], data.labels[index], [data.paths[i] for i in index],
                          data.class_names, data.attrs)

    train = repeated(load_split_features(config, "train"), rows)
    valid = repeated(load_split_features(config, "valid"), valid_rows)
    paths = {}
    for name, data in (("train", train), ("valid", valid)):  # the recipe's generator reads its own HDF5 file
        paths[name] = work / f"head-{name}.h5"
        with h5py.File(paths[name], "w") as store:
            store.create_dataset("features", data=data.features)
            store.create_dataset("labels", data=data.labels)
    return train, valid, paths


def bench_head(config, train, valid, paths: dict, epochs: int, work: Path, peak: dict) -> dict:
    """Same head (Dense 64 relu, Dropout 0.5, sigmoid, RMSprop) and data: the recipe's HDF5 generator fit vs
    the project's trainer (features in memory, epoch loop in one compiled graph), epoch time and a whole trial;
    and the epoch's bound: its matmul FLOPs at the float32 matmul peak `peak`."""
    import keras

    from bench.baseline import EpochTimer, baseline_fit, recipe_head
    from bench.search import grouped_epoch_ms
    from components.search.head_group import HeadGroup, HeadSpec
    from components.search.space import feature_statistics, standardise

    batch_size = config.train.batch_size
    statistics = feature_statistics(train) if config.train.normalize else None
    dim, classes = train.features.shape[1], train.num_classes

    def baseline_trial() -> tuple[float, list[float]]:
        started = time.perf_counter()
        model = recipe_head(dim, classes, config.train.learning_rate)  # the recipe's raw features
        timer = EpochTimer()
        baseline_fit(model, paths["train"], paths["valid"], batch_size, epochs, [timer])
        return time.perf_counter() - started, timer.seconds

    def project_epochs() -> tuple[float, list[float]]:
        """One head alone in the search's trainer (tuner.parallel_heads: 1)."""
        data = [standardise(s.features, statistics) if statistics is not None else s.features for s in (train, valid)]
        started = time.perf_counter()
        group = HeadGroup(1, dim, classes, 64, 0, config.train.learning_rate, batch_size)
        (run,) = group.train([HeadSpec(64, 0.5, 0, 0)], data[0], train.labels, data[1], valid.labels, epochs, 0,
                             config.tuner.objective, 0)
        return time.perf_counter() - started, run.epoch_seconds

    keras.utils.set_random_seed(0)
    result = {"train_rows": len(train.labels), "valid_rows": len(valid.labels), "features": dim, "epochs": epochs}
    fits = {"baseline": [], "ffx": []}
    for index in range(2):  # interleaved, the order swapped in the second round
        for name in (("baseline", "ffx") if index == 0 else ("ffx", "baseline")):
            seconds, epoch_seconds = baseline_trial() if name == "baseline" else project_epochs()
            fits[name].append((seconds, epoch_seconds))
            log(f"  {name} fit: {seconds:.1f}s, median epoch {1000 * np.median(epoch_seconds[1:]):.0f} ms")
    for name, runs in fits.items():
        # Steady-state epoch: the first epoch of a fit also traces the graph, counted in the fit time instead.
        result[f"{name}_epoch_ms"] = 1000 * float(np.median([s for _, e in runs for s in e[1:]]))
        result[f"{name}_fit_s"] = float(min(s for s, _ in runs))
    result["epoch_speedup"] = result["baseline_epoch_ms"] / result["ffx_epoch_ms"]
    # The search's default path: tuner.parallel_heads heads stepped together in one XLA-compiled graph.
    result["grouped_heads"] = heads = config.tuner.parallel_heads
    result["grouped_epoch_ms"] = grouped_epoch_ms(train, valid, config, heads, epochs)
    result["grouped_speedup"] = result["baseline_epoch_ms"] / result["grouped_epoch_ms"]
    log(f"  {heads} heads in one compiled graph: {result['grouped_epoch_ms']:.0f} ms per head-epoch")
    # The bound: the head's own arithmetic (grouped_epoch_ms times a head of the space's largest size, 64 units
    # as the recipe's; no extra layer in either) at the machine's float32 matmul peak.
    layers = head_layers(dim, classes, max(config.space.units), 0)
    result["gflops_per_epoch"] = head_epoch_flops(len(train.labels), len(valid.labels), layers) / 1e9
    result["bound_epoch_ms"] = 1000 * 1e9 * result["gflops_per_epoch"] / peak["float32"]
    result["ffx_fraction_of_bound"] = result["bound_epoch_ms"] / result["ffx_epoch_ms"]
    result["grouped_fraction_of_bound"] = result["bound_epoch_ms"] / result["grouped_epoch_ms"]
    log(f"  bound ({result['gflops_per_epoch']:.2f} GFLOP at the matmul peak): {result['bound_epoch_ms']:.1f} ms")
    result["fit_speedup"] = result["baseline_fit_s"] / result["ffx_fit_s"]
    result.update(bench_trial(config, train, valid, epochs, work, result["baseline_fit_s"]))
    return result


def bench_trial(config, train, valid, epochs: int, work: Path, baseline_trial_s: float) -> dict:
    """One real tuner trial (KerasTuner + MLflow run) of the same head; then the same with early stopping."""
    from components.search.tuner import run_search

    out = {}
    for label, patience in (("trial", 0), ("trial_early_stopping", config.train.early_stopping_patience)):
        trial_config = config.model_copy(update={
            "tuner": config.tuner.model_copy(update={"max_trials": 1, "executions_per_trial": 1,
                                                      "directory": work / f"tuner-{label}"}),
            "train": config.train.model_copy(update={"epochs": epochs, "early_stopping_patience": patience}),
            "space": config.space.model_copy(update={"units": [64], "dropout_min": 0.5, "dropout_max": 0.5,
                                                      "extra_units": []})})
        seen: list[dict] = []
        run_search(trial_config, train, valid, seen.append)
        out[f"ffx_{label}_s"] = float(seen[-1]["trial_seconds"])
        log(f"  tuner {label.replace('_', ' ')} (patience {patience}): {out[f'ffx_{label}_s']:.1f}s")
    out["baseline_trial_s"] = baseline_trial_s
    out["trial_speedup"] = baseline_trial_s / out["ffx_trial_s"]
    return out


# ---------------------------------------------------------------------------------------------- memory

def bench_rss(source: Path, backbone: dict, count: int, batch_size: int, work: Path) -> dict:
    """Peak RSS of extraction at N and 4N images, each in a fresh process (bench.rss)."""
    peaks = {}
    for images in (count, 4 * count):
        command = [sys.executable, "-m", "bench.rss", "--data", str(source), "--images", str(images),
                   "--batch-size", str(batch_size), "--out", str(work / f"rss-{images}"),
                   "--backbone", json.dumps(backbone)]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"bench.rss failed:\n{done.stderr[-3000:]}")
        peaks[images] = json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mb"]
        log(f"  {images} images: peak RSS {peaks[images]:.0f} MB")
    return {"n": count, "peak_rss_mb_n": peaks[count], "peak_rss_mb_4n": peaks[4 * count],
            "growth_4n": peaks[4 * count] / peaks[count]}


# ---------------------------------------------------------------------------------------------- report

def checks(figures: dict) -> dict:
    """Each target: its value and whether it is met. The `auto` ones exist only where auto is bfloat16: on a CPU
    without native bfloat16 auto is float32, the fp32 path itself (printed as N/A)."""
    e, h, c, m = figures["extraction"], figures["head"], figures["cache"], figures["rss"]
    result = {
        "extract_vs_baseline": (e["ffx_vs_baseline"], ">=", TARGETS["extract_vs_baseline"]),
        "extract_vs_limit": (e["ffx_vs_limit"], ">=", TARGETS["extract_vs_limit"]),
        # judged on the search's default path (several heads per graph); the one-head Keras path is printed too
        "head_epoch_speedup": (h["grouped_speedup"], ">=", TARGETS["head_epoch_speedup"]),
        "cache_hit_fraction": (c["rerun_fraction"], "<=", TARGETS["cache_hit_fraction"]),
        "rss_growth_4n": (m["growth_4n"], "<=", TARGETS["rss_growth_4n"]),
    }
    if "auto_vs_fp32" in e:
        result["auto_vs_fp32"] = (e["auto_vs_fp32"], ">=", TARGETS["auto_vs_fp32"])
        result["auto_vs_baseline"] = (e["auto_vs_baseline"], ">=", TARGETS["auto_vs_baseline"])
        result["auto_vs_limit"] = (e["auto_vs_limit"], ">=", TARGETS["auto_vs_limit"])
    return {name: {"value": v, "target": f"{op} {t}", "met": bool(v >= t if op == ">=" else v <= t)}
            for name, (v, op, t) in result.items()}


def print_table(figures: dict) -> None:
    e, h, c, m, s = figures["extraction"], figures["head"], figures["cache"], figures["rss"], figures["search"]
    peak = figures["matmul_peak_gflops"]
    rows = [("matmul peak (GFLOP/s)", f"float32, {MATMUL_SIZE}x{MATMUL_SIZE} tf.matmul", f"{peak['float32']:.1f}"),
            ("", "bfloat16, same", f"{peak['bfloat16']:.1f}"),
            ("extraction images/s", "baseline loop", f"{e['baseline_images_per_s']:.1f}"),
            ("", "ffx extract path", f"{e['ffx_images_per_s']:.1f}  ({e['ffx_vs_baseline']:.2f}x baseline, "
                                     f"{e['ffx_vs_limit']:.2f}x limit)"),
            ("", "limit: float32 forward pass only", f"{e['limit_images_per_s']:.1f}  "
                                                     f"({e['limit_fraction_of_bound']:.2f} of its bound)")]
    if "ffx_auto_images_per_s" in e:
        rows += [("", "ffx path, precision auto", f"{e['ffx_auto_images_per_s']:.1f}  ({e['auto_vs_fp32']:.2f}x "
                                                  f"fp32, {e['auto_vs_baseline']:.2f}x baseline, "
                                                  f"{e['auto_vs_limit']:.2f}x its limit)"),
                 ("", "limit: auto's forward pass only", f"{e['limit_auto_images_per_s']:.1f}")]
    else:
        rows.append(("", "ffx path, precision auto", "N/A: float32 here (no native bfloat16), the fp32 path"))
    rows += [("", f"bound: {e['gflops_per_image']:.2f} GFLOP/image, fp32",
              f"{e['bound_float32_images_per_s']:.1f}  (at the float32 matmul peak)"),
             ("", "bound: the same, bfloat16", f"{e['bound_bfloat16_images_per_s']:.1f}  (at the bfloat16 peak)")]
    rows += [("head epoch (ms)", "baseline HDF5 generator", f"{h['baseline_epoch_ms']:.0f}"),
             ("", "ffx, one head (parallel_heads 1)", f"{h['ffx_epoch_ms']:.0f}  ({h['epoch_speedup']:.1f}x faster)"),
             ("", f"ffx, {h['grouped_heads']} heads per graph, per head",
              f"{h['grouped_epoch_ms']:.0f}  ({h['grouped_speedup']:.1f}x faster)")]
    rows.append(("", f"bound: {h['gflops_per_epoch']:.2f} GFLOP at fp32 peak",
                 f"{h['bound_epoch_ms']:.1f}  (one head at {h['ffx_fraction_of_bound']:.2f} of the bound's speed, "
                 f"grouped at {h['grouped_fraction_of_bound']:.2f})"))
    rows += [(f"head trial, {h['epochs']} epochs (s)", "baseline fit", f"{h['baseline_trial_s']:.1f}"),
             ("", "ffx tuner trial (KerasTuner+MLflow)", f"{h['ffx_trial_s']:.1f}  ({h['trial_speedup']:.1f}x faster)"),
             ("", "  with early stopping", f"{h['ffx_trial_early_stopping_s']:.1f}"),
             ("pipeline extract+tune (s)", "cold", f"{c['cold']['total_s']:.1f}"),
             ("", "cache-hit re-run", f"{c['rerun']['total_s']:.1f}  ({100 * c['rerun_fraction']:.1f}% of cold)"),
             (f"cold search, {s['trials']} trials (s)", "run_search", f"{s['search_s']:.2f}"),
             ("", f"bound: {s['gflops']:.3f} GFLOP, {s['epochs']} epochs",
              f"{s['bound_s']:.5f}  ({s['fraction_of_bound']:.5f} of the bound's speed)"),
             ("extraction peak RSS (MB)", f"N={m['n']}", f"{m['peak_rss_mb_n']:.0f}"),
             ("", f"4N={4 * m['n']}", f"{m['peak_rss_mb_4n']:.0f}  ({m['growth_4n']:.2f}x)")]
    log("")
    for section, path, value in rows:
        log(f"{section:<28} {path:<36} {value}")
    log("")
    for name, check in figures["checks"].items():
        verdict = {True: "MET ", False: "MISS", None: "N/A "}[check["met"]]
        note = "; this CPU has no native bfloat16" if check["met"] is None else ""
        log(f"{verdict} {name:<22} {check['value']:.3f} (target {check['target']}{note})")


def measured_peak() -> dict:
    peak = matmul_peaks()
    log("  " + ", ".join(f"{dtype} {value / 1e9:.1f} GFLOP/s" for dtype, value in peak.items()))
    return peak


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a subset: finishes in under 3 minutes on 2 cores")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bench.json")
    parser.add_argument("--data", type=Path, default=None, help=f"dataset root (default: {FACES} if present)")
    parser.add_argument("--backbone", default="vgg19")
    parser.add_argument("--weights", default="none", help="speed does not depend on weights; none needs no download")
    parser.add_argument("--input-size", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-bfloat16", action="store_true", help="skip the extract.precision: auto path")
    parser.add_argument("--sizes", type=json.loads, default=None, help=argparse.SUPPRESS)  # tests: tiny sizes
    args = parser.parse_args(argv)
    provenance = about("bench.run", argv)
    sizes = Sizes(**{**asdict(QUICK if args.quick else FULL), **(args.sizes or {})})
    from components.config import BackboneConfig, default_params
    from components.features.backbone import build_backbone
    from components.runtime import NATIVE_BFLOAT16_FLAGS, cpu_flags, resolve_precision

    backbone = {**default_params()["backbone"], "name": args.backbone, "weights": args.weights,
                "input_size": args.input_size, "seed": 0}
    from components.files import write_json_atomic

    started = time.perf_counter()
    marks = [started]
    with tempfile.TemporaryDirectory(prefix="ffx-bench-") as tmp:
        work = Path(tmp)
        source, source_name = source_dataset(args.data, work, sizes)
        log(f"data: {source_name}; backbone {args.backbone} ({args.weights}) at {args.input_size}px, "
            f"batch {args.batch_size}; {os.cpu_count()} CPUs; sizes {asdict(sizes)}")
        auto = resolve_precision("auto")  # where it is float32 (no native bfloat16) auto IS the float32 path
        precisions = {"float32": "float32"} | ({} if args.no_bfloat16 or auto == "float32" else {"auto": auto})
        backbones = {name: build_backbone(BackboneConfig(**backbone), REPO, p) for name, p in precisions.items()}
        log("matmul peak:")
        peaks = [measured_peak()]
        machine = {"cpus": os.cpu_count(), "processor": cpu_model(),
                   "bfloat16_native": bool(NATIVE_BFLOAT16_FLAGS & cpu_flags())}
        figures: dict = {"about": provenance, "data": source_name, "backbone": backbone,
                         "batch_size": args.batch_size, "sizes": asdict(sizes), "machine": machine}
        marks.append(time.perf_counter())
        log(f"extraction ({sizes.extract_images} images, {sizes.rounds} interleaved rounds):")
        figures["extraction"] = bench_extraction(train_records(source, sizes.extract_images), backbones,
                                                 args.batch_size, sizes.rounds, work)
        marks.append(time.perf_counter())
        log("pipeline cold vs cache-hit re-run:")
        project = work / "project"
        project.mkdir()
        data_root = subset_project(source, project, sizes.pipeline_per_class)
        figures["cache"], config, cold_search = bench_pipeline_cache(
            write_bench_params(project, data_root, backbone, sizes, args.batch_size))
        marks.append(time.perf_counter())
        log("head training:")
        peaks.append(measured_peak())  # again, beside the timed paths; the best of the run bounds them all
        peak = {dtype: max(p[dtype] for p in peaks) for dtype in peaks[0]}
        figures["matmul_peak_gflops"] = {dtype: value / 1e9 for dtype, value in peak.items()}
        figures["extraction"].update(extraction_bounds(figures["extraction"], peak))
        figures["search"] = search_bound(config, cold_search, peak)
        train, valid, paths = head_data(config, sizes.head_rows, sizes.head_valid_rows, work)
        figures["head"] = bench_head(config, train, valid, paths, sizes.head_epochs, work, peak)
        marks.append(time.perf_counter())
        log("extraction memory:")
        figures["rss"] = bench_rss(source, backbone, sizes.rss_images, args.batch_size, work)
        marks.append(time.perf_counter())
    figures["checks"] = checks(figures)
    figures["seconds"] = time.perf_counter() - started
    figures["section_seconds"] = {name: round(b - a, 1) for name, a, b in zip(
        ("setup", "extraction", "cache", "head", "rss"), marks, marks[1:])}
    print_table(figures)
    write_json_atomic(args.out, figures)
    log(f"\n{figures['seconds']:.0f}s in all; figures in {args.out}")
    return figures


if __name__ == "__main__":
    main()
