"""Files and content keys: atomic writes, a lock per output, file digests, the sha256 key of a JSON identity."""
from __future__ import annotations

import contextlib
import csv
import fcntl
import functools
import hashlib
import io
import json
import os
from pathlib import Path

from components.errors import LockedError


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary path beside `path`, with its suffix, to write to; renamed over `path` when the block succeeds,
    so that a kill never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def output_lock(path: Path):
    """Refuse a second writer of the same output at once (the first keeps the lock until done)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+") as handle:
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
    """The SHA-1 file_digest, computed once per (path, size, modification time) in a process: a weights file, hundreds of MB,
    is identified at every feature-file check."""
    stat = Path(path).stat()
    return _file_sha1_at(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha1_at(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(Path(path))
