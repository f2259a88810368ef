"""Training the fine-tuning model with Keras `fit`: early stopping on the validation objective, the best epoch kept,
and a checkpoint after every epoch (weights, optimizer state incl. a moving average, history) from which a killed run
resumes."""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from components.config import FinetuneConfig, better
from components.errors import FFXError
from components.files import atomic_path, write_json_atomic

STATE_FILE = "state.json"
WEIGHTS_SUFFIX, OPTIMIZER_SUFFIX = ".weights.h5", ".optimizer.npz"  # of an epoch's files, epoch0003.weights.h5
EpochLog = Callable[[int, dict, float], None]  # (epoch from 1, Keras' logs, seconds)
logger = logging.getLogger(__name__)


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
        """The state `folder` holds for inputs `key`; a new one (training from the start) when there is none, it is
        another key's, or it cannot be read (a warning line says so)."""
        path = folder / STATE_FILE
        try:
            state = cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return cls(key)
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("%s: unreadable checkpoint state (%s); fine-tuning starts from its first epoch", path, exc)
            return cls(key)
        return state if state.key == key else cls(key)

    def record_score(self, epoch: int, score: float, monitor: str) -> bool:
        """Whether `epoch` scored better than every earlier one on `monitor` (config.better); it is then the best."""
        if not better(monitor, score, self.best_score):
            self.wait += 1
            return False
        self.best, self.best_epoch, self.best_score, self.wait = f"epoch{epoch:04d}.best.weights.h5", epoch, score, 0
        return True

    def record_epoch(self, epoch: int, logs: dict, seconds: float, patience: int) -> None:
        """`epoch` done: its files become the latest; early stopping after `patience` epochs without a better score
        (0: never)."""
        self.latest, self.epochs_done = f"epoch{epoch:04d}", epoch
        self.seconds, self.history = self.seconds + [seconds], self.history + [logs]
        self.stopped = bool(patience) and self.wait >= patience

    def stopped_early(self, epochs: int) -> bool:
        """Early stopping ended it with epochs left (patience running out at the last epoch changes nothing)."""
        return self.stopped and self.epochs_done < epochs

    def save(self, folder: Path) -> None:
        write_json_atomic(folder / STATE_FILE, asdict(self))
        for path in folder.glob("epoch*"):  # files of earlier epochs, now unreferenced
            if path.name not in (self.latest + WEIGHTS_SUFFIX, self.latest + OPTIMIZER_SUFFIX, self.best):
                path.unlink(missing_ok=True)


def compile_model(model: keras.Model, settings: FinetuneConfig, binary: bool) -> None:
    loss = "binary_crossentropy" if binary else "sparse_categorical_crossentropy"
    averaged = {"use_ema": True, "ema_momentum": settings.ema_momentum} if settings.ema_momentum else {}
    model.compile(optimizer=keras.optimizers.RMSprop(settings.learning_rate, **averaged), loss=loss,
                  metrics=["accuracy"])


def score(model: keras.Model, batches, metric: str) -> float:
    """`metric` (val_accuracy, val_loss) of `model` on `batches`, as Keras' evaluate computes it."""
    return float(model.evaluate(batches, verbose=0, return_dict=True)[metric.removeprefix("val_")])


class EpochCheckpoint(keras.callbacks.Callback):
    """After each epoch: the best weights when `monitor` improved, the last weights and optimizer state, then the
    state file; early stopping after `patience` epochs without improvement (0: never)."""

    def __init__(self, folder: Path, state: TrainingState, monitor: str, patience: int, log: EpochLog):
        super().__init__()
        self.folder, self.state, self.monitor, self.patience, self.log = folder, state, monitor, patience, log
        self.started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.started
        logs, number, state = {k: float(v) for k, v in (logs or {}).items()}, epoch + 1, self.state
        if state.record_score(number, logs[self.monitor], self.monitor):
            _save_scored_weights(self.model, self.folder / state.best)
        state.record_epoch(number, logs, seconds, self.patience)
        save_latest(self.model, self.folder, state.latest)
        self.log(number, logs, seconds)
        state.save(self.folder)
        if state.stopped:
            self.model.stop_training = True


def save_latest(model: keras.Model, folder: Path, latest: str) -> None:
    """The weights and the optimizer state (its moving average included) to resume from."""
    _save_weights(model, folder / f"{latest}{WEIGHTS_SUFFIX}")
    with atomic_path(folder / f"{latest}{OPTIMIZER_SUFFIX}") as tmp:
        np.savez(tmp, *[np.asarray(v) for v in model.optimizer.variables])


def _save_weights(model: keras.Model, path: Path) -> None:
    with atomic_path(path) as tmp:  # its name keeps the .weights.h5 ending Keras wants
        model.save_weights(tmp)


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
    model.load_weights(folder / f"{state.latest}{WEIGHTS_SUFFIX}")
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    path = folder / f"{state.latest}{OPTIMIZER_SUFFIX}"
    with np.load(path) as saved:
        if len(saved.files) != len(optimizer.variables):
            raise FFXError(f"{path}: {len(saved.files)} optimizer variables saved, the optimizer has "
                           f"{len(optimizer.variables)}; delete {folder} to fine-tune from the first epoch")
        for index, variable in enumerate(optimizer.variables):
            variable.assign(saved[f"arr_{index}"])  # np.savez's names for positional arrays


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


def remove_checkpoints(folder: Path) -> None:
    """The checkpoint folder removed once its run is recorded; one that cannot be is a warning line, not a failure."""
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        logger.warning("%s: checkpoints not removed (%s); delete it to free its space", folder, exc)
