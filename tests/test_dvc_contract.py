"""dvc.yaml declares every code file each stage runs: derived from the imports of the stage's `ffx` command."""
import ast
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PACKAGES = ("components", "ffx", "flows")


def _imports(node: ast.AST, module: str) -> set[str]:
    """Project modules imported anywhere under `node` (function-level imports too: they run when called)."""
    found = set()
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            found |= {alias.name for alias in item.names}
        elif isinstance(item, ast.ImportFrom):
            base = item.module or ""
            if item.level:  # relative: from the importing module's package
                base = ".".join(module.split(".")[:-item.level] + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in item.names}
    return {name for name in found if name.split(".")[0] in PACKAGES and _file(name)}


def _file(module: str) -> Path | None:
    path = REPO / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _tree(module: str) -> ast.Module:
    return ast.parse(_file(module).read_text())


def _command_imports(command: str) -> set[str]:
    """What `ffx COMMAND` imports: ffx/cli.py's module level, `main` and the command's function, with the cli.py
    helpers they call."""
    tree = _tree("ffx.cli")
    functions = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    todo, seen = ["main", command.replace("-", "_")], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [c.func.id for c in ast.walk(functions[name])
                 if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in functions]
    top = ast.Module([n for n in tree.body if not isinstance(n, ast.FunctionDef)], [])
    return _imports(top, "ffx.cli") | {m for name in seen for m in _imports(functions[name], "ffx.cli")}


def closure_files(modules: list[str], followed: set[str] = frozenset()) -> set[str]:
    """Every file `modules` read as code: their import closure (packages' __init__.py included; `followed` are
    included without following their imports) and the data and code files its modules name beside themselves
    (components/defaults.yaml, the registered model's classifier_model.py)."""
    todo, modules = list(modules), set(followed)
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for package in (".".join(parts[:i]) for i in range(1, len(parts))):
            todo.append(package)
        if module not in modules:
            modules.add(module)
            todo += _imports(_tree(module), module)
    files = {_file(m) for m in modules}
    for path in list(files):
        names = {n.value for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        files |= {path.parent / name for name in names
                  if re.fullmatch(r"[\w-]+\.(yaml|yml|json|txt|py)", name) and (path.parent / name).is_file()}
    return {p.relative_to(REPO).as_posix() for p in files}


def stage_files(command: str) -> set[str]:
    """What `ffx COMMAND` reads as code; of cli.py, only what the command imports."""
    return closure_files([*_command_imports(command), "ffx"], followed={"ffx.cli"})


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", list(_stages()))
def test_dvc_yaml_lists_exactly_the_code_each_stage_runs(stage):
    spec = _stages()[stage]
    program, command = spec["cmd"].split()[:2]
    assert program == "ffx", f"{stage}: expected an `ffx COMMAND` cmd, got {spec['cmd']!r}"
    declared = {d if isinstance(d, str) else next(iter(d)) for d in spec["deps"]}
    declared_code = {d for d in declared if d.split("/")[0] in PACKAGES}
    needed = stage_files(command)
    missing, stale = sorted(needed - declared_code), sorted(declared_code - needed)
    assert not missing, f"dvc.yaml stage '{stage}' misses dependencies it runs: {', '.join(missing)}"
    assert not stale, f"dvc.yaml stage '{stage}' lists files it does not run: {', '.join(stale)}"


def test_the_registered_model_carries_exactly_the_code_it_imports():
    from components.registry import MODEL_FILES

    carried = {f"components/{name}" for name in MODEL_FILES}
    needed = closure_files(["components.classifier_model"])
    assert carried == needed, (f"registry.MODEL_FILES: missing {sorted(needed - carried)}, "
                               f"not needed {sorted(carried - needed)}")
