"""Content-addressed feature store: one HDF5 file per backbone setting, rows keyed by image SHA-1.

Extraction looks every image up here first, so only new images go through the backbone: a split that
gained one image costs one forward pass, and a run killed mid-split resumes from the rows it flushed.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import h5py
import numpy as np

from components.features.store import WRITE_OPTIONS, reopen_h5
from components.files import output_lock


class FeatureCache:
    def __init__(self, handle: h5py.File):
        self._file = handle
        self.path = Path(handle.filename)
        self._features = handle["features"]
        self._sha1 = handle["sha1"]
        valid = int(handle.attrs["rows"])
        self._index = {s.decode(): i for i, s in enumerate(self._sha1[:valid])}

    @property
    def row_bytes(self) -> int:
        """Bytes a row takes: its float32 features and its SHA-1."""
        return self._features.shape[1] * 4 + 40

    def __contains__(self, sha1: str) -> bool:
        return sha1 in self._index

    def add(self, sha1s: list[str], features: np.ndarray) -> None:
        """Append rows and flush; the row count attribute moves last, so a torn write is ignored on reopen."""
        start = int(self._file.attrs["rows"])
        end = start + len(sha1s)
        for dataset in (self._features, self._sha1):
            if dataset.shape[0] < end:
                dataset.resize(max(end, 2 * dataset.shape[0]), axis=0)
        self._features[start:end] = features
        self._sha1[start:end] = np.array(sha1s, dtype="S40")
        self._file.flush()
        self._file.attrs["rows"] = end
        self._file.flush()
        self._index.update({s: start + i for i, s in enumerate(sha1s)})

    def get(self, sha1s: list[str]) -> np.ndarray:
        """Rows for `sha1s`, in that order (h5py reads need increasing, unique indices)."""
        rows = np.array([self._index[s] for s in sha1s])
        unique, inverse = np.unique(rows, return_inverse=True)
        return self._features[unique][inverse]


@contextlib.contextmanager
def open_feature_cache(folder: Path, backbone_key: str, feature_dim: int):
    """The cache for one backbone setting, locked against a concurrent writer while open."""
    path = Path(folder) / f"{backbone_key}.h5"
    with output_lock(path):
        # Damaged by a hard kill mid-write, or another layout: a cache, so start it again.
        handle = (reopen_h5(path, lambda handle: handle["features"].shape[1] == feature_dim and "rows" in handle.attrs)
                  or _create(path, feature_dim))
        with handle:
            yield FeatureCache(handle)


def _create(path: Path, feature_dim: int) -> h5py.File:
    handle = h5py.File(path, "w", **WRITE_OPTIONS)
    chunk_rows = max(1, (1 << 20) // (4 * feature_dim))
    handle.create_dataset("features", shape=(0, feature_dim), maxshape=(None, feature_dim), dtype="float32",
                          chunks=(chunk_rows, feature_dim))
    handle.create_dataset("sha1", shape=(0,), maxshape=(None,), dtype="S40", chunks=(4096,))
    handle.attrs["rows"] = 0
    handle.flush()
    return handle
