"""Streaming extraction: images are decoded in a background thread while the backbone runs on the last batch."""
from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from components.backbone import Backbone, build_backbone, check_backbone_config
from components.config import Config
from components.dataset import SPLITS, Split, scan_dataset, screen_split
from components.files import write_json_atomic
from components.features import FeatureWriter, output_lock, read_attrs
from components.images import load_rgb

EXTRACTION_CODE_VERSION = 1  # bump when a change here alters the features written
Progress = Callable[[int], None]


@dataclass
class ExtractionResult:
    split: str
    path: Path
    count: int
    computed: int               # images that went through the backbone in this run
    seconds: float
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def cached(self) -> bool:
        return self.computed == 0


def extraction_key(split: Split, backbone_identity: dict) -> str:
    payload = json.dumps({"content": split.content_hash, "backbone": backbone_identity,
                          "code": EXTRACTION_CODE_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def decode_batch(paths: list[Path], size: int, max_pixels: int) -> np.ndarray:
    return np.stack([load_rgb(p, size, max_pixels) for p in paths])


def extract_split(split: Split, backbone: Backbone, out_path: Path, batch_size: int, max_pixels: int,
                  skipped: dict[str, str] | None = None, progress: Progress | None = None) -> ExtractionResult:
    """Write `out_path` with one feature row per image of `split`, in the split's order."""
    started = time.perf_counter()
    key = extraction_key(split, backbone.identity)
    records = split.records
    if out_path.is_file() and _existing_key(out_path) == key:
        if progress:
            progress(len(records))
        return ExtractionResult(split.name, out_path, len(records), 0, time.perf_counter() - started, skipped or {})
    attrs = {
        "class_names": list(split.class_names), "split": split.name, "backbone": backbone.config.name,
        "weights": backbone.weights_id, "input_size": backbone.config.input_size, "pooling": "flatten",
        "feature_shape": list(backbone.feature_shape), "content_hash": split.content_hash,
        "backbone_key": backbone.key, "skipped": skipped or {},
    }
    with output_lock(out_path):
        writer = FeatureWriter(out_path, key, np.array([r.label for r in records]), [r.relpath for r in records],
                               [r.sha1 for r in records], backbone.feature_dim, attrs)
        try:
            start = writer.rows_done
            if progress and start:
                progress(start)
            batches = [range(i, min(i + batch_size, len(records))) for i in range(start, len(records), batch_size)]
            size = backbone.config.input_size
            with ThreadPoolExecutor(max_workers=1) as decoder:
                def submit(rows: range):
                    return decoder.submit(decode_batch, [records[i].path for i in rows], size, max_pixels)

                pending = submit(batches[0]) if batches else None
                for index, rows in enumerate(batches):
                    images = pending.result()
                    if index + 1 < len(batches):
                        pending = submit(batches[index + 1])  # decode the next batch while this one computes
                    writer.write(rows.start, backbone.features(images))
                    if progress:
                        progress(len(rows))
            writer.finish()
        finally:
            writer.close()
    return ExtractionResult(split.name, out_path, len(records), len(records) - start,
                            time.perf_counter() - started, skipped or {})


def _existing_key(path: Path) -> str | None:
    try:
        attrs = read_attrs(path)
    except OSError:
        return None
    return attrs.get("key") if attrs.get("complete") else None


def extract_all(config: Config, splits: tuple[str, ...] = SPLITS,
                progress_for: Callable[[str, int], Progress] | None = None) -> dict[str, ExtractionResult]:
    """Check params and every image first, then extract each split; no backbone work if anything is wrong."""
    check_backbone_config(config.backbone, config.root)
    scanned = scan_dataset(config.data.root, splits)
    screened = {name: screen_split(split, config.data.max_pixels, config.data.on_bad_image)
                for name, split in scanned.items()}
    backbone = build_backbone(config.backbone, config.root)
    results = {}
    for name, (split, skipped) in screened.items():
        progress = progress_for(name, len(split.records)) if progress_for else None
        results[name] = extract_split(split, backbone, config.features.path(name), config.extract.batch_size,
                                      config.data.max_pixels, skipped, progress)
    write_json_atomic(config.features.dir / "skipped.json", {n: r.skipped for n, r in results.items()})
    return results
