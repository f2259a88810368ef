"""One fine-tuning epoch from the boundary cache against the same model trained the guide's way (Keras' transfer
learning guide: every image through the frozen blocks at every epoch), side by side in one run.

    python -m bench.finetune --data ../shared/datasets/faces [--images 256] [--rounds 2] [--precision float32]

Both train the same top block (the backbone's layers after the boundary) and the same head (Dense 64 on the
flattened maps, behind its fixed standardisation), compiled as the finetune stage compiles them (finetune.*'s
defaults: RMSprop with the weights' moving average), one epoch of the same images in batches of 32.
The guide's way is given every advantage that does not change its arithmetic: its images are decoded, resized
and preprocessed once, in memory; the cached way reads its rows from the HDF5 boundary file at every batch.
The FLOP limit is (frozen forward + top forward and backward) / (top forward and backward), counting convolutions
(backward = 2 x forward).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import FACES, REPO, about, cpu_model, log, subset_project


def conv_flops(model, first: int, last: int) -> float:
    """Forward multiply-adds x 2 of the Conv2D layers model.layers[first:last], per image."""
    import keras

    total = 0.0
    for layer in model.layers[first:last]:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, channels = layer.output.shape
            kernel_h, kernel_w = layer.kernel_size
            total += 2.0 * height * width * kernel_h * kernel_w * layer.input.shape[-1] * channels
    return total


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=FACES)
    parser.add_argument("--images", type=int, default=256, help="train images (half per class)")
    parser.add_argument("--rounds", type=int, default=2, help="timed epochs of each way, alternated")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--boundary", default="block4_pool")
    parser.add_argument("--weights", default="hed-vgg16", help="speed does not depend on weights (none: random)")
    parser.add_argument("--input-size", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "finetune.json")
    args = parser.parse_args(argv)
    provenance = about("bench.finetune", argv)

    import keras

    from components.config import load_config, write_params
    from components.data.augment import ORIGINAL
    from components.features.backbone import build_backbone, dtype_policy
    from components.features.extraction import decode_batch
    from components.finetune.batches import BoundaryBatches
    from components.finetune.boundary import boundary_backbone, boundary_path, extract_boundary
    from components.finetune.model import build_finetune_model
    from components.finetune.train import compile_model
    from components.search.space import build_head, with_standardisation

    work = Path(tempfile.mkdtemp(prefix="ffx-bench-finetune-"))
    root = subset_project(args.data, work, args.images // 2)
    config = load_config(write_params(work / "params.yaml", {
        "data": {"root": str(root)},
        "backbone": {"name": "vgg16", "weights": args.weights, "input_size": args.input_size, "pooling": "flatten"},
        "extract": {"precision": args.precision, "batch_size": args.batch_size},
        "features": {"dir": str(work / "features"), "cache_dir": str(work / "cache")},
        "finetune": {"enabled": True, "boundary": args.boundary, "batch_size": args.batch_size},
    }))

    started = time.perf_counter()
    extract_boundary(config, boundary_backbone(config, args.boundary), splits=("train",))
    extract_s = time.perf_counter() - started
    path = boundary_path(config, "train")
    log(f"boundary features of {args.images} images: {extract_s:.1f}s ({path.stat().st_size / 2**20:.0f} MiB)")

    def model_of(backbone):
        """The top block and a fresh Dense-64 head on it (statistics of no data: timing does not depend on them)."""
        dim = backbone.feature_dim
        head = with_standardisation(build_head(dim, 2, 64, 0.5, 0), (np.zeros(dim, np.float32),
                                                                     np.ones(dim, np.float32)))
        return build_finetune_model(backbone, args.boundary, head)

    batches = BoundaryBatches(path, args.batch_size, binary=True, seed=0)

    def compiled(model):
        compile_model(model, config.finetune, binary=True)
        return model

    # The cached way: rows of the boundary file in, the top block and head trained.
    cached_backbone = build_backbone(config.backbone, config.root, args.precision)
    cached = compiled(model_of(cached_backbone))

    # The guide's way: images in, the frozen blocks (not trainable) run every step, then the same top and head.
    guide_backbone = build_backbone(config.backbone, config.root, args.precision)
    base = guide_backbone.model
    frozen = keras.Model(base.input, base.get_layer(args.boundary).output, name="frozen")
    frozen.trainable = False
    top_and_head = model_of(guide_backbone)
    with dtype_policy("mixed_bfloat16" if args.precision == "bfloat16" else "float32"):
        images_in = keras.Input(base.input.shape[1:], name="images")
        maps = frozen(images_in, training=False)
    flat = keras.layers.Flatten()(maps)
    guide = compiled(keras.Model(images_in, top_and_head(flat), name="guide"))
    import h5py

    with h5py.File(path, "r") as handle:
        labels = handle["labels"][()].astype(np.float32).reshape(-1, 1)
        relpaths = list(handle["paths"].asstr()[()])
    images = decode_batch([config.data.root / p for p in relpaths], args.input_size, config.data.max_pixels,
                          [ORIGINAL] * len(relpaths))
    images = guide_backbone.preprocess(images.astype(np.float32))
    log(f"trainable weights: cached {len(cached.trainable_weights)}, guide {len(guide.trainable_weights)}")

    def epoch(way: str, steps: int | None = None) -> float:
        began = time.perf_counter()
        if way == "cached":
            cached.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0)
        else:
            guide.fit(images, labels, batch_size=args.batch_size, epochs=1, steps_per_epoch=steps, shuffle=True,
                      verbose=0)
        return time.perf_counter() - began

    for way in ("cached", "guide"):  # tracing and first-call costs, not timed
        epoch(way, steps=2)
    times: dict[str, list[float]] = {"cached": [], "guide": []}
    for index in range(args.rounds):
        for way in ("cached", "guide") if index % 2 == 0 else ("guide", "cached"):
            times[way].append(epoch(way))
            log(f"round {index + 1}: {way} epoch {times[way][-1]:.1f}s")
    cached_s, guide_s = statistics.median(times["cached"]), statistics.median(times["guide"])
    boundary_index = [layer.name for layer in base.layers].index(args.boundary) + 1
    frozen_flops, top_flops = conv_flops(base, 1, boundary_index), conv_flops(base, boundary_index, None)
    figures = {
        "about": provenance, "machine": _machine(), "images": len(labels), "precision": args.precision,
        "boundary": args.boundary, "batch_size": args.batch_size, "boundary_extract_s": extract_s,
        "optimizer": {"class": type(cached.optimizer).__name__, **{
            k: v for k, v in cached.optimizer.get_config().items()
            if k in ("learning_rate", "use_ema", "ema_momentum")}},
        "boundary_file_mib": path.stat().st_size / 2**20,
        "cached_epoch_s": times["cached"], "guide_epoch_s": times["guide"],
        "cached_images_per_s": len(labels) / cached_s, "guide_images_per_s": len(labels) / guide_s,
        "speedup": guide_s / cached_s,
        "gflop_frozen_forward": frozen_flops / 1e9, "gflop_top_forward": top_flops / 1e9,
        "flop_limit": (frozen_flops + 3 * top_flops) / (3 * top_flops),
    }
    figures["float16_storage"] = float16_storage(path, cached)
    log(f"float16 storage: {figures['float16_storage']}")
    log(f"one epoch of {len(labels)} images, {args.precision}: cached {cached_s:.1f}s "
        f"({figures['cached_images_per_s']:.1f} img/s), guide's way {guide_s:.1f}s "
        f"({figures['guide_images_per_s']:.1f} img/s): {figures['speedup']:.2f}x (FLOP limit "
        f"{figures['flop_limit']:.2f}x: frozen {figures['gflop_frozen_forward']:.2f} GFLOP forward, top "
        f"{figures['gflop_top_forward']:.2f} GFLOP forward)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def float16_storage(path: Path, model, rows: int = 64) -> dict:
    """What storing the boundary maps as float16 instead of float32 would do: half the disk; the largest value
    against float16's range (65504); the rows' relative rounding error; and the change in the model's output
    probabilities when it is fed the rounded rows."""
    import h5py

    with h5py.File(path, "r") as handle:
        features = handle["features"][:rows]
        largest = max(float(np.abs(handle["features"][start:start + 256]).max())
                      for start in range(0, handle["features"].shape[0], 256))
    rounded = features.astype(np.float16).astype(np.float32)
    error = np.linalg.norm(rounded - features, axis=1) / np.maximum(np.linalg.norm(features, axis=1), 1e-12)
    change = np.abs(model.predict(rounded, verbose=0) - model.predict(features, verbose=0))
    return {"largest_value": largest, "float16_max": 65504.0, "relative_l2_error_max": float(error.max()),
            "probability_change_max": float(change.max()), "rows": len(features)}


def _machine() -> str:
    import os

    return f"{cpu_model()}, {os.cpu_count()} CPU(s) visible, load average {os.getloadavg()[0]:.1f} at the end"


if __name__ == "__main__":
    main()
