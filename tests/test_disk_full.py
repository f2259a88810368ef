"""A disk that fills up while the pipeline writes: one `error:` line naming the path and the free space, exit code 2,
no traceback and no segmentation fault, nothing partial under a final name; with space freed the next run completes
and reuses what was written. The small file system is a real tmpfs mount where this user may mount (root, as in
CI's container), else a real file size limit (RLIMIT_FSIZE: writes past it fail with EFBIG)."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import resource
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import FFX, make_dataset, write_params

from components.config import load_config
from components.errors import DiskFullError
from components.files import write_text_atomic

UNLIMITED = 1 << 40


class SmallFilesystem:
    """A folder that holds at most `size` bytes: a tmpfs of that size, or (where mounting is refused) every file
    written by a process limited to `size` bytes. `grow()` frees space: the mount grows, or the limit goes."""

    def __init__(self, folder: Path, size: int):
        self.folder, self.size = folder, size
        folder.mkdir(parents=True)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                 capture_output=True, check=False)
        self.mounted = mounted.returncode == 0
        self.limited = not self.mounted

    def preexec(self):
        """For a subprocess: under the file size limit, with SIGXFSZ ignored so that a write fails with EFBIG."""
        if self.limited:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    @contextlib.contextmanager
    def in_this_process(self):
        if not self.limited:
            yield
            return
        before = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, before[1]))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, before)
            signal.signal(signal.SIGXFSZ, handler)

    def grow(self, size: int = 256 << 20) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", f"remount,size={size}", str(self.folder)], check=True)
        self.limited = False

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], check=False)


@pytest.fixture
def small_fs(tmp_path):
    made = []

    def make(name: str, size: int) -> SmallFilesystem:
        made.append(SmallFilesystem(tmp_path / name, size))
        return made[-1]

    yield make
    for fs in made:
        fs.close()


def run_ffx_limited(project: Path, fs: list[SmallFilesystem], *args: str,
                    env: dict | None = None) -> subprocess.CompletedProcess:
    """`ffx ARGS` in its own process (a segmentation fault must show as such, not take pytest down)."""
    def preexec():
        for each in fs:
            each.preexec()

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([str(FFX), *args], cwd=project, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=preexec)


def assert_disk_full_line(result: subprocess.CompletedProcess, path: Path, fs: SmallFilesystem) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)  # not -11 (SIGSEGV) or 139
    assert "Traceback" not in result.stderr and "Segmentation" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    reason = "no space left on device" if fs.mounted else "file too large"
    assert errors[0].startswith(f"error: {path}: {reason} (free "), errors[0]
    assert re.search(r"\(free \d+\.\d MB, needed ~\d+\.\d MB\)", errors[0]), errors[0]
    assert "run the same command again" in errors[0]
    return errors[0]


@pytest.mark.e2e
def test_extraction_on_full_disks_says_so_in_one_line_and_resumes_once_there_is_space(tmp_path, small_fs):
    # 96-px input: 4,608 float32 features a row (18 KB), the cache's chunks 56 rows (1 MB): the cache's 1.5 MB
    # disk takes one chunk, and the train file (72 rows, 1.3 MB) does not fit on its 1 MB disk.
    cache_fs, features_fs = small_fs("cache", 1536 << 10), small_fs("features", 1 << 20)
    project = tmp_path / "project"
    make_dataset(project / "data", per_split={"train": 36, "valid": 2, "test": 2})
    write_params(project, backbone={"input_size": 96},
                 features={"cache_dir": str(cache_fs.folder), "dir": str(features_fs.folder)})

    first = run_ffx_limited(project, [cache_fs, features_fs], "extract")
    (cache_file,) = cache_fs.folder.glob("*.h5")
    assert_disk_full_line(first, cache_file, cache_fs)

    cache_fs.grow()  # space for the cache; the features' disk is still too small
    second = run_ffx_limited(project, [cache_fs, features_fs], "extract")
    assert_disk_full_line(second, features_fs.folder / "train.h5", features_fs)
    assert not (features_fs.folder / "train.h5").exists()  # never a partial file under the final name
    assert not list(features_fs.folder.glob(".*.tmp*"))  # no temporary file left behind

    features_fs.grow()
    third = run_ffx_limited(project, [cache_fs, features_fs], "extract")
    assert third.returncode == 0, third.stderr
    computed = int(re.search(r"train: 72 images -> .*?\((\d+) computed", third.stderr).group(1))
    assert computed == 0, third.stderr  # every train row was in the cache the first two runs filled
    assert (features_fs.folder / "train.h5").is_file()


@pytest.mark.e2e
def test_the_prefect_flow_on_a_full_disk_fails_at_once_in_one_line_and_resumes_once_there_is_space(
        tmp_path, small_fs, prefect_api):
    # The cache's 1.5 MB disk takes the first 1 MB chunk (56 of the 72 train rows at 96 px), then fills.
    cache_fs = small_fs("cache", 1536 << 10)
    project = tmp_path / "project"
    make_dataset(project / "data", per_split={"train": 36, "valid": 2, "test": 2})
    write_params(project, backbone={"input_size": 96}, features={"cache_dir": str(cache_fs.folder)},
                 orchestration={"retries": 1})

    first = run_ffx_limited(project, [cache_fs], "pipeline", env=prefect_api["env"])
    (cache_file,) = cache_fs.folder.glob("*.h5")
    assert_disk_full_line(first, cache_file, cache_fs)  # Prefect's own lines name the error without a traceback
    assert "Retry" not in first.stderr, first.stderr  # a full disk fails the same way again: not retried
    assert "DiskFullError" in first.stderr  # Prefect's task and flow lines still say what failed

    cache_fs.grow()
    second = run_ffx_limited(project, [cache_fs], "pipeline", "--json", "--quiet", env=prefect_api["env"])
    assert second.returncode == 0, second.stderr
    train = json.loads(second.stdout.splitlines()[-1])["extract"]["train"]
    assert train["count"] == 72 and 0 < train["computed"] < 72, train  # the rows written before the disk filled stay


def test_model_and_report_writes_on_a_full_disk_raise_one_disk_full_error_and_leave_nothing(tmp_path, small_fs):
    import keras

    from components.model.head_file import save_head

    fs = small_fs("models", 64 << 10)
    write_params(tmp_path, model={"dir": str(fs.folder)})
    config = load_config(tmp_path / "params.yaml")
    head = keras.Sequential([keras.Input((2048,)), keras.layers.Dense(64), keras.layers.Dense(2)])  # 0.5 MB

    with fs.in_this_process(), pytest.raises(DiskFullError) as raised:
        save_head(head, {"class_names": ["a", "b"]}, config)
    assert str(raised.value).startswith(f"{fs.folder / 'head.keras'}: "), raised.value
    assert "(free " in str(raised.value)
    assert not list(fs.folder.iterdir())  # neither the model nor its temporary file

    report = fs.folder / "reports" / "model_card.md"
    with fs.in_this_process(), pytest.raises(DiskFullError, match=re.escape(f"{report}: ")):
        write_text_atomic(report, "x" * (128 << 10))
    assert not list(report.parent.iterdir())


def test_an_out_of_space_error_from_any_writer_is_found_behind_the_exception_that_wraps_it():
    from components.files import find_disk_full

    full = OSError(errno.ENOSPC, "No space left on device", "mlruns/artifacts/x.json")
    try:
        try:
            raise full
        except OSError as exc:
            raise RuntimeError("MLflow failed to log the artifact") from exc
    except RuntimeError as wrapped:
        assert find_disk_full(wrapped) is full
    assert find_disk_full(ValueError("errno = 28")) is None
    h5py_flush = RuntimeError("Unable to synchronously flush file (file write failed: errno = 28, error message = "
                              "'No space left on device')")
    assert find_disk_full(h5py_flush) is h5py_flush


def test_user_errors_are_one_line_and_anything_else_is_a_bug_with_its_traceback(tmp_path):
    from components.errors import ConfigError
    from components.files import user_error

    bad_key = ConfigError("params.yaml: 'tuner.max_trials' must be >= 1")
    assert user_error(bad_key) is bad_key
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json"))
        except OSError as exc:
            raise RuntimeError("a library's own wrapper") from exc
    except RuntimeError as wrapped:
        error = user_error(wrapped)
    assert isinstance(error, DiskFullError) and str(error).startswith(f"{tmp_path / 'x.json'}: no space left"), error
    assert user_error(KeyError("a bug")) is None
