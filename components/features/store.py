"""HDF5 feature files: written through a resumable partial file and renamed, read whole into memory."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from components.errors import FFXError
from components.files import write_json_atomic


@dataclass
class FeatureSet:
    features: np.ndarray         # float32 (N, D)
    labels: np.ndarray           # int64 (N,)
    paths: list[str]             # relative source paths
    class_names: list[str]
    attrs: dict = field(default_factory=dict)
    source: np.ndarray | None = None  # with augmented views: row -> index of its image (rows 0..N-1 are the images)
    sha1: np.ndarray | None = None    # each row's image content hash (bytes)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def rows(self, mask: np.ndarray, part: str, key: str) -> FeatureSet:
        """The rows where `mask` is true, a set of plain images (no views): `part` of this file, whose content
        `key` the caller derives."""
        if self.source is not None:
            raise ValueError("rows() takes a file of plain images; this one holds augmented views")
        index = np.flatnonzero(mask)
        return FeatureSet(self.features[index], self.labels[index], [self.paths[i] for i in index],
                          self.class_names, dict(self.attrs, part=part, key=key),
                          sha1=None if self.sha1 is None else self.sha1[index])


# HDF5 files opened for writing keep no raw-data chunk cache: a chunk it holds that cannot be written (disk full)
# fails every close after, and HDF5 crashes (segmentation fault) closing it again when the process exits. Without
# the cache a write that finds no space fails at once with OSError(ENOSPC) and the file closes cleanly. Rows are
# written in whole batches and flushed after each, so the cache saved no writes anyway.
WRITE_OPTIONS = {"rdcc_nbytes": 0}


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def reopen_h5(path: Path, usable: Callable[[h5py.File], bool]) -> h5py.File | None:
    """`path` opened to continue writing when it exists and `usable` accepts it; else deleted (made from other
    inputs, or damaged by a hard kill mid-write) and None, for the caller to start it again."""
    if path.exists():
        try:
            handle = h5py.File(path, "r+", **WRITE_OPTIONS)
            if usable(handle):
                return handle
            handle.close()
        except (OSError, KeyError):
            pass  # unreadable after a hard kill: start over
        path.unlink()
    return None


class FeatureWriter:
    """Writes one split's features in order, batch by batch, into `<name>.partial`, renamed over `<name>` when the
    `with` block succeeds. Progress is flushed after every batch; a writer opened on the same inputs (same `key`)
    after a crash continues from the last flushed row (`rows_done`) instead of starting over."""

    def __init__(self, path: Path, key: str, rows, feature_dim: int, attrs: dict):
        """`rows`: extraction rows (an image record seen through a view), in order; the file holds each one's
        label, relative path and image hash, and with views (`attrs["views"]`) its image's index (`source`)."""
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.count = len(rows)
        self.file = (reopen_h5(self.partial, lambda handle: handle.attrs.get("key") == key
                               and handle["features"].shape[0] == self.count)
                     or self._create(key, rows, feature_dim, attrs))

    def _create(self, key, rows, feature_dim, attrs):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = h5py.File(self.partial, "w", **WRITE_OPTIONS)
        chunk_rows = max(1, min(self.count, (4 << 20) // (4 * feature_dim)))  # chunks of about 4 MiB
        handle.create_dataset("features", shape=(self.count, feature_dim), dtype="float32",
                              chunks=(chunk_rows, feature_dim) if self.count else None)
        records = [r.record for r in rows]
        handle.create_dataset("labels", data=np.array([r.label for r in records], dtype=np.int64))
        handle.create_dataset("paths", data=np.array([r.relpath for r in records], dtype=object),
                              dtype=h5py.string_dtype())
        handle.create_dataset("sha1", data=np.array([r.sha1 for r in records], dtype="S40"))
        if attrs.get("views"):  # views of the images: which image each row shows
            handle.create_dataset("source", data=np.array([r.source for r in rows], dtype=np.int64))
        for name, value in attrs.items():
            handle.attrs[name] = value if isinstance(value, (str, int, float)) else json.dumps(value)
        handle.attrs["key"] = key
        handle.attrs["rows_done"] = 0
        handle.flush()
        return handle

    @property
    def rows_done(self) -> int:
        return int(self.file.attrs["rows_done"])

    def append(self, features: np.ndarray) -> None:
        """The next rows, flushed with the new row count."""
        start = self.rows_done
        self.file["features"][start:start + len(features)] = features
        self.file.attrs["rows_done"] = start + len(features)
        self.file.flush()

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, error_type, *_) -> None:
        try:
            if error_type is None:
                if self.rows_done != self.count:
                    raise AssertionError(f"{self.partial}: {self.rows_done} of {self.count} rows written")
                del self.file.attrs["rows_done"]
                self.file.attrs["complete"] = True
        finally:
            self.file.close()
        if error_type is None:
            os.replace(self.partial, self.path)


def read_attrs(path: Path) -> dict:
    with h5py.File(path, "r") as handle:
        return {k: _attr(v) for k, v in handle.attrs.items()}


def _attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value.item() if isinstance(value, np.generic) else value


def read_features(path: Path) -> FeatureSet:
    """Load a complete feature file into memory."""
    path = Path(path)
    if not path.is_file():
        raise FFXError(f"{path}: feature file not found (run `ffx extract` first)")
    try:
        with h5py.File(path, "r") as handle:
            attrs = {k: _attr(v) for k, v in handle.attrs.items()}
            if not attrs.get("complete"):
                raise FFXError(f"{path}: incomplete feature file (run `ffx extract` again)")
            return FeatureSet(
                features=handle["features"][()],
                labels=handle["labels"][()],
                paths=list(handle["paths"].asstr()[()]),
                class_names=list(attrs["class_names"]),
                attrs=attrs,
                source=handle["source"][()] if "source" in handle else None,
                sha1=handle["sha1"][()] if "sha1" in handle else None,
            )
    except OSError as exc:
        raise FFXError(f"{path}: not a readable HDF5 feature file ({exc})") from None


def split_summary(path: Path) -> dict:
    """Counts per class and content hash of a feature file, without loading its features."""
    attrs = read_attrs(path)
    with h5py.File(path, "r") as handle:
        labels = handle["labels"][()]
    counts = np.bincount(labels, minlength=len(attrs["class_names"])).tolist()
    return {"counts": dict(zip(attrs["class_names"], counts)), "total": int(len(labels)),
            "content_hash": str(attrs.get("content_hash", "unknown"))}


INDEX_FILE = "index.json"


def write_feature_index(folder: Path) -> None:
    """`folder`/index.json listing its feature files: a DVC output folder that would otherwise be empty by design
    (no TTA, no shards, fine-tuning off) is never empty, so `dvc repro` has nothing to warn about."""
    write_json_atomic(Path(folder) / INDEX_FILE, {"files": sorted(p.name for p in Path(folder).glob("*.h5"))})
