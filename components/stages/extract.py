"""The extract stage: every image of train/valid/test (and the mirrored test split under predict.tta) once
through the backbone, into features/SPLIT.h5, by way of the content-addressed feature cache."""
from __future__ import annotations

from typing import Callable

from components.config import Config
from components.data.dataset import SPLITS
from components.features.backbone import Backbone, build_backbone
from components.features.extraction import (
    ExtractionPlan,
    ExtractionResult,
    Progress,
    extract_file,
    feature_files,
    plan_extraction,
    source_split,
    split_rows,
)
from components.features.identity import TTA_DIR, feature_path, split_views
from components.features.shards import SHARDS_DIR, extract_in_shards
from components.features.store import write_feature_index
from components.files import write_json_atomic

SKIPPED_FILE = "skipped.json"


def extract_planned(config: Config, plan: ExtractionPlan, name: str, backbone: Backbone | None = None,
                    progress: Progress | None = None) -> ExtractionResult:
    """Extract one planned feature file (a split, or `test_flip`; building the backbone if none is given).
    With extract.shard_size, shard by shard in this process: the files `ffx pipeline` spreads over workers."""
    backbone = backbone or build_backbone(config.backbone, config.root, config.extract.precision)
    if config.extract.shard_size:
        return extract_in_shards(config, plan, name, backbone, progress)
    return extract_file(config, plan, name, backbone, feature_path(config, name), progress)


def write_extraction_reports(config: Config, plan: ExtractionPlan) -> None:
    """skipped.json (the bad images data.on_bad_image: skip left out), and an index of each output folder's feature
    files (tta/: test_flip.h5 under predict.tta; shards/: with extract.shard_size): DVC outputs that would
    otherwise be empty by design, which `dvc repro` warns about."""
    write_json_atomic(config.features.dir / SKIPPED_FILE, plan.skipped)
    for folder in (TTA_DIR, SHARDS_DIR):
        path = config.features.dir / folder
        path.mkdir(parents=True, exist_ok=True)
        write_feature_index(path)


def extract_stage(config: Config, splits: tuple[str, ...] = SPLITS,
                  progress_for: Callable[[str, int], Progress] | None = None) -> dict[str, ExtractionResult]:
    """Plan, then extract every feature file with one backbone; no backbone work if anything is wrong."""
    plan = plan_extraction(config, splits)
    backbone = build_backbone(config.backbone, config.root, config.extract.precision)
    results = {}
    for name in feature_files(config, tuple(plan.splits)):
        rows = len(split_rows(plan.splits[source_split(name)], split_views(config, name)))
        progress = progress_for(name, rows) if progress_for else None
        results[name] = extract_planned(config, plan, name, backbone, progress)
    write_extraction_reports(config, plan)
    return results
