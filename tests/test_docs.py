"""The docs that cannot drift: the configuration reference is generated from components/defaults.yaml, and the
recipe file is the defaults, complete and valid."""
import importlib.util

import yaml
from conftest import REPO

from components.config import default_params, load_config

RECIPE = REPO / "recipe.params.yaml"


def _generator():
    spec = importlib.util.spec_from_file_location("make_configuration", REPO / "docs" / "make_configuration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dotted(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_configuration_reference_is_what_the_defaults_give():
    generator = _generator()
    expected = generator.page((REPO / "components" / "defaults.yaml").read_text())
    assert (REPO / "docs" / "configuration.md").read_text() == expected, \
        "docs/configuration.md is stale: run `python docs/make_configuration.py`"


def test_configuration_reference_lists_every_key_with_its_default_and_comment():
    page = _generator().page("tuner:\n  max_trials: 7   # how many | at most\n  space:\n    units: [4, 8]\n")
    assert "| `tuner.max_trials` | `7` | how many \\| at most |" in page
    assert "| `tuner.space.units` | `[4, 8]` |" in page
    continued = _generator().page("finetune:\n  boundary: auto   # the last frozen layer:\n"
                                  "                   #   vgg16: block4_pool\n  epochs: 12\n")
    assert "| `finetune.boundary` | `auto` | the last frozen layer:<br>vgg16: block4_pool |" in continued
    assert "| `finetune.epochs` | `12` |  |" in continued
    reference = (REPO / "docs" / "configuration.md").read_text()
    for key in _dotted(default_params()):
        assert f"| `{key}` |" in reference, key


def test_recipe_file_validates_and_is_the_original_recipe():
    config = load_config(RECIPE)
    assert (config.backbone.name, config.backbone.weights, config.backbone.input_size,
            config.backbone.pooling) == ("vgg19", "imagenet", 150, "flatten")
    assert (config.tuner.algorithm, config.tuner.max_trials, config.tuner.executions_per_trial,
            config.train.epochs) == ("bayesian", 160, 2, 50)
    assert config.space.units == [4, 8, 16, 32, 64] and config.space.extra_when_units == [32, 64]
    assert (config.space.dropout_min, config.space.dropout_max, config.space.dropout_step) == (0.3, 0.8, 0.1)
    assert config.extract.augment.copies == 0 and config.predict.tta is False
    # Complete (DVC reads every param a stage lists from params.yaml, so a copy over it must run) and equal to
    # the defaults key for key: the recipe and the defaults cannot drift apart.
    recipe = _dotted(yaml.safe_load(RECIPE.read_text()))
    defaults = _dotted(default_params())
    assert sorted(recipe) == sorted(defaults), set(recipe) ^ set(defaults)
    assert {k: v for k, v in recipe.items() if defaults[k] != v} == {}
