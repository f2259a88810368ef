"""Each `ffx` command is its own module, loaded when it runs: a DVC stage depends on its own command's code only."""
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, assert_one_line_error, run_ffx

DVC = [sys.executable, "-m", "dvc"]


def _run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    return done.stdout


def _checkout(destination: Path) -> Path:
    """This checkout's files that git does not ignore (the .dvc folder with them), in a git repository of their own."""
    tracked = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO).split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    _run(["git", "init", "-q"], destination)
    return destination


def _status(project: Path) -> dict:
    return json.loads(_run([*DVC, "status", "--json"], project))


def _record_the_code_in_dvc_lock(project: Path) -> None:
    """dvc.lock made to hold this checkout's code, whatever the tracked lock was made from: the data and outputs
    that no stage has made here stand in as empty files (folders where a path lies under them), and `dvc commit`
    records every stage's dependencies as they are."""
    missing = {path for entries in _status(project).values() for entry in entries if isinstance(entry, dict)
               for changes in entry.values() for path, state in changes.items()
               if state in ("deleted", "not in cache")}
    for path in sorted(missing):
        if any(other.startswith(path + "/") for other in missing):
            (project / path).mkdir(parents=True, exist_ok=True)
    for path in sorted(missing):
        if not (project / path).exists():
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            (project / path).write_bytes(b"")
    _run([*DVC, "commit", "--force", "--quiet"], project)


def _defining_file(project: Path, function: str) -> Path:
    (found,) = [p for p in (project / "ffx").rglob("*.py") if re.search(rf"^def {function}\(", p.read_text(), re.M)]
    return found


def test_editing_the_audit_command_leaves_the_tune_stage_unchanged(tmp_path):
    project = _checkout(tmp_path / "project")
    _record_the_code_in_dvc_lock(project)
    before = _status(project)

    audit_code = _defining_file(project, "audit")
    text = audit_code.read_text()
    edited = text.replace('"""Label issues', '"""Find label issues', 1)
    assert edited != text, f"the audit command's help string was not found in {audit_code}"
    audit_code.write_text(edited)
    after = _status(project)

    assert after.get("tune") == before.get("tune"), after.get("tune")
    assert after.get("audit") != before.get("audit")
    changed = {path for entry in after["audit"] if isinstance(entry, dict) for path in entry.get("changed deps", {})}
    assert audit_code.relative_to(project).as_posix() in changed, after["audit"]


def test_a_command_imports_its_own_module_only():
    code = ("import sys\nfrom ffx.cli import main\nsys.argv = ['ffx', 'tune', '--help']\n"
            "try:\n    main()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ffx'))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--workers" in done.stdout  # the tune command's own help
    assert done.stdout.splitlines()[-1] == str(["ffx", "ffx.cli", "ffx.commands", "ffx.commands.tune", "ffx.options"])


def test_every_command_module_is_a_listed_command():
    import ffx.commands
    from ffx.cli import COMMANDS, command_module

    assert command_module("demo-data") == "ffx.commands.demo_data"
    modules = {f"ffx.commands.{m.name}" for m in pkgutil.iter_modules(ffx.commands.__path__)}
    assert modules == {command_module(name) for name in COMMANDS}


def test_debug_holds_for_its_own_run_only(tmp_path):
    from components.errors import ConfigError

    with pytest.raises(ConfigError):  # --debug: the error keeps its traceback
        run_ffx(tmp_path, "--debug", "runs", "--params", "missing.yaml")
    assert_one_line_error(run_ffx(tmp_path, "runs", "--params", "missing.yaml"), "missing.yaml")
