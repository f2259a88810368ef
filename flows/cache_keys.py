"""Prefect's cache keys of the pipeline's tasks: (key, current). The key names a stage's inputs by content; `current`
says whether the stage's output exists and was made from those inputs, so that a deleted or stale output re-runs
instead of being a cache hit (Prefect's own policies hash a Path argument's string, not the files)."""
from __future__ import annotations

import json

from components.audit.counts import AUDIT_FILE
from components.config import Config
from components.data.dataset import Split, folder_records
from components.features.extraction import extraction_key, output_is_current
from components.features.identity import SEARCH_PART, configured_identity, feature_path, split_views, valid_part_key
from components.features.shards import shard_key, shard_path
from components.files import content_key, file_digest
from components.finetune.decision import decision_is_current, decision_path, settings_key
from components.model.head_file import head_paths
from components.reports.model_card import MODEL_CARD_FILE
from components.search.tuner import project_name
from components.stages.audit import audit_outputs
from components.stages.evaluate import METRICS_FILE


def extraction_cache_key(config: Config, split: Split, name: str) -> tuple[str, bool]:
    """`name`: the feature file, made from `split` (test_flip from test)."""
    key = extraction_key(split, configured_identity(config), split_views(config, name))
    return f"extract-{key}", output_is_current(feature_path(config, name), key)


def shard_cache_key(config: Config, rows: list, index: int, name: str) -> tuple[str, bool]:
    """`rows`: shard `index` of feature file `name` (components.features.shards.shard_rows)."""
    key = shard_key(rows, index, configured_identity(config))
    return f"shard-{key}", output_is_current(shard_path(config, name, index), key)


def tune_cache_key(config: Config, train_key: str, valid_key: str) -> tuple[str, bool]:
    """`valid_key`: the whole valid file's; the search reads its part not held out for decisions."""
    project = project_name(config, train_key, valid_part_key(config, valid_key, SEARCH_PART))
    model_path, metadata_path = head_paths(config)
    current = (model_path.is_file() and metadata_path.is_file()
               and json.loads(metadata_path.read_text()).get("search", {}).get("project") == project)
    return f"tune-{content_key({'project': project, 'model': config.section('model')})}", current


def finetune_cache_key(config: Config, feature_keys: dict[str, str]) -> tuple[str, bool]:
    """`feature_keys`: the extract stage's keys by feature file (the images and views the boundary features are
    made from too)."""
    model_path, _ = head_paths(config)
    head = file_digest(model_path) if model_path.is_file() else "missing"
    key = content_key({"head": head, "features": feature_keys, "settings": settings_key(config)})
    return f"finetune-{key}", decision_is_current(config, model_path)


def evaluate_cache_key(config: Config, test_key: str, valid_key: str) -> tuple[str, bool]:
    """`valid_key`: the champion and challenger are compared on valid images held out for decisions."""
    model_path, _ = head_paths(config)
    head = file_digest(model_path) if model_path.is_file() else "missing"
    audit = config.metrics.dir / AUDIT_FILE  # the model card quotes its counts
    decision = decision_path(config)
    key = content_key({"head": head, "test": test_key, "valid": valid_key,
                       "decision_fraction": config.tuner.decision_fraction,
                       "finetune": file_digest(decision) if decision.is_file() else "none",
                       "mlflow": config.section("mlflow"), "registry": config.section("registry"),
                       "metrics": config.section("metrics"), "audit": file_digest(audit) if audit.is_file() else None})
    outputs = (config.metrics.dir / METRICS_FILE, config.reports.dir / MODEL_CARD_FILE)
    return f"evaluate-{key}", all(path.is_file() for path in outputs)


# --- audit ---
def audit_cache_key(config: Config, feature_keys: dict[str, str]) -> tuple[str, bool]:
    """`feature_keys`: the train, valid and test feature files' keys (their images' contents and backbone); with
    audit.drift_folder, its images' contents too (a scheduled run checks the images added since)."""
    folder = config.audit.drift_folder
    drift = [(r.relpath, r.sha1) for r in folder_records(folder)] if folder and folder.is_dir() else None
    key = content_key({"features": {name: feature_keys[name] for name in ("train", "valid", "test")}, "drift": drift,
                       "audit": config.section("audit"), "metrics": config.section("metrics"),
                       "reports": config.section("reports"), "mlflow": config.section("mlflow")})
    return f"audit-{key}", all(path.is_file() for path in audit_outputs(config))
# --- end audit ---
