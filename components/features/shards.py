"""Sharded extraction: a feature file cut into fixed-size shards of rows that any worker can extract into its own
HDF5 file, then merged in order into the same file a single-process extraction writes."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from components.config import Config
from components.data.dataset import Split
from components.features.backbone import Backbone, build_backbone, pooled_dim
from components.features.extraction import (
    ASSEMBLY_ROWS,
    EXTRACTION_CODE_VERSION,
    ExtractionPlan,
    ExtractionResult,
    Progress,
    Row,
    extraction_key,
    feature_attrs,
    output_is_current,
    run_backbone,
    source_split,
    split_rows,
)
from components.features.identity import feature_path, split_views
from components.features.store import FeatureWriter, read_attrs, read_features
from components.files import content_key, output_lock


SHARDS_DIR = "shards"  # in features.dir: a DVC output of the extract stage, made even when empty


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


def shard_rows(config: Config, split: Split, name: str | None = None) -> list[list[Row]]:
    """The rows of feature file `name` (default: the split's own), cut into extract.shard_size shards."""
    rows = split_rows(split, split_views(config, name or split.name))
    return [rows[r.start:r.stop] for r in shard_ranges(len(rows), config.extract.shard_size)]


def shard_path(config: Config, name: str, index: int) -> Path:
    return config.features.dir / SHARDS_DIR / f"{name}-{index:05d}.h5"


def shard_key(rows: list[Row], index: int, backbone_identity: dict) -> str:
    """Identity of a shard file: its rows (image, label, view), the backbone settings, its place."""
    return content_key({"rows": [(r.record.relpath, r.record.label, r.key) for r in rows], "shard": index,
                        "backbone": backbone_identity, "code": EXTRACTION_CODE_VERSION})


def extract_shard(config: Config, split: Split, index: int, name: str | None = None, backbone: Backbone | None = None,
                  progress: Progress | None = None) -> ShardResult:
    """Write one shard of feature file `name` (default: the split's own), resuming a partial shard, skipping a
    finished one."""
    name = name or split.name
    rows = shard_rows(config, split, name)[index]
    path = shard_path(config, name, index)
    backbone = backbone or build_backbone(config.backbone, config.root, config.extract.precision)
    key = shard_key(rows, index, backbone.identity)
    if output_is_current(path, key):
        if progress:
            progress(len(rows))
        return ShardResult(name, index, path, key, len(rows), 0)
    with output_lock(path), FeatureWriter(path, key, rows, backbone.feature_dim,  # locked before the model is built
                                          feature_attrs(split, backbone, {}, split_views(config, name))) as writer:
        start = writer.rows_done
        if progress:
            progress(start)
        run_backbone(rows[start:], backbone, config.extract.batch_size, config.data.max_pixels,
                     lambda batch, features: writer.append(features), progress)
    return ShardResult(name, index, path, key, len(rows), len(rows) - start)


def merge_shards(config: Config, split: Split, shards: list[ShardResult], skipped: dict[str, str],
                 name: str | None = None) -> ExtractionResult:
    """Concatenate shard files, in shard order, into feature file `name` (default: the split's own)."""
    started = time.perf_counter()
    name = name or split.name
    out_path = feature_path(config, name)
    first = read_attrs(shards[0].path)
    views = split_views(config, name)
    key = extraction_key(split, first["identity"], views)
    rows = split_rows(split, views)
    computed = sum(s.computed for s in shards)
    if output_is_current(out_path, key):
        return ExtractionResult(name, out_path, len(rows), computed, time.perf_counter() - started, skipped, key,
                                cached=True)
    attrs = {k: v for k, v in first.items() if k not in ("key", "complete", "rows_done")}
    attrs.update(class_names=list(split.class_names), split=split.name, content_hash=split.content_hash,
                 skipped=skipped, shards=len(shards))
    feature_dim = pooled_dim(first["feature_shape"], first["pooling"])
    with output_lock(out_path), FeatureWriter(out_path, key, rows, feature_dim, attrs) as writer:
        row = 0  # of the merged file: where the current shard starts
        for shard in sorted(shards, key=lambda s: s.index):
            features = read_features(shard.path).features  # one shard at a time: memory stays bounded
            # From the first row a killed merge did not flush, in steps that each flush their progress.
            for start in range(max(0, writer.rows_done - row), len(features), ASSEMBLY_ROWS):
                writer.append(features[start:start + ASSEMBLY_ROWS])
            row += len(features)
    return ExtractionResult(name, out_path, len(rows), computed, time.perf_counter() - started, skipped, key)


def extract_in_shards(config: Config, plan: ExtractionPlan, name: str, backbone: Backbone,
                      progress: Progress | None = None) -> ExtractionResult:
    """Every shard of feature file `name`, one after the other in this process, then the merge: the same files
    as `ffx pipeline` with its shard tasks spread over workers."""
    split = plan.splits[source_split(name)]
    shards = [extract_shard(config, split, index, name, backbone, progress)
              for index in range(len(shard_rows(config, split, name)))]
    return merge_shards(config, split, shards, plan.skipped[split.name], name)
