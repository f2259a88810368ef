"""One declaration per stage (components/contract.py): dvc.yaml is made from it and from the code each command runs,
and Prefect's cache keys change with exactly the params dvc.yaml declares for their stage."""
from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from components.config import Config, default_params, load_config, write_params
from components.data.dataset import ImageRecord, Split
from components.features.extraction import ExtractionPlan
from conftest import REPO

# Values for string params that are neither a choice nor a path a suffix can change.
OTHER_TEXT = {"backbone.weights": "none", "backbone.layer": "block4_pool", "finetune.boundary": "block4_pool",
              "mlflow.tracking_uri": "sqlite:///mlruns/other.db", "predict.model": "models:/other@champion",
              "orchestration.dask_address": "tcp://127.0.0.1:8786", "schedule.cron": "0 3 * * *",
              "schedule.timezone": "Europe/Paris", "data.exclude": "exclude.txt", "audit.drift_folder": "new-images"}


def leaves(mapping: dict, prefix: str = ""):
    for name, value in mapping.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _choices(key: str) -> list:
    """The other values of a choice param (a Literal in the typed config)."""
    model: type = Config
    *sections, name = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    annotation = model.model_fields[name].annotation
    return list(typing.get_args(annotation)) if typing.get_origin(annotation) is typing.Literal else []


def other_values(key: str, value) -> list:
    """Values to try in place of `value`, first the likeliest to pass the config's checks."""
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value + 2]
    if isinstance(value, float):
        return [value / 2, value + 0.01]
    if isinstance(value, list):
        return [value[:-1], value[1:]]
    return [c for c in [OTHER_TEXT.get(key), *_choices(key), f"{value}-other"] if c is not None and c != value]


def patch(key: str, value) -> dict:
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def changed_config(folder: Path, base: Config, key: str, value) -> Config:
    """The config with param `key` set to another value that passes its checks and changes what it resolves to."""
    from components.contract import param_value
    from components.errors import FFXError

    failures = []
    for candidate in other_values(key, value):
        try:
            config = load_config(write_params(folder / "params.yaml", patch(key, candidate)))
        except FFXError as exc:
            failures.append(str(exc))
            continue
        if param_value(config, key) != param_value(base, key):
            return config
    pytest.fail(f"{key}: no other value of {value!r} passes the config's checks ({'; '.join(failures)}); add one "
                "to OTHER_TEXT")


def stage_keys(config: Config) -> dict[str, str]:
    """Every stage's Prefect cache keys, with the same input files and images (none on disk) and the same code."""
    from flows import cache_keys

    code = {name: "code" for name in ("extract", "tune", "finetune", "evaluate", "audit")}
    features = {"train": "train-key", "valid": "valid-key", "test": "test-key"}
    record = ImageRecord(config.root / "train/a/1.jpg", "train/a/1.jpg", 0, 1, "0" * 40)
    split = Split("train", config.root, ("a", "b"), (record,))
    extract = [cache_keys.extraction_cache_key(config, split, name, code)[0] for name in ("train", "valid", "test")]
    data = cache_keys.data_digests(ExtractionPlan({name: split for name in ("train", "valid", "test")}, {}))
    return {"extract": " ".join(extract),
            **{name: getattr(cache_keys, f"{name}_cache_key")(config, features, code, data)[0]
               for name in ("tune", "finetune", "evaluate", "audit")}}


def test_a_stage_reads_its_image_folders_from_the_plan_and_its_key_changes_with_their_images(tmp_path):
    """The flow's plan has hashed every image: each image folder a stage declares is one of the plan's digests (no
    second pass over the images), and a test image's new bytes change the key of each stage that reads test."""
    from components.contract import STAGES
    from flows import cache_keys

    config = load_config(write_params(tmp_path / "params.yaml"))
    code = {name: "code" for name in ("extract", "tune", "finetune", "evaluate", "audit")}
    features = {"train": "train-key", "valid": "valid-key", "test": "test-key"}

    def keys(sha1: str) -> dict[str, str]:
        record = ImageRecord(config.root / "test/a/1.jpg", "test/a/1.jpg", 0, 1, sha1)
        plan = ExtractionPlan({name: Split(name, config.root, ("a", "b"), (record,) if name == "test" else ())
                               for name in ("train", "valid", "test")}, {})
        data = cache_keys.data_digests(plan)
        folders = {item.name for declared in STAGES for item in declared.deps if item.name.startswith("${data.root}")}
        assert folders <= set(data)
        return {name: getattr(cache_keys, f"{name}_cache_key")(config, features, code, data)[0]
                for name in ("tune", "finetune", "evaluate", "audit")}

    before, after = keys("0" * 40), keys("1" * 40)
    assert {name for name in before if before[name] != after[name]} == {"finetune", "evaluate", "audit"}


def dvc_params() -> dict[str, list[str]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: spec.get("params", []) for name, spec in stages.items()}


def test_prefect_cache_keys_change_with_exactly_the_params_dvc_yaml_declares(tmp_path):
    base = load_config(write_params(tmp_path / "params.yaml"))
    before, declared = stage_keys(base), dvc_params()
    disagreements = []
    for key, value in leaves(default_params()):
        after = stage_keys(changed_config(tmp_path, base, key, value))
        changed = {stage for stage in before if after[stage] != before[stage]}
        expected = {stage for stage, params in declared.items()
                    if any(key == p or key.startswith(f"{p}.") for p in params)}
        if changed != expected:
            disagreements.append(f"{key}: the Prefect keys of {sorted(changed) or 'no stage'} change, dvc.yaml "
                                 f"declares it for {sorted(expected) or 'no stage'}")
    assert not disagreements, "\n".join(disagreements)


def test_dvc_yaml_is_made_from_the_declarations():
    from ffx.dvc_yaml import DVC_YAML, render

    assert DVC_YAML.read_text() == render(), "dvc.yaml is stale: run `python -m ffx.dvc_yaml`"


def test_a_stage_declares_a_param_by_its_key_or_a_section_above_it():
    from components.contract import declares, stage

    assert declares(stage("evaluate"), "predict.batch_size")  # the registered model's spec
    assert declares(stage("finetune"), "tuner.decision_fraction")
    assert not declares(stage("finetune"), "tuner.max_trials")
    assert not declares(stage("extract"), "features.cache_dir")  # where the cache lives changes no output
