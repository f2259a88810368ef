"""Files and content keys: atomic writes, file hashes, the sha256 key of a JSON identity."""
from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
from pathlib import Path


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


def file_sha1(path: Path, algorithm: str = "sha1") -> str:
    """SHA-1 (or another hashlib `algorithm`) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha1_memoised(path: Path) -> str:
    """file_sha1, computed once per (path, size, modification time) in a process: a weights file, hundreds of MB,
    is identified at every feature-file check."""
    stat = Path(path).stat()
    return _file_sha1_at(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha1_at(path: str, size: int, mtime_ns: int) -> str:
    return file_sha1(Path(path))
