"""What serving the registered end-to-end classifier costs, measured in one run:

    python -m bench.serving [--data DIR] [--out bench/results/serving.json]

A small project on the face dataset (or generated demo images) with the demo's backbone (VGG16, `hed-vgg16`,
150 px) is extracted, tuned (one short trial) and registered through the real `ffx` commands. Then:
- peak RSS of `ffx predict --json` over 100 and 400 images, each in a fresh process;
- `mlflow models serve` latency for 1 image and for a batch of 32 (median and 90th percentile of timed
  requests after warm-up), posted as base64 in `dataframe_split`;
- the size of one registered version and of the backbone weights all versions share.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from bench.common import FACES, REPO, about, log, subset_project

BIN = Path(sys.executable).parent
RSS_IMAGES = (100, 400)
LATENCY_REQUESTS = {1: 30, 32: 10}  # batch size -> timed requests


def image_files(root: Path) -> list[Path]:
    from components.data.images import is_image_name

    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p))


def run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # ffx predict exits 1 when some file is unreadable
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    return done


def make_project(source: Path, work: Path) -> Path:
    """extract -> tune (one trial) -> evaluate, registering the classifier in work/mlruns."""
    from components.config import DEFAULTS_FILE

    params = yaml.safe_load(DEFAULTS_FILE.read_text())
    params["data"]["root"] = str(subset_project(source, work, per_class=12))
    params["backbone"].update(name="vgg16", weights="hed-vgg16", input_size=150)
    params["tuner"].update(algorithm="random", max_trials=1, executions_per_trial=1)
    params["train"]["epochs"] = 3
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("extract", "tune", "evaluate"):
        started = time.perf_counter()
        run([str(BIN / "ffx"), stage, "--quiet"], work)
        log(f"  ffx {stage}: {time.perf_counter() - started:.0f}s")
    return work


def predict_rss(project: Path, images: list[Path], count: int) -> dict:
    """`ffx predict` over `count` images in a fresh process: its peak RSS and throughput."""
    folder = project / f"predict-{count}"
    folder.mkdir(exist_ok=True)
    for index, path in enumerate((images * (count // len(images) + 1))[:count]):
        link = folder / f"{index:05d}{path.suffix}"
        if not link.exists():
            link.symlink_to(path.resolve())
    probe = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode)")
    started = time.perf_counter()
    done = run([sys.executable, "-c", probe, str(BIN / "ffx"), "predict", "--json", str(folder)], project)
    seconds = time.perf_counter() - started
    peak_kb, code = map(int, done.stdout.split())
    if code not in (0, 1):
        raise SystemExit(f"ffx predict exited {code}")
    return {"images": count, "peak_rss_mb": peak_kb / 1024, "seconds": seconds}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def latency(project: Path, images: list[Path]) -> dict:
    """Median and p90 seconds per request of `mlflow models serve`, by batch size."""
    import httpx

    from components.config import load_config
    from components.tracking import tracking_uri

    config = load_config(project / "params.yaml")
    uri = tracking_uri(config)
    port = _free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, MLFLOW_REGISTRY_URI=uri)
    log_file = project / "serve.log"
    with log_file.open("w") as out:
        server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m",
                                   f"models:/{config.mlflow.registered_model}@{config.registry.alias}",
                                   "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    encoded = [base64.b64encode(p.read_bytes()).decode("ascii") for p in images[:max(LATENCY_REQUESTS)]]
    try:
        started = time.perf_counter()
        while True:
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.perf_counter() - started > 300:
                raise SystemExit(f"mlflow models serve did not start:\n{log_file.read_text()[-3000:]}")
            time.sleep(0.5)
        figures = {"server_start_s": time.perf_counter() - started}
        for batch, requests in LATENCY_REQUESTS.items():
            body = {"dataframe_split": {"columns": ["image"], "data": [[v] for v in encoded[:batch]]}}
            for _ in range(3):  # warm-up: the first calls trace the backbone's graph for this batch size
                httpx.post(f"{url}/invocations", json=body, timeout=300).raise_for_status()
            times = []
            for _ in range(requests):
                sent = time.perf_counter()
                httpx.post(f"{url}/invocations", json=body, timeout=300).raise_for_status()
                times.append(time.perf_counter() - sent)
            figures[f"batch_{batch}"] = {"median_s": float(np.median(times)),
                                         "p90_s": float(np.percentile(times, 90)), "requests": requests}
            log(f"  batch of {batch}: median {figures[f'batch_{batch}']['median_s'] * 1000:.0f} ms")
        return figures
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def artifact_sizes(project: Path) -> dict:
    from mlflow.tracking import MlflowClient

    from components.config import load_config
    from components.model.backbone_weights import WEIGHTS_KIND
    from components.tracking import BACKBONES_SUFFIX, tracking_uri

    config = load_config(project / "params.yaml")
    client = MlflowClient(tracking_uri(config), registry_uri=tracking_uri(config))
    version = client.get_model_version_by_alias(config.mlflow.registered_model, config.registry.alias)
    source = Path(client.get_model_version_download_uri(version.name, version.version).removeprefix("file://"))
    files = [f for f in source.rglob("*") if f.is_file()]
    experiment = client.get_experiment_by_name(config.mlflow.experiment + BACKBONES_SUFFIX)
    (weights,) = client.search_runs([experiment.experiment_id], f"tags.ffx_kind = '{WEIGHTS_KIND}'")
    return {"version_bytes": sum(f.stat().st_size for f in files),
            "head_bytes": sum(f.stat().st_size for f in files if f.name == "head.keras"),
            "shared_weights_bytes": int(weights.data.tags["ffx_weights_bytes"])}


def main(argv: list[str] | None = None) -> dict:
    from components.config import load_config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=FACES)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serving.json")
    args = parser.parse_args(argv)
    provenance = about("bench.serving", argv)
    with tempfile.TemporaryDirectory(prefix="ffx-bench-serving-") as folder:
        work = Path(folder)
        source = args.data
        if not (source / "train").is_dir():
            from components.data.sampledata import make_demo_dataset

            source = work / "generated"
            make_demo_dataset(source, {"train": 70, "valid": 12, "test": 12})
        log(f"data: {source}")
        project = make_project(source, work / "project")
        images = image_files(source)
        precision = load_config(project / "params.yaml").extract.precision  # auto, resolved on this machine
        figures = {"about": provenance, "data": str(source), "precision": precision,
                   "predict_rss": [predict_rss(project, images, n) for n in RSS_IMAGES]}
        for row in figures["predict_rss"]:
            log(f"  ffx predict {row['images']} images: peak RSS {row['peak_rss_mb']:.0f} MB, {row['seconds']:.1f}s")
        figures["serve"] = latency(project, images)
        figures["sizes"] = artifact_sizes(project)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print_table(figures)
    return figures


def print_table(figures: dict) -> None:
    small, large = figures["predict_rss"]
    serve, sizes = figures["serve"], figures["sizes"]
    print(f"\nffx predict peak RSS: {small['images']} images {small['peak_rss_mb']:.0f} MB, {large['images']} images "
          f"{large['peak_rss_mb']:.0f} MB (ratio {large['peak_rss_mb'] / small['peak_rss_mb']:.2f})")
    for batch in LATENCY_REQUESTS:
        row = serve[f"batch_{batch}"]
        print(f"mlflow models serve, {batch} image(s) per request: median {row['median_s'] * 1000:.0f} ms, "
              f"p90 {row['p90_s'] * 1000:.0f} ms")
    print(f"registered version: {sizes['version_bytes'] / 1e6:.1f} MB (head {sizes['head_bytes'] / 1e6:.1f} MB); "
          f"shared backbone weights: {sizes['shared_weights_bytes'] / 1e6:.1f} MB, stored once")


if __name__ == "__main__":
    main()
