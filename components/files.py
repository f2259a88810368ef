"""Files and content keys: atomic writes, a lock per output, file digests, the sha256 key of a JSON identity."""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

from components.errors import DiskFullError, FFXError, LockedError

# No space, over quota, over the file size limit (RLIMIT_FSIZE): the machine's fault, not the data's.
DISK_FULL_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                    errno.EFBIG: "file too large for this file system or limit"}
# h5py reports a failed flush as RuntimeError("... errno = 28, error message = 'No space left on device' ...").
H5_ERRNO = re.compile(r"errno = (\d+)")


def disk_full_errno(exc: BaseException) -> int | None:
    """The errno of a write that failed for want of space, or None for any other error."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if code is None and isinstance(exc, (OSError, RuntimeError)):
        found = H5_ERRNO.search(str(exc))
        code = int(found.group(1)) if found else None
    return code if code in DISK_FULL_ERRNOS else None


def find_disk_full(exc: BaseException) -> OSError | RuntimeError | None:
    """The out-of-space error behind `exc`: itself or one it was raised from or while handling (a library that
    wraps the OSError in its own exception), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if disk_full_errno(exc) is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def user_error(exc: BaseException) -> FFXError | None:
    """The one-line error that `exc` stands for, or None for a bug (shown with its traceback): an FFXError itself
    (bad input, bad params, a lock), or the out-of-space error behind any writer's exception as DiskFullError."""
    if isinstance(exc, FFXError):
        return exc
    full = find_disk_full(exc)
    if full is None:
        return None
    return disk_full_error(getattr(full, "filename", None), disk_full_errno(full))


def megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def disk_full_error(path: Path | None, code: int = errno.ENOSPC, needed: int | None = None) -> DiskFullError:
    """The one-line error for a write to `path` that ran out of space: the free space there now and, when the
    writer knows it, about how much the step needs (None: a writer that did not say which file)."""
    resume = "free some space and run the same command again: it continues from what was written"
    if path is None:
        return DiskFullError(f"{DISK_FULL_ERRNOS[code]} (the writer did not name its file); {resume}")
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    need = f", needed ~{megabytes(needed)}" if needed else ""
    return DiskFullError(f"{path}: {DISK_FULL_ERRNOS[code]} (free {megabytes(free)}{need}); {resume}")


@contextlib.contextmanager
def disk_full_as_error(path: Path, needed: int | None = None):
    """Writes to `path` in the block: running out of space becomes DiskFullError naming `path` (errors from writers
    that do not name their file, as h5py and Keras do not)."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        code = disk_full_errno(exc)
        if code is None:
            raise
        raise disk_full_error(path, code, needed) from exc


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary path beside `path`, ending as it does (every suffix: Keras wants `.weights.h5`), to write to;
    renamed over `path` when the block succeeds, so that a kill never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffixes = "".join(path.suffixes)
    tmp = path.with_name(f".{path.name.removesuffix(suffixes)}.{os.getpid()}.tmp{suffixes}")
    try:
        with disk_full_as_error(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def output_lock(path: Path):
    """Refuse a second writer of the same output at once (the first keeps the lock until done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    # A lock file stays behind (removing it would race with a writer opening it): the lock is the flock, held
    # only while its writer lives, so a file left by a killed or failed run is never taken for a live writer.
    with disk_full_as_error(path), open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise LockedError(f"{path}: another process is writing it ({handle.read().strip() or 'unknown'}); "
                              "wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, payload) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_csv_atomic(path: Path, header: list[str], rows) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def content_key(identity) -> str:
    """sha256 of `identity` as sorted JSON: the key of whatever it describes (a feature file, a search, ...)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: Path, algorithm: str = "sha1") -> str:
    """The hex digest of a file's bytes under a hashlib `algorithm` (SHA-1: images' cache keys), read in 1 MiB
    blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha1_memoised(path: Path) -> str:
    """The SHA-1 file_digest, computed once per (path, size, modification time) in a process: a weights file,
    hundreds of MB, is identified at every feature-file check."""
    stat = Path(path).stat()
    return _file_sha1_at(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha1_at(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(Path(path))
