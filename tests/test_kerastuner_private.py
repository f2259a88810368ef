"""The private KerasTuner names ffx relies on still exist: a KerasTuner upgrade that drops one fails here, by name,
instead of deep inside a search. keras-tuner is pinned in pyproject.toml to the range this was checked on."""
import ast
import importlib

import pytest
from conftest import REPO

MODULES = {  # module -> names imported from it
    "keras_tuner.src.engine.hyperparameters": ["HyperParameters", "Choice", "Boolean", "Int", "Float", "Fixed"],
    "keras_tuner.src.engine.trial": ["TrialStatus"],
}
METHODS = {  # class -> private methods called or overridden (oracle.py, head_group.py)
    "keras_tuner.Tuner": ["_get_checkpoint_fname"],
    "keras_tuner.oracles.BayesianOptimizationOracle": ["_vectorize_trials", "_nonfixed_space", "populate_space"],
}
ATTRIBUTES = {  # instance attributes read (GridBayesianOracle)
    "oracle": ["gpr", "beta", "num_initial_points", "ongoing_trials"],
}


def _resolve(dotted: str):
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("module", list(MODULES))
def test_private_modules_and_their_names_exist(module):
    try:
        imported = importlib.import_module(module)
    except ImportError:
        pytest.fail(f"KerasTuner no longer has the private module {module}")
    missing = [name for name in MODULES[module] if not hasattr(imported, name)]
    assert not missing, f"KerasTuner's {module} no longer has {', '.join(missing)}"


@pytest.mark.parametrize("owner", list(METHODS))
def test_private_methods_exist(owner):
    missing = [name for name in METHODS[owner] if not callable(getattr(_resolve(owner), name, None))]
    assert not missing, f"KerasTuner's {owner} no longer has {', '.join(missing)}"


def test_private_attributes_exist():
    import keras_tuner as kt

    from components.search.oracle import GridBayesianOracle

    objects = {"oracle": GridBayesianOracle(objective=kt.Objective("val_loss", "min"), max_trials=1)}
    missing = [f"{owner}.{name}" for owner, names in ATTRIBUTES.items() for name in names
               if not hasattr(objects[owner], name)]
    assert not missing, f"KerasTuner objects no longer have {', '.join(missing)}"


def test_every_private_module_the_code_imports_is_listed_here():
    unlisted = [f"{path.name}: {node.module}.{alias.name}" for path in sorted((REPO / "components").rglob("*.py"))
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_tuner.src")
                for alias in node.names if node.module not in MODULES and f"{node.module}.{alias.name}" not in MODULES]
    assert not unlisted, f"private KerasTuner imports not checked here: {', '.join(unlisted)}"
