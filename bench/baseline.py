"""The original recipe, written from its description: the reference the project must beat.

Extraction: one image at a time, `load_img(bilinear) -> img_to_array -> preprocess_input -> predict`, rows
written to HDF5 through a 32-row buffer. Head training: an HDF5 generator that re-reads every batch from disk
each epoch, `steps_per_epoch = N // batch_size`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import h5py
import keras
import numpy as np

BUFFER_ROWS = 32


def baseline_extract(paths: list[Path], labels: list[int], model, preprocess: Callable, size: int,
                     out_path: Path) -> None:
    """Per-image predict into `out_path` (features, labels), flushed every BUFFER_ROWS rows."""
    from keras.utils import img_to_array, load_img

    feature_dim = int(np.prod(model.output_shape[1:]))
    with h5py.File(out_path, "w") as store:
        features = store.create_dataset("features", (len(paths), feature_dim), dtype="float32")
        store.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        buffer: list[np.ndarray] = []
        written = 0
        for path in paths:
            image = load_img(path, target_size=(size, size), interpolation="bilinear")
            array = preprocess(np.expand_dims(img_to_array(image), axis=0))
            buffer.append(model.predict(array, verbose=0).reshape(-1))
            if len(buffer) == BUFFER_ROWS:
                features[written:written + len(buffer)] = np.stack(buffer)
                written += len(buffer)
                buffer = []
        if buffer:
            features[written:written + len(buffer)] = np.stack(buffer)


def hdf5_batches(path: Path, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (features, labels) batches, re-read from disk on every pass as the recipe's generator did."""
    while True:
        with h5py.File(path, "r") as store:
            count = len(store["labels"])
            if count < batch_size:
                raise ValueError(f"{path}: {count} rows, fewer than one batch of {batch_size}")
            for start in range(0, count - batch_size + 1, batch_size):
                yield (store["features"][start:start + batch_size],
                       store["labels"][start:start + batch_size].astype(np.float32))


def baseline_fit(model, train_path: Path, valid_path: Path, batch_size: int, epochs: int, callbacks=()):
    """The recipe's `fit` from HDF5 generators; validation every epoch, as the tuner path does."""
    with h5py.File(train_path, "r") as store:
        train_rows = len(store["labels"])
    with h5py.File(valid_path, "r") as store:
        valid_rows = len(store["labels"])
    return model.fit(hdf5_batches(train_path, batch_size), steps_per_epoch=train_rows // batch_size,
                     validation_data=hdf5_batches(valid_path, batch_size),
                     validation_steps=max(1, valid_rows // batch_size), epochs=epochs, verbose=0,
                     callbacks=list(callbacks))


def recipe_head(input_dim: int, num_classes: int, learning_rate: float) -> keras.Model:
    """The recipe's head: Dense(64, relu) -> Dropout(0.5) -> sigmoid, RMSprop, binary cross-entropy."""
    from components.search.space import build_head

    model = build_head(input_dim, num_classes, 64, 0.5, 0)
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
                  loss="binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
