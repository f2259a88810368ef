"""Scale-out figures, measured side by side in one run on this machine:

    python -m bench.scaling [--quick] [--out bench/results/scaling.json]

- sharded extraction throughput (images/s) on a Dask LocalCluster with 1 and with 2 workers, one thread each;
- distributed tuning throughput (trials/hour) with 1 and with 2 KerasTuner workers (plus the chief).
Uses the face dataset when present (read in place, never copied), generated images otherwise; VGG19 at 150x150
with random weights (the forward pass costs the same whatever the weights' values, and nothing downloads).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


from bench.common import FACES, REPO, about, subset_project  # noqa: E402


def dataset(work: Path, per_class: int) -> Path:
    """`per_class` images per class and split: links into the face dataset, or generated demo images."""
    if (FACES / "train").is_dir():
        return subset_project(FACES, work, per_class)
    from components.data.sampledata import make_demo_dataset

    root = work / "data"
    make_demo_dataset(root, {"train": per_class, "valid": per_class, "test": per_class})
    return root


def write_params(work: Path, **sections) -> Path:
    from components.config import write_params as write_complete_params

    return write_complete_params(work / "params.yaml", {
        "data": {"root": "data"}, "backbone": {"name": "vgg19", "weights": "none", "input_size": 150}}, sections)


def _one_thread_shard(params_file: str, split_name: str, index: int) -> int:
    """Runs on a Dask worker: TensorFlow limited to one thread, so each worker is one core."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already initialised by an earlier shard on this worker
    from distributed import get_worker

    from components.config import load_config
    from components.features.extraction import plan_extraction
    from components.features.shards import extract_shard

    config = load_config(params_file)
    split = plan_extraction(config, (split_name,)).splits[split_name]
    return extract_shard(config, split, index, backbone=get_worker().ffx_backbone).computed


def _warm_up(params_file: str) -> None:
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from distributed import get_worker

    from components.config import load_config
    from components.features.backbone import build_backbone

    config = load_config(params_file)
    backbone = build_backbone(config.backbone, config.root, config.extract.precision)
    backbone.features(np.zeros((1, 150, 150, 3), np.uint8))
    get_worker().ffx_backbone = backbone  # built once per worker, kept there for the timed shards


def extraction_throughput(work: Path, workers: int, shard_size: int) -> dict:
    from distributed import Client, LocalCluster

    from components.config import load_config
    from components.data.dataset import scan_dataset
    from components.features.shards import shard_ranges

    params = write_params(work, extract={"shard_size": shard_size, "batch_size": 16},
                          features={"dir": f"features-{workers}w"})
    config = load_config(params)
    count = len(scan_dataset(config.data.root, ("train",))["train"].records)
    shards = len(shard_ranges(count, shard_size))
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        # warm up every worker (imports, TensorFlow start-up, one thread) outside the timed part
        client.gather([client.submit(_warm_up, str(params), pure=False, workers=[address])
                       for address in client.scheduler_info()["workers"]])
        started = time.perf_counter()
        computed = sum(client.gather(client.map(_one_thread_shard, [str(params)] * shards, ["train"] * shards,
                                                list(range(shards)), pure=False)))
        seconds = time.perf_counter() - started
    return {"workers": workers, "images": computed, "seconds": seconds, "images_per_s": computed / seconds}


def tuning_throughput(work: Path, workers: int, trials: int, epochs: int) -> dict:
    params = write_params(work, backbone={"input_size": 64},
                          tuner={"max_trials": trials, "algorithm": "random", "executions_per_trial": 1,
                                 "directory": f".ffx/tuner-{workers}w"},
                          train={"epochs": epochs}, mlflow={"experiment": f"scaling-{workers}w"})
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    subprocess.run(["ffx", "extract", "-q", "--params", str(params)], check=True, env=env)
    started = time.perf_counter()
    subprocess.run(["ffx", "tune", "-q", "--params", str(params), "--workers", str(workers)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    return {"workers": workers, "trials": trials, "seconds": seconds, "trials_per_hour": trials * 3600 / seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and trials")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "scaling.json")
    args = parser.parse_args(argv)
    provenance = about("bench.scaling", argv)
    per_class, shard_size, trials, epochs = (64, 32, 8, 30) if args.quick else (200, 50, 16, 50)
    with tempfile.TemporaryDirectory(prefix="ffx-scaling-") as tmp:
        work = Path(tmp)
        dataset(work, per_class)
        extraction = [extraction_throughput(work, n, shard_size) for n in (1, 2)]
        tuning = [tuning_throughput(work, n, trials, epochs) for n in (1, 2)]
    result = {"about": provenance, "extraction": extraction, "tuning": tuning, "cpu_count": os.cpu_count(),
              "extraction_speedup_2w": extraction[1]["images_per_s"] / extraction[0]["images_per_s"],
              "tuning_speedup_2w": tuning[1]["trials_per_hour"] / tuning[0]["trials_per_hour"]}
    print(f"{'sharded extraction (VGG19 150px)':<36}{'1 worker':>12}{'2 workers':>12}{'ratio':>8}")
    print(f"{'  images/s':<36}{extraction[0]['images_per_s']:>12.1f}{extraction[1]['images_per_s']:>12.1f}"
          f"{result['extraction_speedup_2w']:>8.2f}")
    print(f"{'distributed tuning':<36}{'1 worker':>12}{'2 workers':>12}{'ratio':>8}")
    print(f"{'  trials/hour':<36}{tuning[0]['trials_per_hour']:>12.0f}{tuning[1]['trials_per_hour']:>12.0f}"
          f"{result['tuning_speedup_2w']:>8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
