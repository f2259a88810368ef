"""The dense head searched by KerasTuner, and the in-memory tf.data inputs it trains on."""
from __future__ import annotations

import dataclasses
import math
import time

import keras
import keras_tuner as kt
import numpy as np
from keras_tuner.src.engine.tuner_utils import SaveBestEpoch

from components.config import SpaceConfig, TrainConfig, lower_is_better
from components.features import FeatureSet

HP_NAMES = ("units", "dropout", "extra_units")  # every trial run logs all of them ("inactive" when unused)
COMPILED_HEADS_KEPT = 24  # compiled heads reused by later executions with the same hyperparameters


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


class HeadHyperModel(kt.HyperModel):
    """Heads trained on features standardised beforehand (`training_datasets`); `with_standardisation` puts the
    statistics back in front of the chosen head, so that the saved model takes raw features."""

    def __init__(self, space: SpaceConfig, train: TrainConfig, input_dim: int, num_classes: int,
                 steps_per_execution: int = 1, objective: str = "val_accuracy"):
        super().__init__(name="ffx_head")
        self.space = space
        self.train_config = train
        self.input_dim = input_dim
        self.num_classes = num_classes
        self.steps_per_execution = steps_per_execution
        self.objective = objective
        self._compiled: dict[tuple, keras.Model] = {}

    def sizes(self, hp: kt.HyperParameters) -> tuple[int, float, int]:
        """(units, dropout, extra units; 0: no extra layer) of a point of the space, declaring the space."""
        space = self.space
        units = hp.Choice("units", space.units)
        dropout = hp.Float("dropout", space.dropout_min, space.dropout_max, step=space.dropout_step)
        extra_when = space.extra_layer_under
        extra_units = 0
        if extra_when:
            with hp.conditional_scope("units", extra_when):
                chosen = hp.Choice("extra_units", [0] + list(space.extra_units))
            extra_units = chosen if units in extra_when else 0
        return units, dropout, extra_units

    def build(self, hp: kt.HyperParameters) -> keras.Model:
        units, dropout, extra_units = self.sizes(hp)
        # Tracing a new head's training graph costs several epochs' time; a trial's second execution (and any
        # repeated point of the space) gets the same compiled head back with fresh weights instead.
        key = (units, round(dropout, 6), extra_units)
        model = self._compiled.pop(key, None)
        if model is not None:
            reinitialise(model)
        else:
            model = build_head(self.input_dim, self.num_classes, units, dropout, extra_units,
                               self.train_config.learning_rate, self.steps_per_execution)
        self._compiled[key] = model  # most recently used last
        while len(self._compiled) > COMPILED_HEADS_KEPT:
            self._compiled.pop(next(iter(self._compiled)))
        return model

    def fit(self, hp, model, *args, **kwargs):
        timer = EpochTimer()
        callbacks = [BestEpochInMemory(c) if isinstance(c, SaveBestEpoch) else c for c in kwargs.get("callbacks", [])]
        kwargs["callbacks"] = callbacks + [timer] + early_stopping(self.objective,
                                                                   self.train_config.early_stopping_patience)
        history = model.fit(*args, **kwargs)
        history.epoch_seconds = timer.seconds  # read back by the tuner for MLflow
        return history


def build_head(input_dim: int, num_classes: int, units: int, dropout: float, extra_units: int,
               learning_rate: float, steps_per_execution: int = 1) -> keras.Model:
    """Dense(units, relu) -> Dropout -> [Dense(extra, relu)] -> sigmoid (2 classes) or softmax."""
    inputs = keras.Input(shape=(input_dim,), name="features")
    x = keras.layers.Dense(units, activation="relu", name="dense")(inputs)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    if extra_units:
        x = keras.layers.Dense(extra_units, activation="relu", name="extra_dense")(x)
    binary = num_classes == 2
    outputs = keras.layers.Dense(1 if binary else num_classes, activation="sigmoid" if binary else "softmax",
                                 name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="ffx_head")
    compile_head(model, learning_rate, steps_per_execution)
    return model


def compile_head(model: keras.Model, learning_rate: float, steps_per_execution: int = 1) -> None:
    """RMSprop, and binary cross-entropy for one sigmoid output or sparse categorical cross-entropy."""
    binary = model.output_shape[-1] == 1
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate),
                  loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)


def standardise(features: np.ndarray, statistics: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """What keras.layers.Normalization computes, done once on the whole array: inside the model it costs as much
    per training step as a small head's own arithmetic."""
    mean, variance = statistics
    return ((features - mean) / np.maximum(np.sqrt(variance), keras.backend.epsilon())).astype(np.float32)


def with_standardisation(head: keras.Model, statistics: tuple[np.ndarray, np.ndarray]) -> keras.Model:
    """`head` (trained on standardised features) behind a Normalization layer holding the train statistics:
    the model that is saved, evaluated and served takes raw features. Its layers are the trained ones."""
    mean, variance = statistics
    inputs = keras.Input(shape=head.input_shape[1:], name="features")
    x = keras.layers.Normalization(mean=mean, variance=variance, name="standardise")(inputs)
    for layer in head.layers[1:]:
        x = layer(x)
    model = keras.Model(inputs, x, name=head.name)
    compile_head(model, float(head.optimizer.learning_rate.numpy()))
    model.optimizer.build(model.trainable_variables)  # saved with its slots, so that loading it warns of no mismatch
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
    mode = "min" if lower_is_better(objective) else "max"
    return [keras.callbacks.EarlyStopping(monitor=objective, mode=mode, patience=patience)]


class BestEpochInMemory(keras.callbacks.Callback):
    """KerasTuner's SaveBestEpoch, writing once per execution instead of at every better epoch.

    SaveBestEpoch writes the weights and optimizer state to disk whenever the objective improves, most epochs
    early on: a tenth of a small head's fit time. This keeps the best weights in memory and writes them to the
    same file when the execution ends; the best value is kept on the wrapped callback, which KerasTuner shares
    between a trial's executions, so the file still holds the trial's best epoch over all of them.
    """

    def __init__(self, checkpoint: SaveBestEpoch):
        super().__init__()
        self.checkpoint = checkpoint
        self.best_weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch, logs=None):
        objective = self.checkpoint.objective
        if not objective.has_value(logs):  # no objective in the logs: SaveBestEpoch saves every epoch
            self.best_weights = self.model.get_weights()
            return
        current = objective.get_value(logs)
        if objective.better_than(current, self.checkpoint.best_value):
            self.checkpoint.best_value = current
            self.best_weights = self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.best_weights is None:
            return
        last = self.model.get_weights()
        self.model.set_weights(self.best_weights)
        self.checkpoint.set_model(self.model)
        self.checkpoint._save_model()  # KerasTuner's own writer: the file and format it reads back
        self.model.set_weights(last)


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


EVALUATION_BATCH_ROWS = 4096  # validation computes no gradients: few large batches cut per-step overhead


def make_dataset(data: FeatureSet, batch_size: int, shuffle_seed: int | None):
    """An in-memory, cached tf.data pipeline: no disk reads or Python generators per epoch."""
    import tensorflow as tf

    labels = data.labels.astype(np.float32 if data.num_classes == 2 else np.int64)
    dataset = tf.data.Dataset.from_tensor_slices((data.features, labels)).cache()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(data.labels), seed=shuffle_seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def training_datasets(train: FeatureSet, valid: FeatureSet, batch_size: int, seed: int,
                      statistics: tuple[np.ndarray, np.ndarray] | None):
    """(train, validation) inputs of a head's fit: standardised with `statistics` (unless None), train shuffled
    every epoch in batches of `batch_size`, validation in batches of up to EVALUATION_BATCH_ROWS (the same
    metrics, a fraction of the steps)."""
    if statistics is not None:
        train = dataclasses.replace(train, features=standardise(train.features, statistics))
        valid = dataclasses.replace(valid, features=standardise(valid.features, statistics))
    return (make_dataset(train, batch_size, seed),
            make_dataset(valid, max(batch_size, min(len(valid.labels), EVALUATION_BATCH_ROWS)), None))


def steps_per_execution(num_rows: int, batch_size: int) -> int:
    """A whole epoch per call into the compiled graph: per-step overhead dominates a small head."""
    return max(1, math.ceil(num_rows / batch_size))
