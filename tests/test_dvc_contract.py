"""dvc.yaml declares every code file each stage runs: derived from the imports of the stage's `ffx` command."""
import ast

import pytest
import yaml

from conftest import REPO
from import_graph import closure_files, imports_in, tree


def _command_imports(command: str) -> set[str]:
    """What `ffx COMMAND` imports: ffx/cli.py's module level, `main` and the command's function, with the cli.py
    helpers they call."""
    cli = tree("ffx.cli")
    functions = {f.name: f for f in cli.body if isinstance(f, ast.FunctionDef)}
    todo, seen = ["main", command.replace("-", "_")], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [c.func.id for c in ast.walk(functions[name])
                 if isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and c.func.id in functions]
    top = ast.Module([n for n in cli.body if not isinstance(n, ast.FunctionDef)], [])
    return imports_in(top, "ffx.cli") | {m for name in seen for m in imports_in(functions[name], "ffx.cli")}


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
    declared_code = {d for d in declared if d.split("/")[0] in ("components", "ffx", "flows")}
    needed = stage_files(command)
    missing, stale = sorted(needed - declared_code), sorted(declared_code - needed)
    assert not missing, f"dvc.yaml stage '{stage}' misses dependencies it runs: {', '.join(missing)}"
    assert not stale, f"dvc.yaml stage '{stage}' lists files it does not run: {', '.join(stale)}"
