"""dvc.yaml declares every code file each stage runs: derived from the imports of the stage's `ffx` command."""
import pytest
import yaml

from conftest import REPO
from import_graph import closure_files


def stage_files(command: str) -> set[str]:
    """What `ffx COMMAND` reads as code: the import closure of the root command and of the command's own module."""
    from ffx.cli import command_module

    return closure_files(["ffx.cli", command_module(command)])


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
