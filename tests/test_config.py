from pathlib import Path

import pytest
import yaml
from conftest import REPO

from components.config import DEFAULTS_FILE, load_config
from components.errors import ConfigError
from components.tracking import tracking_uri


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_defaults_reproduce_the_original_recipe(tmp_path):
    config = load_config(_write(tmp_path, "{}"))
    assert (config.backbone.name, config.backbone.weights, config.backbone.input_size) == ("vgg19", "imagenet", 150)
    assert (config.tuner.algorithm, config.tuner.max_trials, config.tuner.executions_per_trial) == ("bayesian", 160, 2)
    assert config.train.epochs == 50
    assert config.space.units == [4, 8, 16, 32, 64] and config.space.extra_when_units == [32, 64]


def test_relative_paths_resolve_against_the_params_folder(tmp_path):
    config = load_config(_write(tmp_path, "features: {dir: feats}\n"))
    assert config.features.dir == tmp_path / "feats"
    assert tracking_uri(config) == f"sqlite:///{tmp_path}/mlruns/mlflow.db"


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'tuner.max_trails'.*max_trials"):
        load_config(_write(tmp_path, "tuner: {max_trails: 3}\n"))


def test_wrong_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.epochs' must be an integer"):
        load_config(_write(tmp_path, "train: {epochs: many}\n"))


def test_value_outside_choices_lists_allowed_values(tmp_path):
    with pytest.raises(ConfigError, match=r"'tuner.algorithm' must be one of bayesian, random, hyperband"):
        load_config(_write(tmp_path, "tuner: {algorithm: grid}\n"))


def test_empty_search_space_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"space.units"):
        load_config(_write(tmp_path, "space: {units: []}\n"))


def test_overrides_apply_and_are_checked(tmp_path):
    config = load_config(_write(tmp_path, "{}"), ["tuner.max_trials=3", "backbone.weights=none"])
    assert config.tuner.max_trials == 3 and config.backbone.weights == "none"
    with pytest.raises(ConfigError, match="unknown key 'tuner.nope'"):
        load_config(_write(tmp_path, "{}"), ["tuner.nope=1"])


def test_missing_params_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "absent.yaml")


def test_project_params_list_every_default_key():
    def keys(node, prefix=""):
        return {f"{prefix}{k}" for k in node} | {
            key for k, v in node.items() if isinstance(v, dict) for key in keys(v, f"{prefix}{k}.")}

    defaults = yaml.safe_load(DEFAULTS_FILE.read_text())
    project = yaml.safe_load((REPO / "params.yaml").read_text())
    assert keys(project) == keys(defaults)
    load_config(REPO / "params.yaml")


def test_schedule_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="'schedule.cron' is not a cron expression"):
        load_config(_write(tmp_path, "schedule: {cron: '61 * * * *'}\n"))
    with pytest.raises(ConfigError, match="'schedule.timezone' unknown"):
        load_config(_write(tmp_path, "schedule: {timezone: Mars/Olympus}\n"))
