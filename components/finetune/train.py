"""Training the fine-tuning model with Keras `fit`: early stopping on the validation objective, the best epoch kept,
and a checkpoint after every epoch (weights, optimizer state incl. a moving average, history) from which a killed run
resumes."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from components.config import FinetuneConfig, better
from components.files import atomic_path, write_json_atomic

STATE_FILE = "state.json"
EpochLog = Callable[[int, dict, float], None]  # (epoch from 1, Keras' logs, seconds)


@dataclass
class TrainingState:
    """What a checkpoint folder holds, rewritten last after each epoch: a kill before it leaves the previous one."""
    key: str                       # the inputs it was trained from: another key starts over
    run_id: str = ""               # the MLflow run the epochs are logged to, continued on resume
    epochs_done: int = 0
    best_epoch: int = 0            # 0: no epoch yet
    best_score: float | None = None
    wait: int = 0                  # epochs since the best one
    stopped: bool = False          # early stopping ended it
    latest: str = ""               # weights and optimizer files of the last epoch
    best: str = ""                 # weights file of the best epoch
    seconds: list[float] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path, key: str) -> TrainingState:
        path = folder / STATE_FILE
        try:
            state = cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return cls(key)
        return state if state.key == key else cls(key)

    def stopped_early(self, epochs: int) -> bool:
        """Early stopping ended it with epochs left (patience running out at the last epoch changes nothing)."""
        return self.stopped and self.epochs_done < epochs

    def save(self, folder: Path) -> None:
        write_json_atomic(folder / STATE_FILE, asdict(self))
        for path in folder.glob("epoch*"):  # files of earlier epochs, now unreferenced
            if path.name not in (self.latest + ".weights.h5", self.latest + ".optimizer.npz", self.best):
                path.unlink(missing_ok=True)


def learning_rate(settings: FinetuneConfig, steps_per_epoch: int):
    """The optimizer's rate by step: up from 0 over finetune.warmup_epochs, then constant or down along a cosine to 0 at
    the last epoch (fastai's one-cycle shape). The step count is the optimizer's, restored on resume."""
    warmup = settings.warmup_epochs * steps_per_epoch
    if not warmup and settings.schedule == "constant":
        return settings.learning_rate
    after = max((settings.epochs - settings.warmup_epochs) * steps_per_epoch, 1)
    return keras.optimizers.schedules.CosineDecay(
        0.0 if warmup else settings.learning_rate, after, alpha=1.0 if settings.schedule == "constant" else 0.0,
        warmup_target=settings.learning_rate if warmup else None, warmup_steps=warmup)


def compile_model(model: keras.Model, settings: FinetuneConfig, binary: bool, steps_per_epoch: int) -> None:
    loss = "binary_crossentropy" if binary else "sparse_categorical_crossentropy"
    rate = learning_rate(settings, steps_per_epoch)
    averaged = {"use_ema": True, "ema_momentum": settings.ema_momentum} if settings.ema_momentum else {}
    optimizer = keras.optimizers.SGD(rate, momentum=settings.momentum, **averaged) if settings.optimizer == "sgd" \
        else keras.optimizers.RMSprop(rate, **averaged)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def score(model: keras.Model, batches, metric: str) -> float:
    """`metric` (val_accuracy, val_loss) of `model` on `batches`, as Keras' evaluate computes it."""
    return float(model.evaluate(batches, verbose=0, return_dict=True)[metric.removeprefix("val_")])


class EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch: the best weights when `monitor` improved (config.better), the last weights and optimizer
    state, then the state file; early stopping after `patience` epochs without improvement (0: never)."""

    def __init__(self, folder: Path, state: TrainingState, monitor: str, patience: int, log: EpochLog):
        super().__init__()
        self.folder, self.state, self.monitor, self.patience, self.log = folder, state, monitor, patience, log
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        logs = {k: float(v) for k, v in (logs or {}).items()}
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))  # the next step's
        state, number = self.state, epoch + 1
        if better(self.monitor, logs[self.monitor], state.best_score):
            state.best, state.best_epoch, state.best_score, state.wait = f"epoch{number:04d}.best.weights.h5", \
                number, logs[self.monitor], 0
            _save_scored_weights(self.model, self.folder / state.best)
        else:
            state.wait += 1
        state.latest = f"epoch{number:04d}"
        _save_weights(self.model, self.folder / f"{state.latest}.weights.h5")
        with atomic_path(self.folder / f"{state.latest}.optimizer.npz") as tmp:
            np.savez(tmp, *[np.asarray(v) for v in self.model.optimizer.variables])
        state.epochs_done, state.seconds, state.history = number, state.seconds + [seconds], state.history + [logs]
        state.stopped = bool(self.patience) and state.wait >= self.patience
        self.log(number, logs, seconds)
        state.save(self.folder)
        if state.stopped:
            self.model.stop_training = True


def _save_weights(model: keras.Model, path: Path) -> None:
    """Written beside `path` and renamed (a kill leaves no torn file), with the .weights.h5 ending Keras wants."""
    tmp = path.with_name(f".tmp.{path.name}")
    try:
        model.save_weights(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_scored_weights(model: keras.Model, path: Path) -> None:
    """The weights validation scored: with finetune.ema_momentum, the optimizer's moving average (Keras'
    SwapEMAWeights scores it), put in the model for the save and taken out again, so training goes on unchanged."""
    optimizer, variables = model.optimizer, model.trainable_variables
    if not optimizer.use_ema:
        return _save_weights(model, path)
    current = [keras.ops.convert_to_numpy(v) for v in variables]
    optimizer.finalize_variable_values(variables)
    try:
        _save_weights(model, path)
    finally:
        for variable, value in zip(variables, current):
            variable.assign(value)


def restore(model: keras.Model, folder: Path, state: TrainingState) -> None:
    """The last epoch's weights and optimizer state into a compiled `model`."""
    model.load_weights(folder / f"{state.latest}.weights.h5")
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    with np.load(folder / f"{state.latest}.optimizer.npz") as saved:
        for variable, index in zip(optimizer.variables, range(len(saved.files))):
            variable.assign(saved[f"arr_{index}"])


def train(model: keras.Model, train_batches, valid_batches, settings: FinetuneConfig, monitor: str, folder: Path,
          state: TrainingState, log: EpochLog) -> TrainingState:
    """Fit from where `state` left off (a new state: from the start) to finetune.epochs or early stopping; the model
    ends with the best epoch's weights (their moving average with finetune.ema_momentum: what validation scored)."""
    folder.mkdir(parents=True, exist_ok=True)
    if state.epochs_done:
        restore(model, folder, state)
    if state.epochs_done < settings.epochs and not state.stopped:
        train_batches.start_at(state.epochs_done)
        model.fit(train_batches, validation_data=valid_batches, epochs=settings.epochs,
                  initial_epoch=state.epochs_done, verbose=0,
                  callbacks=[EpochCheckpoint(folder, state, monitor, settings.early_stopping_patience, log),
                             *([keras.callbacks.SwapEMAWeights()] if model.optimizer.use_ema else [])])
    if state.best:
        model.load_weights(folder / state.best)
    return state
