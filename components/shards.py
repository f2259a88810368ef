"""Sharded extraction: a split cut into fixed-size shards that any worker can extract into its own HDF5 file,
then merged in order into the same split file a single-process extraction writes."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.backbone import Backbone, build_backbone
from components.config import Config
from components.dataset import Split
from components.extract import (ASSEMBLY_ROWS, ExtractionResult, extraction_key, feature_attrs, output_is_current,
                                run_backbone)
from components.features import FeatureWriter, output_lock, read_attrs, read_features


@dataclass
class ShardResult:
    split: str
    index: int
    path: Path
    key: str
    count: int
    computed: int


def shard_ranges(count: int, shard_size: int) -> list[range]:
    return [range(start, min(start + shard_size, count)) for start in range(0, count, shard_size)]


def shard_of(split: Split, rows: range) -> Split:
    return Split(split.name, split.root, split.class_names, split.records[rows.start:rows.stop])


def shard_path(config: Config, split: str, index: int) -> Path:
    return config.features.dir / "shards" / f"{split}-{index:05d}.h5"


def shard_key(split: Split, index: int, backbone_identity: dict) -> str:
    return extraction_key(split, dict(backbone_identity, shard=index))


_BACKBONES: dict = {}


def worker_backbone(config: Config) -> Backbone:
    """One backbone per worker process and setting, kept between shards: building it costs seconds."""
    key = (config.backbone, str(config.root), config.extract.precision)
    if key not in _BACKBONES:
        _BACKBONES.clear()
        _BACKBONES[key] = build_backbone(config.backbone, config.root, config.extract.precision)
    return _BACKBONES[key]


def extract_shard(config: Config, split: Split, index: int, backbone: Backbone | None = None) -> ShardResult:
    """Write one shard's features (resuming a partial shard, skipping a finished one)."""
    rows = shard_ranges(len(split.records), config.extract.shard_size)[index]
    shard = shard_of(split, rows)
    path = shard_path(config, split.name, index)
    backbone = backbone or worker_backbone(config)
    key = shard_key(shard, index, backbone.identity)
    if output_is_current(path, key):
        return ShardResult(split.name, index, path, key, len(shard.records), 0)
    records = shard.records
    with output_lock(path):
        writer = FeatureWriter.for_records(path, key, records, backbone.feature_dim, feature_attrs(shard, backbone, {}))
        try:
            start = writer.rows_done
            offset = [start]

            def sink(batch, features):
                writer.write(offset[0], features)
                offset[0] += len(batch)

            run_backbone(records[start:], backbone, config.extract.batch_size, config.data.max_pixels, sink)
            writer.finish()
        finally:
            writer.close()
    return ShardResult(split.name, index, path, key, len(records), len(records) - start)


def merge_shards(config: Config, split: Split, shards: list[ShardResult], skipped: dict[str, str]) -> ExtractionResult:
    """Concatenate shard files, in shard order, into the split's feature file."""
    started = time.perf_counter()
    out_path = config.features.path(split.name)
    first = read_attrs(shards[0].path)
    key = extraction_key(split, first["identity"])
    computed = sum(s.computed for s in shards)
    if output_is_current(out_path, key):
        return ExtractionResult(split.name, out_path, len(split.records), computed, time.perf_counter() - started,
                                skipped, key, up_to_date=True)
    attrs = {k: v for k, v in first.items() if k not in ("key", "complete", "format_version", "rows_done")}
    attrs.update(class_names=list(split.class_names), split=split.name, content_hash=split.content_hash,
                 skipped=skipped, shards=len(shards))
    records = split.records
    dim = int(np.prod(first["feature_shape"]))
    with output_lock(out_path):
        writer = FeatureWriter.for_records(out_path, key, records, dim, attrs)
        try:
            row = 0
            for shard in sorted(shards, key=lambda s: s.index):
                features = read_features(shard.path).features  # one shard at a time: memory stays bounded
                for start in range(0, len(features), ASSEMBLY_ROWS):
                    chunk = features[start:start + ASSEMBLY_ROWS]
                    done = max(0, writer.rows_done - row)  # rows a killed merge already flushed
                    if done < len(chunk):
                        writer.write(row + done, chunk[done:])
                    row += len(chunk)
            writer.finish()
        finally:
            writer.close()
    return ExtractionResult(split.name, out_path, len(records), computed, time.perf_counter() - started, skipped, key)
