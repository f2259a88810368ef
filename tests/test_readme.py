"""Every command of README.md's code blocks runs, in order, on a tiny DVC project standing in for the demo run.

A ```bash or ```python block whose first line is `# illustrative: REASON` is skipped (it installs, or needs the
user's images); any other block must run to exit code 0. Demo paths are replaced by the tiny dataset's."""
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import REPO, free_port
from test_pipeline import _dvc_project, _run

pytestmark = pytest.mark.e2e
BIN = os.path.dirname(sys.executable)
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
# The demo's paths and port -> the tiny project's (make_dataset: data/test/blue/blue_02.jpg).
DEMO = {"data/demo/test/pagoda/test_pagoda_001.jpg": "data/test/blue/blue_02.jpg",
        "data/demo/test/pagoda/": "data/test/blue/"}


def readme_blocks() -> list[tuple[str, str]]:
    return [(language, body) for language, body in BLOCK.findall((REPO / "README.md").read_text())]


def runnable(body: str) -> bool:
    return not body.lstrip().startswith("# illustrative:")


def test_readme_marks_only_install_and_own_data_blocks_illustrative():
    blocks = readme_blocks()
    skipped = [body for _, body in blocks if not runnable(body)]
    assert len(skipped) == 3, skipped  # the two install commands and the recipe on the user's own images
    assert sum(runnable(body) for _, body in blocks) >= 5


def test_every_readme_command_runs_on_a_tiny_demo(tmp_path):
    project = _dvc_project(tmp_path, ("blue", "red"))
    git = ["git", "-c", "user.name=ffx", "-c", "user.email=ffx@localhost"]
    _run([*git, "add", "-A"], project)
    _run([*git, "commit", "-qm", "tiny project"], project)  # dvc exp run needs a commit to branch from
    port = str(free_port())
    # A user's shell: none of the MLFLOW_* variables that in-process tests leave in this process's environment
    # (mlflow.set_registry_uri exports MLFLOW_REGISTRY_URI; a served block would look in another test's registry).
    clean = {name: value for name, value in os.environ.items() if not name.startswith("MLFLOW_")}
    env = dict(clean, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", TF_CPP_MIN_LOG_LEVEL="3",
               GIT_AUTHOR_NAME="ffx", GIT_AUTHOR_EMAIL="ffx@localhost", GIT_COMMITTER_NAME="ffx",
               GIT_COMMITTER_EMAIL="ffx@localhost")
    ran = 0
    for language, body in readme_blocks():
        if not runnable(body):
            continue
        for demo, tiny in DEMO.items():
            body = body.replace(demo, tiny)
        body = body.replace("5001", port)
        command = ["bash", "-euo", "pipefail", "-c", body] if language == "bash" else [sys.executable, "-c", body]
        process = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)
        try:
            out, err = process.communicate(timeout=900)
        finally:
            try:
                os.killpg(process.pid, signal.SIGTERM)  # anything the block left running (a server)
            except ProcessLookupError:
                pass
        assert process.returncode == 0, f"README block failed ({process.returncode}):\n{body}\n{out}\n{err}"
        assert "Traceback" not in err, f"{body}\n{err}"
        if "predict" in body or "invocations" in body:
            # a class of the tiny dataset for each image (which one is the tiny model's business, not the README's)
            assert re.search(r'"class": "(blue|red)"|\t(blue|red)\t| (blue|red) ', out), f"{body}\n{out}"
        ran += 1
    assert ran >= 5
