"""ffx uses KerasTuner through its public API only, so that a KerasTuner release that keeps its API keeps ffx working.

Two rules over the code (components/, flows/, ffx/, bench/), checked on its syntax:
1. No import of KerasTuner's internal packages (keras_tuner.src, keras_tuner.engine), nor access to them through
   the package (`kt.engine...`).
2. In the modules that handle KerasTuner's objects (those that import keras_tuner, and components/search/, whose
   mixins become part of KerasTuner's tuners), no `x._name` access, except `self._name` where the enclosing
   class defines `_name` itself; and no class there defines a `_name` that KerasTuner's own source uses (an
   override of, or a clash with, one of its private attributes).
"""
import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

from conftest import REPO

CHECKED_DIRS = ("components", "flows", "ffx", "bench")
INTERNAL_PACKAGES = ("keras_tuner.src", "keras_tuner.engine")
HANDLES_KERAS_TUNER_OBJECTS = REPO / "components" / "search"


def _sources() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text()) for folder in CHECKED_DIRS for path in sorted((REPO / folder).rglob("*.py"))}


def _is_internal(module: str) -> bool:
    return any(module == package or module.startswith(package + ".") for package in INTERNAL_PACKAGES)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imports_keras_tuner(tree: ast.Module) -> bool:
    return any((isinstance(node, ast.Import) and any(a.name.split(".")[0] == "keras_tuner" for a in node.names))
               or (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "keras_tuner")
               for node in ast.walk(tree))


def internal_uses(tree: ast.Module) -> list[str]:
    """Rule 1: the internal KerasTuner modules the code imports or reaches through the package."""
    found, package_names = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _is_internal(alias.name):
                    found.append(alias.name)
                elif alias.name == "keras_tuner":
                    package_names.add(alias.asname or alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if _is_internal(node.module):
                found.append(node.module)
            elif node.module == "keras_tuner":
                found += [f"keras_tuner.{a.name}" for a in node.names if _is_internal(f"keras_tuner.{a.name}")]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in package_names and _is_internal(f"keras_tuner.{node.attr}"):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def keras_tuner_private_names() -> set[str]:
    """Every private name KerasTuner's own source defines or accesses (attributes, methods, classes), read from the
    installed package without importing it."""
    root = Path(importlib.util.find_spec("keras_tuner").submodule_search_locations[0])
    names = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
    return {name for name in names if _is_private(name)}


def _defined_by(cls: ast.ClassDef) -> set[str]:
    """The names a class defines itself: its methods, class attributes and `self.x = ...` attributes."""
    names = set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
    return names


def private_uses(tree: ast.Module, keras_tuner_names: set[str]) -> list[str]:
    """Rule 2: `x._name` accesses and class definitions of KerasTuner's private names."""
    found = []

    def visit(node: ast.AST, cls: ast.ClassDef | None, own: set[str]) -> None:
        if isinstance(node, ast.ClassDef):
            cls, own = node, _defined_by(node)
            found.extend(f"{node.name} defines KerasTuner's {name}" for name in sorted(own)
                         if name in keras_tuner_names)
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not (on_self and node.attr in own and node.attr not in keras_tuner_names):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        for child in ast.iter_child_nodes(node):
            visit(child, cls, own)

    visit(tree, None, set())
    return found


def _handles_keras_tuner_objects(path: Path, tree: ast.Module) -> bool:
    return _imports_keras_tuner(tree) or path.is_relative_to(HANDLES_KERAS_TUNER_OBJECTS)


def test_no_module_imports_keras_tuner_internals():
    found = [f"{path.relative_to(REPO)}: {use}" for path, tree in _sources().items() for use in internal_uses(tree)]
    assert not found, "KerasTuner internals used:\n" + "\n".join(found)


def test_no_private_attribute_of_a_keras_tuner_object_is_used():
    names = keras_tuner_private_names()
    assert {"_vectorize_trials", "_get_checkpoint_fname", "_random_values"} <= names  # the names are found at all
    found = [f"{path.relative_to(REPO)}: {use}" for path, tree in _sources().items()
             if _handles_keras_tuner_objects(path, tree) for use in private_uses(tree, names)]
    assert not found, "private KerasTuner attributes used:\n" + "\n".join(found)


PLANTED = '''
import keras_tuner as kt
import keras_tuner.engine.trial
from keras_tuner import engine
from keras_tuner.src.engine import trial as trial_module


class Oracle(kt.oracles.BayesianOptimizationOracle):
    def populate_space(self, trial_id):
        x, y = self._vectorize_trials()
        hps = self._nonfixed_space()
        return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": self._pick(x, hps)}

    def _vectorize_trials(self):
        self._cache = None

    def _pick(self, x, hps):
        return self._cache


def checkpoint(tuner, trial):
    return tuner._get_checkpoint_fname(trial.trial_id)
'''


def test_the_rules_catch_planted_internal_imports_and_private_attributes():
    tree = ast.parse(PLANTED)
    assert sorted(internal_uses(tree)) == ["keras_tuner.engine", "keras_tuner.engine.trial", "keras_tuner.src.engine",
                                           "kt.engine"]
    assert private_uses(tree, keras_tuner_private_names()) == [
        "Oracle defines KerasTuner's _vectorize_trials",  # an override: KerasTuner calls it, it is its internals
        "line 10: self._vectorize_trials",
        "line 11: self._nonfixed_space",                  # inherited from KerasTuner, not defined by the class
        "line 22: tuner._get_checkpoint_fname",
    ]  # self._pick and self._cache are the class's own


def test_the_search_report_imports_neither_keras_nor_keras_tuner():
    """It needs only the names of the head's hyperparameters, not the space that declares them."""
    code = ("import sys, components.reports.search_report; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'keras_tuner', 'tensorflow'}))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
