"""Prefect's cache keys of the pipeline's tasks: (key, current). A key is made of what the stage declares it reads
(components/contract.py, where dvc.yaml's params and deps come from too): the values of its params, the digests of
its input files, and the contents of the code it runs. `current` says whether the stage's output exists and was made
from those inputs, so that a deleted or stale output re-runs instead of being a cache hit (Prefect's own policies
hash a Path argument's string, not the files)."""
from __future__ import annotations

import json

from components.codebase import code_key
from components.config import Config
from components.contract import STAGES, input_digests, param_values, stage_module
from components.data.dataset import Split, folder_records
from components.features.extraction import ExtractionPlan, extraction_key, output_is_current
from components.features.identity import SEARCH_PART, configured_identity, feature_path, split_views, valid_part_key
from components.features.shards import shard_key, shard_path
from components.files import content_key
from components.finetune.decision import decision_is_current
from components.model.head_file import head_paths
from components.reports.model_card import MODEL_CARD_FILE
from components.search.tuner import project_name
from components.stages.audit import audit_outputs
from components.stages.evaluate import METRICS_FILE


def code_keys() -> dict[str, str]:
    """Each stage's code as a key, read once per run: every shard task's key needs its stage's."""
    return {declared.name: code_key([stage_module(declared.name)]) for declared in STAGES}


def _declared(config: Config, stage: str, code: dict[str, str]) -> dict:
    """The stage's params and code (`code`: code_keys()): in every key of its tasks."""
    return {"params": param_values(config, stage), "code": code[stage]}


def data_digests(plan: ExtractionPlan) -> dict[str, str]:
    """The image folders a stage declares (`${data.root}`, `${data.root}/SPLIT`) as digests of what the plan read:
    it has hashed every image already, so no stage's key reads them again. An image's bytes, path or class change
    them, as they change the folder for DVC; a file that is no image, or that data.exclude leaves out, does not."""
    splits = {f"${{data.root}}/{name}": split.content_hash for name, split in plan.splits.items()}
    return {"${data.root}": content_key(sorted(splits.items())), **splits}


def stage_key(config: Config, stage: str, feature_keys: dict[str, str], code: dict[str, str],
              data: dict[str, str]) -> str:
    """`feature_keys`: the extraction's content key of each feature file it wrote (train, valid, test, test_flip),
    which stands for that file's digest; `data`: data_digests(plan)."""
    known = {**data, **{f"${{features.dir}}/{name}.h5": key for name, key in feature_keys.items()}}
    inputs = input_digests(config, stage, known)
    return f"{stage}-{content_key({**_declared(config, stage, code), 'inputs': inputs})}"


def extraction_cache_key(config: Config, split: Split, name: str, code: dict[str, str]) -> tuple[str, bool]:
    """`name`: the feature file, made from `split` (test_flip from test); its images stand for the data folder."""
    key = extraction_key(split, configured_identity(config), split_views(config, name))
    return f"extract-{content_key({**_declared(config, 'extract', code), 'file': key})}", output_is_current(
        feature_path(config, name), key)


def shard_cache_key(config: Config, rows: list, index: int, name: str, code: dict[str, str]) -> tuple[str, bool]:
    """`rows`: shard `index` of feature file `name` (components.features.shards.shard_rows)."""
    key = shard_key(rows, index, configured_identity(config))
    return f"shard-{content_key({**_declared(config, 'extract', code), 'shard': key})}", output_is_current(
        shard_path(config, name, index), key)


def tune_cache_key(config: Config, feature_keys: dict[str, str], code: dict[str, str],
                   data: dict[str, str]) -> tuple[str, bool]:
    """Current when the saved head came from this search (the valid images it used: those not held out)."""
    project = project_name(config, feature_keys["train"], valid_part_key(config, feature_keys["valid"], SEARCH_PART))
    head, metadata_path = head_paths(config)
    current = (head.is_file() and metadata_path.is_file()
               and json.loads(metadata_path.read_text()).get("search", {}).get("project") == project)
    return stage_key(config, "tune", feature_keys, code, data), current


def finetune_cache_key(config: Config, feature_keys: dict[str, str], code: dict[str, str],
                       data: dict[str, str]) -> tuple[str, bool]:
    return stage_key(config, "finetune", feature_keys, code, data), decision_is_current(config, head_paths(config)[0])


def evaluate_cache_key(config: Config, feature_keys: dict[str, str], code: dict[str, str],
                       data: dict[str, str]) -> tuple[str, bool]:
    outputs = (config.metrics.dir / METRICS_FILE, config.reports.dir / MODEL_CARD_FILE)
    return stage_key(config, "evaluate", feature_keys, code, data), all(path.is_file() for path in outputs)


def audit_cache_key(config: Config, feature_keys: dict[str, str], code: dict[str, str],
                    data: dict[str, str]) -> tuple[str, bool]:
    """With audit.drift_folder, its images' contents too: a scheduled run audits the images added since. (DVC
    cannot declare a folder that may be unset, so dvc.yaml names the param only.)"""
    folder = config.audit.drift_folder
    drift = [(r.relpath, r.sha1) for r in folder_records(folder)] if folder and folder.is_dir() else None
    key = stage_key(config, "audit", feature_keys, code, data)
    return key if drift is None else f"{key}-{content_key(drift)}", all(p.is_file() for p in audit_outputs(config))
