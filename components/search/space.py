"""The dense head searched by KerasTuner: its space, its layers, and the standardisation of its inputs."""
from __future__ import annotations

import keras
import keras_tuner as kt
import numpy as np

from components.config import SpaceConfig
from components.features.store import FeatureSet


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
    """The head's search space. Heads train on standardised features in a HeadGroup (components.search.head_group);
    `with_standardisation` puts the statistics back in front of the chosen head, so that the saved model takes
    raw features."""

    def __init__(self, space: SpaceConfig, input_dim: int, num_classes: int):
        super().__init__(name="ffx_head")
        self.space = space
        self.input_dim = input_dim
        self.num_classes = num_classes

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
        return build_head(self.input_dim, self.num_classes, *self.sizes(hp))


def build_head(input_dim: int, num_classes: int, units: int, dropout: float, extra_units: int) -> keras.Model:
    """Dense(units, relu) -> Dropout -> [Dense(extra, relu)] -> sigmoid (2 classes) or softmax. Uncompiled: heads
    train in a HeadGroup, and a saved head is only ever used to predict."""
    inputs = keras.Input(shape=(input_dim,), name="features")
    x = keras.layers.Dense(units, activation="relu", name="dense")(inputs)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    if extra_units:
        x = keras.layers.Dense(extra_units, activation="relu", name="extra_dense")(x)
    binary = num_classes == 2
    outputs = keras.layers.Dense(1 if binary else num_classes, activation="sigmoid" if binary else "softmax",
                                 name="probabilities")(x)
    return keras.Model(inputs, outputs, name="ffx_head")


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
    return keras.Model(inputs, x, name=head.name)
