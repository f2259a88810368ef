"""The dense head searched by KerasTuner, and the in-memory tf.data inputs it trains on."""
from __future__ import annotations

import math
import time

import keras
import keras_tuner as kt
import numpy as np

from components.config import SpaceConfig, TrainConfig
from components.features import FeatureSet

HP_NAMES = ("units", "dropout", "extra_units")  # every trial run logs all of them ("inactive" when unused)
COMPILED_HEADS_KEPT = 8  # compiled heads reused by later executions with the same hyperparameters


def feature_statistics(train: FeatureSet) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and variance of the train split, with a variance floor.

    Many ReLU features are constant zero on the train split; a floor keeps a feature that is
    non-zero only at test time from being divided by ~0.
    """
    features = train.features.astype(np.float64)
    mean = features.mean(axis=0)
    variance = features.var(axis=0)
    floor = max(1e-6, 1e-4 * float(variance.mean()))
    return mean.astype(np.float32), np.maximum(variance, floor).astype(np.float32)


def check_space(space: SpaceConfig) -> list[int]:
    """First-layer sizes under which the extra layer is offered."""
    return [u for u in space.units if u in space.extra_when_units] if space.extra_units else []


class HeadHyperModel(kt.HyperModel):
    def __init__(self, space: SpaceConfig, train: TrainConfig, input_dim: int, num_classes: int,
                 statistics: tuple[np.ndarray, np.ndarray] | None, steps_per_execution: int = 1,
                 objective: str = "val_accuracy"):
        super().__init__(name="ffx_head")
        self.space = space
        self.train_config = train
        self.input_dim = input_dim
        self.num_classes = num_classes
        self.statistics = statistics
        self.steps_per_execution = steps_per_execution
        self.objective = objective
        self._compiled: dict[tuple, keras.Model] = {}

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        space = self.space
        units = hp.Choice("units", space.units)
        dropout = hp.Float("dropout", space.dropout_min, space.dropout_max, step=space.dropout_step)
        extra_when = check_space(space)
        extra_units = 0
        if extra_when:
            with hp.conditional_scope("units", extra_when):
                chosen = hp.Choice("extra_units", [0] + list(space.extra_units))
            extra_units = chosen if units in extra_when else 0
        # Tracing a new head's training graph costs several epochs' time; a trial's second execution (and any
        # repeated point of the space) gets the same compiled head back with fresh weights instead.
        key = (units, round(dropout, 6), extra_units)
        model = self._compiled.pop(key, None)
        if model is not None:
            reinitialise(model)
        else:
            model = build_head(self.input_dim, self.num_classes, units, dropout, extra_units, self.statistics,
                               self.train_config.learning_rate, self.steps_per_execution)
        self._compiled[key] = model  # most recently used last
        while len(self._compiled) > COMPILED_HEADS_KEPT:
            self._compiled.pop(next(iter(self._compiled)))
        return model

    def fit(self, hp, model, *args, **kwargs):
        timer = EpochTimer()
        kwargs["callbacks"] = list(kwargs.get("callbacks", [])) + [timer] + early_stopping(
            self.objective, self.train_config.early_stopping_patience)
        history = model.fit(*args, **kwargs)
        history.epoch_seconds = timer.seconds  # read back by the tuner for MLflow
        return history


def build_head(input_dim: int, num_classes: int, units: int, dropout: float, extra_units: int,
               statistics, learning_rate: float, steps_per_execution: int = 1) -> keras.Model:
    """Dense(units, relu) -> Dropout -> [Dense(extra, relu)] -> sigmoid (2 classes) or softmax."""
    inputs = keras.Input(shape=(input_dim,), name="features")
    x = inputs
    if statistics is not None:
        mean, variance = statistics
        x = keras.layers.Normalization(mean=mean, variance=variance, name="standardise")(x)
    x = keras.layers.Dense(units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    if extra_units:
        x = keras.layers.Dense(extra_units, activation="relu", name="extra_dense")(x)
    binary = num_classes == 2
    outputs = keras.layers.Dense(1 if binary else num_classes, activation="sigmoid" if binary else "softmax",
                                 name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="ffx_head")
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)
    return model


def reinitialise(model: keras.Model) -> None:
    """Fresh random weights and optimizer state for a compiled head, as a new build would have."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            layer.kernel.assign(layer.kernel_initializer(layer.kernel.shape, layer.kernel.dtype))
            layer.bias.assign(layer.bias_initializer(layer.bias.shape, layer.bias.dtype))
    for variable in model.optimizer.variables:
        if variable.name != "learning_rate":  # the step count and RMSprop's running averages start at zero
            variable.assign(np.zeros(variable.shape, variable.dtype))


def early_stopping(objective: str, patience: int) -> list[keras.callbacks.Callback]:
    """Stop an execution once the objective has not improved for `patience` epochs (0: never).

    The trial's score is each execution's best epoch, so epochs after a plateau only cost time.
    """
    if patience <= 0:
        return []
    mode = "min" if objective.endswith("loss") else "max"
    return [keras.callbacks.EarlyStopping(monitor=objective, mode=mode, patience=patience)]


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def make_dataset(data: FeatureSet, batch_size: int, shuffle_seed: int | None):
    """An in-memory, cached tf.data pipeline: no disk reads or Python generators per epoch."""
    import tensorflow as tf

    labels = data.labels.astype(np.float32 if data.num_classes == 2 else np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((data.features, labels)).cache()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(data.labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def steps_per_execution(num_rows: int, batch_size: int) -> int:
    """Run a whole epoch (up to 32 steps) per call into the compiled graph: per-step overhead dominates."""
    return max(1, min(32, math.ceil(num_rows / batch_size)))
