"""Streaming extraction: only images not yet in the feature cache go through the backbone, decoded in a
background thread while the backbone runs on the previous batch; the split file is then assembled from the cache."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from components.config import AugmentConfig, Config
from components.data.augment import FLIP, ORIGINAL, View, augmented_views, row_key
from components.data.dataset import (
    SPLITS,
    ImageRecord,
    Split,
    folder_records,
    read_exclusions,
    scan_dataset,
    screen_split,
)
from components.data.images import check_image, load_rgb
from components.features.backbone import (
    Backbone,
    build_backbone,
    check_backbone_config,
)
from components.features.cache import open_feature_cache
from components.features.identity import FLIPPED_SUFFIX, split_views
from components.features.store import FeatureWriter, read_attrs
from components.files import content_key, disk_full_as_error, output_lock

EXTRACTION_CODE_VERSION = 1  # bump when a change here alters the features written
ASSEMBLY_ROWS = 1024         # rows copied from the cache per write: keeps memory flat
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Row:
    """One feature row: an image of the split (`source`: its index) seen through a view."""
    record: ImageRecord
    source: int
    view: View = ORIGINAL

    @property
    def key(self) -> str:
        return row_key(self.record.sha1, self.view)


def split_rows(split: Split, views: dict | None) -> list[Row]:
    """The rows of a split's feature file. No views: one per image, in split order. `{"flip": true}`: each
    image mirrored. `{"augment": ...}`: the originals first (so rows 0..N-1 are the plain features), then
    each image's augmented views, grouped by image."""
    records = split.records
    if not views:
        return [Row(r, i) for i, r in enumerate(records)]
    if views.get("flip"):
        return [Row(r, i, FLIP) for i, r in enumerate(records)]
    augment = AugmentConfig(**views["augment"])
    return [Row(r, i) for i, r in enumerate(records)] + [
        Row(r, i, view) for i, r in enumerate(records) for view in augmented_views(r.sha1, augment)]


def source_split(name: str) -> str:
    """The image folder a feature file is made from: test_flip.h5 from test/."""
    return name[:-len(FLIPPED_SUFFIX)] if name.endswith(FLIPPED_SUFFIX) else name


def feature_files(config: Config, splits: tuple[str, ...] = SPLITS) -> tuple[str, ...]:
    """The feature files extraction writes: one per split, and the mirrored test split when predict.tta is on."""
    extra = ("test" + FLIPPED_SUFFIX,) if config.predict.tta and "test" in splits else ()
    return tuple(splits) + extra


@dataclass
class ExtractionResult:
    split: str
    path: Path
    count: int
    computed: int               # images that went through the backbone in this run
    seconds: float
    skipped: dict[str, str] = field(default_factory=dict)
    key: str = ""
    cached: bool = False        # the output already matched its inputs: nothing was read or written


@dataclass
class ExtractionPlan:
    """Every split scanned and screened for bad images: what extraction will read."""
    splits: dict[str, Split]
    skipped: dict[str, dict[str, str]]


def extraction_key(split: Split, backbone_identity: dict, views: dict | None = None) -> str:
    """Identity of a split's feature file: image contents, backbone settings, views, extraction code."""
    identity = {"content": split.content_hash, "backbone": backbone_identity, "code": EXTRACTION_CODE_VERSION}
    if views:  # absent without views: plain files keep their key
        identity["views"] = views
    return content_key(identity)


def output_is_current(path: Path, key: str) -> bool:
    """The feature file exists, is complete and was made from exactly these inputs."""
    try:
        attrs = read_attrs(path)
    except OSError:
        return False
    return bool(attrs.get("complete")) and attrs.get("key") == key


def decode_batch(paths: list[Path], size: int, max_pixels: int, views: list[View] | None = None) -> np.ndarray:
    images = [load_rgb(p, size, max_pixels) for p in paths]
    if views:
        images = [view.apply(image) for view, image in zip(views, images)]
    return np.stack(images)


def run_backbone(rows: list[Row], backbone: Backbone, batch_size: int, max_pixels: int,
                 sink: Callable[[list[Row], np.ndarray], None], progress: Progress | None = None) -> None:
    """Batches of `rows` through the backbone, each result handed to `sink(batch, features)` in order; the next
    batch is decoded in a background thread while the backbone computes the current one."""
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    size = backbone.config.input_size
    with ThreadPoolExecutor(max_workers=1) as decoder:
        def submit(batch):
            return decoder.submit(decode_batch, [r.record.path for r in batch], size, max_pixels,
                                  [r.view for r in batch])

        pending = submit(batches[0]) if batches else None
        for index, batch in enumerate(batches):
            images = pending.result()
            if index + 1 < len(batches):
                pending = submit(batches[index + 1])
            sink(batch, backbone.features(images))
            if progress:
                progress(len(batch))


def _compute_missing(rows: list[Row], backbone: Backbone, cache, batch_size: int, max_pixels: int,
                     progress: Progress | None) -> int:
    """Run the rows (image and view) absent from the cache through the backbone, appending each batch to it."""
    todo = {row.key: row for row in rows if row.key not in cache}  # an image that stands twice is computed once
    if progress and len(rows) > len(todo):
        progress(len(rows) - len(todo))
    with disk_full_as_error(cache.path, needed=len(todo) * cache.row_bytes):  # the space the new rows take
        run_backbone(list(todo.values()), backbone, batch_size, max_pixels,
                     lambda batch, features: cache.add([r.key for r in batch], features), progress)
    return len(todo)


def feature_attrs(split: Split, backbone: Backbone, skipped: dict[str, str], views: dict | None) -> dict:
    """HDF5 attributes of a split's feature file: what the features are and what they were made from."""
    attrs = {
        "class_names": list(split.class_names), "split": split.name, "backbone": backbone.config.name,
        "weights": backbone.weights_id, "input_size": backbone.config.input_size,
        "pooling": backbone.config.pooling, "layer": backbone.config.layer, "precision": backbone.precision,
        "feature_shape": list(backbone.feature_shape), "content_hash": split.content_hash,
        "backbone_key": backbone.key, "skipped": skipped, "identity": backbone.identity,
    }
    return dict(attrs, views=views) if views else attrs


def extract_split(split: Split, backbone: Backbone, out_path: Path, cache_dir: Path, batch_size: int,
                  max_pixels: int, skipped: dict[str, str] | None = None,
                  progress: Progress | None = None, views: dict | None = None,
                  name: str | None = None) -> ExtractionResult:
    """Write `out_path` with one feature row per image of `split`, in the split's order, and per view when
    `views` asks for them (see `split_rows`; the `source` dataset then links each row to its image). `name`: the
    feature file's, when it is not the split's (test_flip)."""
    started = time.perf_counter()
    name = name or split.name
    skipped = skipped or {}
    key = extraction_key(split, backbone.identity, views)
    rows = split_rows(split, views)
    if output_is_current(out_path, key):
        if progress:
            progress(len(rows))
        return ExtractionResult(name, out_path, len(rows), 0, time.perf_counter() - started, skipped, key, cached=True)
    with output_lock(out_path), open_feature_cache(cache_dir, backbone.key, backbone.feature_dim) as cache:
        computed = _compute_missing(rows, backbone, cache, batch_size, max_pixels, progress)
        attrs = feature_attrs(split, backbone, skipped, views)
        with (disk_full_as_error(out_path, needed=len(rows) * 4 * backbone.feature_dim),
              FeatureWriter(out_path, key, rows, backbone.feature_dim, attrs) as writer):
            for start in range(writer.rows_done, len(rows), ASSEMBLY_ROWS):
                writer.append(cache.get([r.key for r in rows[start:start + ASSEMBLY_ROWS]]))
    return ExtractionResult(name, out_path, len(rows), computed, time.perf_counter() - started, skipped, key)


def extract_file(config: Config, plan: ExtractionPlan, name: str, backbone: Backbone, out_path: Path,
                 progress: Progress | None = None) -> ExtractionResult:
    """Feature file `name` (a split, or test_flip made from test/) of the planned images, with the views it holds,
    at `out_path`, by way of the feature cache."""
    source = source_split(name)
    return extract_split(plan.splits[source], backbone, out_path, config.features.cache_dir,
                         config.extract.batch_size, config.data.max_pixels, plan.skipped[source], progress,
                         split_views(config, name), name)


def plan_extraction(config: Config, splits: tuple[str, ...] = SPLITS) -> ExtractionPlan:
    """Check params, layout and every image before any backbone work."""
    check_backbone_config(config.backbone, config.root)
    scanned = scan_dataset(config.data.root, splits, read_exclusions(config.data.exclude))
    screened = {name: screen_split(split, config.data.max_pixels, config.data.on_bad_image)
                for name, split in scanned.items()}
    return ExtractionPlan({n: s for n, (s, _) in screened.items()}, {n: bad for n, (_, bad) in screened.items()})


def folder_features(config: Config, folder: Path) -> tuple[list[str], np.ndarray]:
    """Every image below `folder` (unreadable ones left out) through the configured backbone by way of the feature
    cache: (paths relative to `folder`, features). For images outside the dataset, e.g. new ones checked for drift."""
    records = [r for r in folder_records(folder) if check_image(r.path, config.data.max_pixels) is None]
    rows = [Row(r, i) for i, r in enumerate(records)]
    backbone = build_backbone(config.backbone, config.root, config.extract.precision)
    with open_feature_cache(config.features.cache_dir, backbone.key, backbone.feature_dim) as cache:
        _compute_missing(rows, backbone, cache, config.extract.batch_size, config.data.max_pixels, None)
        features = cache.get([r.key for r in rows]) if rows else np.zeros((0, backbone.feature_dim), np.float32)
    return [r.relpath for r in records], features
