"""Batches of a boundary feature file streamed from HDF5 (memory stays flat as the data grows): each batch reads
its rows, in increasing order as h5py wants them, from the open file."""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import keras
import numpy as np


class BoundaryBatches(keras.utils.PyDataset):
    """(features, labels) batches of `path`, or of its `rows` (file row numbers) only. With `seed`, rows are shuffled
    anew each epoch, by (seed, epoch): a resumed run sees the order it would have seen."""

    def __init__(self, path: Path, batch_size: int, binary: bool, seed: int | None = None, epoch: int = 0,
                 rows: np.ndarray | None = None):
        super().__init__()
        self.path, self.batch_size, self.seed, self.epoch = Path(path), batch_size, seed, epoch
        with h5py.File(self.path, "r") as handle:
            labels = handle["labels"][()]
        if rows is not None and np.asarray(rows).dtype == bool:
            raise TypeError("rows: file row numbers, not a mask")
        self.rows = np.arange(len(labels)) if rows is None else np.sort(np.asarray(rows, dtype=np.int64))
        labels = labels[self.rows]
        self.labels = labels.astype(np.float32).reshape(-1, 1) if binary else labels
        self._file: h5py.File | None = None
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        if self.seed is None:
            return np.arange(len(self.labels))
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.labels))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int):
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        batch = np.sort(self._order[index * self.batch_size:(index + 1) * self.batch_size])
        return self._file["features"][self.rows[batch]], self.labels[batch]

    def start_at(self, epoch: int) -> None:
        """Batches in the order of `epoch` (from 0): where a resumed run continues."""
        self.epoch = epoch
        self._order = self._permutation()

    def on_epoch_end(self) -> None:
        self.start_at(self.epoch + 1)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
