"""What every bench shares: where the repository and the face dataset are, how a bench prints, the `about` block
every figures file starts with, and a project made of links to a subset of a dataset."""
from __future__ import annotations

import platform
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACES = REPO.parent / "shared" / "datasets" / "faces"
ABOUT_KEYS = ("command", "commit", "cpu", "cpu_flags", "date")
# The /proc/cpuinfo flags that decide how fast the numeric paths run: x86 vector and matrix units (AVX-512 and AMX
# in every variant: AVX512-BF16 and AMX-BF16 make extract.precision auto resolve to bfloat16), Arm's SIMD.
SIMD_FLAG = re.compile(r"(sse4_2|avx|avx2|fma|f16c|avx_vnni\w*|avx512\w*|amx\w*|asimd\w*|sve\w*|sme2?|bf16|i8mm)")


def about(module: str, argv: Sequence[str] | None = None) -> dict:
    """What a figures file needs to be reproduced: the exact command (`python -m MODULE ARGS`, the arguments as
    given: `argv`, or the process's own), the git commit of the code that ran (`-dirty` when the tree has changes,
    untracked files included), the CPU's model name and SIMD flags, and the date and time (ISO 8601, UTC).
    Every bench puts it first in the JSON it writes; tests/test_figures.py checks every bench/figures file has it."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return {"command": shlex.join(["python", "-m", module, *map(str, arguments)]), "commit": git_commit(),
            "cpu": cpu_model(), "cpu_flags": simd_flags(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def git_commit(repo: Path = REPO) -> str:
    """HEAD's full hash, with `-dirty` appended when the working tree differs from it; `unknown` outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout

    try:
        head = git("rev-parse", "HEAD").strip()
        return head + ("-dirty" if git("status", "--porcelain").strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform module knows, else `unknown`."""
    for line in _cpuinfo():
        if line.split(":", 1)[0].strip() == "model name":
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def simd_flags() -> list[str]:
    """The vector and matrix flags of the first CPU in /proc/cpuinfo (x86 `flags`, Arm `Features`), in its order."""
    for line in _cpuinfo():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return [flag for flag in value.split() if SIMD_FLAG.fullmatch(flag)]
    return []


def log(message: str) -> None:
    print(message, flush=True)


def ffx(folder: Path, command: str, overrides: Sequence[str]) -> float:
    """Run one `ffx` command in `folder` as a user runs it (its own process, `folder`/params.yaml, `--set` each
    override); its wall time in seconds."""
    import os
    import time

    started = time.perf_counter()
    arguments = [sys.executable, "-m", "ffx", command, "--params", str(folder / "params.yaml")]
    for override in overrides:
        arguments += ["--set", override]
    subprocess.run(arguments, cwd=folder, check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return time.perf_counter() - started


def subset_project(source: Path, folder: Path, per_class: int) -> Path:
    """A dataset of links to the first `per_class` images of each class and split (never copies)."""
    if per_class == 0:
        return source
    from components.data.images import is_image_name

    root = folder / "data"
    for split in ("train", "valid", "test"):
        for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True, exist_ok=True)
            for path in sorted(p for p in class_dir.iterdir() if is_image_name(p))[:per_class]:
                link = target / path.name
                if not link.exists():  # a resumed run reuses the links it made
                    link.symlink_to(path.resolve())
    return root
