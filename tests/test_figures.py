"""Every figure in the docs comes from a command that can make it again: each `bench/figures/*.json` carries the
`about` block that `bench.common.about` builds (the exact command, the commit, the CPU's model and SIMD flags, the
date), every figures file the docs and the README cite exists, and every bench that writes figures builds its
`about` with that one function. No TensorFlow: these read files and run git."""
import json
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from bench.common import ABOUT_KEYS, REPO, about, git_commit, simd_flags

FIGURES = REPO / "bench" / "figures"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CITED = re.compile(r"bench/figures/[\w.*-]+\.json")
COMMIT = re.compile(r"[0-9a-f]{7,40}(-dirty)?")


def about_problems(block) -> list[str]:
    """What keeps an `about` block from saying how its figures were made (empty: nothing)."""
    if not isinstance(block, dict):
        return [f"no about block (found {type(block).__name__})"]
    problems = [f"{key}: missing or empty" for key in ABOUT_KEYS if not block.get(key)]
    if problems:
        return problems
    for key in ("command", "cpu", "date"):
        if not isinstance(block[key], str) or block[key].strip().lower() in ("unknown", "?", "n/a", "none"):
            problems.append(f"{key}: {block[key]!r} is not a value")
    if not isinstance(block["commit"], str) or not COMMIT.fullmatch(block["commit"]):
        problems.append(f"commit: {block['commit']!r} is not a git hash (optionally with -dirty)")
    flags = block["cpu_flags"]
    if not isinstance(flags, list) or not all(isinstance(flag, str) and flag.strip() for flag in flags):
        problems.append(f"cpu_flags: {flags!r} is not a list of flags")
    try:
        datetime.fromisoformat(str(block["date"]))
    except ValueError:
        problems.append(f"date: {block['date']!r} is not ISO 8601")
    return problems


@pytest.mark.parametrize("path", sorted(FIGURES.glob("*.json")), ids=lambda path: path.name)
def test_every_figures_file_says_which_command_commit_cpu_and_date_made_it(path):
    assert about_problems(json.loads(path.read_text()).get("about")) == []


def test_every_figures_file_the_docs_cite_exists():
    missing = []
    for doc in DOCS:
        for cited in CITED.findall(doc.read_text()):
            if not (list(REPO.glob(cited)) if "*" in cited else (REPO / cited).is_file()):
                missing.append(f"{doc.relative_to(REPO)}: {cited}")
    assert missing == []


def test_the_about_builder_gives_every_key_a_value_from_this_machine_and_checkout():
    before = datetime.now(timezone.utc).replace(microsecond=0)
    block = about("bench.run", ["--quick", "--data", "../some folder"])
    assert tuple(block) == ABOUT_KEYS and about_problems(block) == []
    assert block["command"] == "python -m bench.run --quick --data '../some folder'"  # shell-quoted, as typed
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert block["commit"] in (head, head + "-dirty")
    assert block["cpu_flags"] == simd_flags()
    if Path("/proc/cpuinfo").is_file():
        words = set(Path("/proc/cpuinfo").read_text().split())
        assert block["cpu"] in Path("/proc/cpuinfo").read_text() and set(block["cpu_flags"]) <= words
        assert "smep" not in block["cpu_flags"] and "sse2" not in block["cpu_flags"]  # only the SIMD that matters
    assert before <= datetime.fromisoformat(block["date"]) <= datetime.now(timezone.utc)


def test_the_commit_is_marked_dirty_when_the_tree_differs_from_it(tmp_path):
    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    git("add", "a.txt")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    assert git_commit(tmp_path) == head
    (tmp_path / "a.txt").write_text("2")  # a change to a tracked file
    assert git_commit(tmp_path) == head + "-dirty"
    git("checkout", "-q", "a.txt")
    (tmp_path / "new.py").write_text("")  # an untracked file the bench could import
    assert git_commit(tmp_path) == head + "-dirty"
    assert git_commit(tmp_path / "new.py") == "unknown"  # not a folder in a checkout


def test_every_bench_that_writes_figures_builds_its_about_block_with_the_shared_function():
    # A bench that writes figures writes them under bench/results/ by default (bench.rss prints its one number).
    writers = [path for path in sorted((REPO / "bench").glob("*.py")) if '"bench" / "results"' in path.read_text()]
    assert {path.stem for path in writers} >= {"run", "search", "serving", "scaling", "finetune", "accuracy"}
    for path in writers:
        assert f'about("bench.{path.stem}", argv)' in path.read_text(), path.name
