"""Streaming extraction: only images not yet in the feature cache go through the backbone, decoded in a
background thread while the backbone runs on the previous batch; the split file is then assembled from the cache."""
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
from components.feature_cache import open_feature_cache
from components.features import FeatureWriter, output_lock, read_attrs
from components.files import write_json_atomic
from components.images import load_rgb

EXTRACTION_CODE_VERSION = 1  # bump when a change here alters the features written
ASSEMBLY_ROWS = 1024         # rows copied from the cache per write: keeps memory flat
Progress = Callable[[int], None]


@dataclass
class ExtractionResult:
    split: str
    path: Path
    count: int
    computed: int               # images that went through the backbone in this run
    seconds: float
    skipped: dict[str, str] = field(default_factory=dict)
    key: str = ""
    up_to_date: bool = False    # the output already matched its inputs: nothing was read or written

    @property
    def cached(self) -> bool:
        return self.up_to_date


@dataclass
class ExtractionPlan:
    """Every split scanned and screened for bad images: what extraction will read."""
    splits: dict[str, Split]
    skipped: dict[str, dict[str, str]]


def extraction_key(split: Split, backbone_identity: dict) -> str:
    """Identity of a split's feature file: image contents, backbone settings, extraction code."""
    payload = json.dumps({"content": split.content_hash, "backbone": backbone_identity,
                          "code": EXTRACTION_CODE_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def output_is_current(path: Path, key: str) -> bool:
    """The feature file exists, is complete and was made from exactly these inputs."""
    try:
        attrs = read_attrs(path)
    except OSError:
        return False
    return bool(attrs.get("complete")) and attrs.get("key") == key


def decode_batch(paths: list[Path], size: int, max_pixels: int) -> np.ndarray:
    return np.stack([load_rgb(p, size, max_pixels) for p in paths])


def _compute_missing(split: Split, backbone: Backbone, cache, batch_size: int, max_pixels: int,
                     progress: Progress | None) -> int:
    """Run the images absent from the cache through the backbone, appending each batch to the cache."""
    todo, seen = [], set()
    for record in split.records:
        if record.sha1 not in cache and record.sha1 not in seen:
            seen.add(record.sha1)
            todo.append(record)
    if progress and len(split.records) > len(todo):
        progress(len(split.records) - len(todo))
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    size = backbone.config.input_size
    with ThreadPoolExecutor(max_workers=1) as decoder:
        def submit(batch):
            return decoder.submit(decode_batch, [r.path for r in batch], size, max_pixels)

        pending = submit(batches[0]) if batches else None
        for index, batch in enumerate(batches):
            images = pending.result()
            if index + 1 < len(batches):
                pending = submit(batches[index + 1])  # decode the next batch while this one computes
            cache.add([r.sha1 for r in batch], backbone.features(images))
            if progress:
                progress(len(batch))
    return len(todo)


def extract_split(split: Split, backbone: Backbone, out_path: Path, cache_dir: Path, batch_size: int,
                  max_pixels: int, skipped: dict[str, str] | None = None,
                  progress: Progress | None = None) -> ExtractionResult:
    """Write `out_path` with one feature row per image of `split`, in the split's order."""
    started = time.perf_counter()
    skipped = skipped or {}
    key = extraction_key(split, backbone.identity)
    records = split.records
    if output_is_current(out_path, key):
        if progress:
            progress(len(records))
        return ExtractionResult(split.name, out_path, len(records), 0, time.perf_counter() - started, skipped, key,
                                up_to_date=True)
    attrs = {
        "class_names": list(split.class_names), "split": split.name, "backbone": backbone.config.name,
        "weights": backbone.weights_id, "input_size": backbone.config.input_size, "pooling": "flatten",
        "feature_shape": list(backbone.feature_shape), "content_hash": split.content_hash,
        "backbone_key": backbone.key, "skipped": skipped,
    }
    with output_lock(out_path), open_feature_cache(cache_dir, backbone.key, backbone.feature_dim) as cache:
        computed = _compute_missing(split, backbone, cache, batch_size, max_pixels, progress)
        writer = FeatureWriter(out_path, key, np.array([r.label for r in records]), [r.relpath for r in records],
                               [r.sha1 for r in records], backbone.feature_dim, attrs)
        try:
            for start in range(writer.rows_done, len(records), ASSEMBLY_ROWS):
                chunk = records[start:start + ASSEMBLY_ROWS]
                writer.write(start, cache.get([r.sha1 for r in chunk]))
            writer.finish()
        finally:
            writer.close()
    return ExtractionResult(split.name, out_path, len(records), computed, time.perf_counter() - started,
                            skipped, key)


def plan_extraction(config: Config, splits: tuple[str, ...] = SPLITS) -> ExtractionPlan:
    """Check params, layout and every image before any backbone work."""
    check_backbone_config(config.backbone, config.root)
    scanned = scan_dataset(config.data.root, splits)
    screened = {name: screen_split(split, config.data.max_pixels, config.data.on_bad_image)
                for name, split in scanned.items()}
    return ExtractionPlan({n: s for n, (s, _) in screened.items()}, {n: bad for n, (_, bad) in screened.items()})


def extract_planned(config: Config, plan: ExtractionPlan, name: str, backbone: Backbone | None = None,
                    progress: Progress | None = None) -> ExtractionResult:
    """Extract one planned split (building the backbone if none is given)."""
    backbone = backbone or build_backbone(config.backbone, config.root)
    return extract_split(plan.splits[name], backbone, config.features.path(name), config.features.cache_dir,
                         config.extract.batch_size, config.data.max_pixels, plan.skipped[name], progress)


def write_skipped_report(config: Config, plan: ExtractionPlan) -> Path:
    path = config.features.dir / "skipped.json"
    write_json_atomic(path, plan.skipped)
    return path


def extract_all(config: Config, splits: tuple[str, ...] = SPLITS,
                progress_for: Callable[[str, int], Progress] | None = None) -> dict[str, ExtractionResult]:
    """Plan, then extract every split with one backbone; no backbone work if anything is wrong."""
    plan = plan_extraction(config, splits)
    backbone = build_backbone(config.backbone, config.root)
    results = {}
    for name, split in plan.splits.items():
        progress = progress_for(name, len(split.records)) if progress_for else None
        results[name] = extract_planned(config, plan, name, backbone, progress)
    write_skipped_report(config, plan)
    return results
