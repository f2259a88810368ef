"""Limits from arithmetic: a path's matmul FLOPs divided by the machine's measured matmul peak, so that no measured
path can beat its limit. The peak is a large tf.matmul timed in the same run as the paths it bounds (float32 and
bfloat16), which a busy neighbour slows as much as it slows them.

Counted: the multiply-adds of matrix products and convolutions (2 FLOPs each). Not counted: element-wise work
(activations, biases, optimizer updates, pooling), so each bound is a lower bound on the time a path needs.
"""
from __future__ import annotations

import time
from itertools import pairwise

MATMUL_SIZE = 2048  # n of the n x n product: large enough to run at the CPU's sustained peak, about a second here


def matmul_peak(dtype: str, size: int = MATMUL_SIZE, repeats: int = 3) -> float:
    """FLOP/s of the fastest of `repeats` (size x size) @ (size x size) products in `dtype` (after a warm-up)."""
    import tensorflow as tf

    generator = tf.random.Generator.from_seed(0)
    a, b = (tf.cast(generator.normal((size, size)), dtype) for _ in range(2))
    product = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y)[:1, :1], tf.float32)))
    product(a, b).numpy()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best


def matmul_peaks() -> dict:
    """{"float32": FLOP/s, "bfloat16": FLOP/s}, measured now."""
    return {dtype: matmul_peak(dtype) for dtype in ("float32", "bfloat16")}


def head_layers(dim: int, num_classes: int, units: int, extra_units: int = 0) -> list[tuple[int, int]]:
    """(inputs, outputs) of each dense layer of components.search.space.build_head."""
    outputs = 1 if num_classes == 2 else num_classes
    widths = [dim, units, *([extra_units] if extra_units else []), outputs]
    return list(pairwise(widths))


def head_forward_flops(layers: list[tuple[int, int]]) -> int:
    """Matmul FLOPs of one row through the head."""
    return sum(2 * n_in * n_out for n_in, n_out in layers)


def head_train_flops(layers: list[tuple[int, int]]) -> int:
    """Matmul FLOPs of one training row: the forward product, the weight gradient of every layer and the input
    gradient of every layer but the first (nothing trains below it)."""
    return 3 * head_forward_flops(layers) - 2 * layers[0][0] * layers[0][1]


def head_epoch_flops(train_rows: int, valid_rows: int, layers: list[tuple[int, int]]) -> int:
    """One epoch: every train row trained on, then every valid row predicted (validation)."""
    return train_rows * head_train_flops(layers) + valid_rows * head_forward_flops(layers)


def trial_epochs(logged_epochs: int, executions: int, patience: int) -> int:
    """Epochs a trial's executions trained, at least, from its logged history (the mean over executions, as long as
    its longest execution): every other execution ran at least patience + 1 epochs before early stopping could
    stop it (all of them, when early stopping is off)."""
    floor = logged_epochs if patience <= 0 else min(logged_epochs, patience + 1)
    return logged_epochs + (executions - 1) * floor


def search_flops(trials: list[dict], dim: int, num_classes: int, train_rows: int, valid_rows: int) -> int:
    """A search's matmul FLOPs: each trial's head (`units`, `extra_units`), times the epochs it trained (`epochs`)."""
    total = 0
    for trial in trials:
        extra = trial.get("extra_units")
        layers = head_layers(dim, num_classes, int(trial["units"]), 0 if extra in (None, "inactive") else int(extra))
        total += trial["epochs"] * head_epoch_flops(train_rows, valid_rows, layers)
    return total


def logged_trials(config, parent_run_id: str) -> list[dict]:
    """Each trial run of a search (MLflow) as {units, extra_units, epochs}: the sizes it logged and the epochs
    (trial_epochs) its history shows."""
    from components.reports.runs import metric_histories, search_trials
    from components.tracking import setup_mlflow

    client, experiment_id = setup_mlflow(config, create=False)
    out = []
    for trial in search_trials(client, experiment_id, parent_run_id):
        logged = len(metric_histories(client, trial.run_id).get("loss", []))
        out.append({"units": trial.params["units"], "extra_units": trial.params.get("extra_units"),
                    "epochs": trial_epochs(logged, config.tuner.executions_per_trial,
                                           config.train.early_stopping_patience)})
    return out


def backbone_forward_flops(model) -> int:
    """Matmul FLOPs of one image through a Keras convolutional base: its Conv2D and Dense layers."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel_h, kernel_w, channels_in, channels_out = layer.kernel.shape
            out_h, out_w = layer.output.shape[1:3]
            total += 2 * out_h * out_w * kernel_h * kernel_w * channels_in * channels_out // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(total)
