"""Several dense heads trained at once in one compiled graph: the search's trials and executions side by side.

A small head is bound by per-step overhead, not arithmetic: one graph that steps K heads costs far less than K
graphs. The group has a fixed number of slots of a fixed width (the space's largest sizes), so it compiles once
per search; a head narrower than its slot has its unused units' weights at zero, where ReLU gives them no
gradient, so they stay zero and it trains exactly as a head of its own size would. The heads' parameters are disjoint and the loss is
the sum of theirs, so each head's gradient, RMSprop state and update are its own: the group trains what K
separate heads would on the same sequence of shuffled batches. Each head keeps its own initialisation, dropout
rate, layer sizes, early stopping and best epoch, and comes out as an ordinary single head (`build_head`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from components.config import better

RHO, EPSILON = 0.9, 1e-7  # keras.optimizers.RMSprop's defaults, as the recipe's head trained with


@dataclass(frozen=True)
class HeadSpec:
    units: int
    dropout: float
    extra_units: int   # 0: no second dense layer
    seed: int          # initialisation and dropout masks


@dataclass
class HeadRun:
    spec: HeadSpec
    epochs: int                                                    # the most it trains (early stopping aside)
    history: dict[str, list[float]] = field(default_factory=dict)  # loss, accuracy, val_loss, val_accuracy
    epoch_seconds: list[float] = field(default_factory=list)       # the group's epoch, shared by its heads
    best_value: float | None = None
    best_epoch: int = -1
    weights: list[np.ndarray] | None = None                        # the best epoch's, in build_head's order


class HeadGroup:
    """`slots` heads of up to `max_units` (and `max_extra` second-layer units) over `input_dim` features."""

    def __init__(self, slots: int, input_dim: int, num_classes: int, max_units: int, max_extra: int,
                 learning_rate: float, batch_size: int, jit_compile: bool = True):
        import tensorflow as tf

        self.slots, self.input_dim, self.batch_size = slots, input_dim, batch_size
        self.width, self.extra_width = max_units, max(max_extra, 1)
        self.outputs = 1 if num_classes == 2 else num_classes
        self.learning_rate = learning_rate
        shapes = {"w1": (input_dim, slots * max_units), "b1": (slots * max_units,),
                  "w2": (slots, max_units, self.extra_width), "b2": (slots, self.extra_width),
                  "wo_direct": (slots, max_units, self.outputs), "wo_extra": (slots, self.extra_width, self.outputs),
                  "bo": (slots, self.outputs)}
        self.params = {k: tf.Variable(tf.zeros(s), name=k) for k, s in shapes.items()}
        self.velocity = {k: tf.Variable(tf.zeros(s), trainable=False) for k, s in shapes.items()}
        self.best = {k: tf.Variable(tf.zeros(s), trainable=False) for k, s in shapes.items()}
        self.has_extra = tf.Variable(tf.zeros((slots,)), trainable=False)
        self.rate = tf.Variable(tf.zeros((slots,)), trainable=False)
        self.active = tf.Variable(tf.zeros((slots,)), trainable=False)  # 0: a stopped or empty slot stays put
        self._epoch = tf.function(self._train_epoch, jit_compile=jit_compile, reduce_retracing=True)
        self._keep_best = tf.function(self._snapshot, jit_compile=jit_compile)

    # ------------------------------------------------------------------------------------------ the graph

    def _slot_lr(self, name: str):
        """The learning rate of each element of a parameter: zero in inactive slots."""
        import tensorflow as tf

        lr = self.active * self.learning_rate
        if name in ("w1", "b1"):
            return tf.repeat(lr, self.width)
        return tf.reshape(lr, (-1,) + (1,) * (len(self.params[name].shape) - 1))

    def _logits(self, x, dropout_seed=None):
        import tensorflow as tf

        p = self.params
        hidden = tf.nn.relu(tf.matmul(x, p["w1"]) + p["b1"])
        hidden = tf.reshape(hidden, (-1, self.slots, self.width))
        if dropout_seed is not None:
            draw = tf.random.stateless_uniform(tf.shape(hidden), dropout_seed)
            rate = self.rate[None, :, None]
            hidden = tf.where(draw >= rate, hidden / (1.0 - rate), 0.0)
        extra = tf.nn.relu(tf.einsum("bhu,hue->bhe", hidden, p["w2"]) + p["b2"])
        direct_logits = tf.einsum("bhu,huc->bhc", hidden, p["wo_direct"])
        extra_logits = tf.einsum("bhe,hec->bhc", extra, p["wo_extra"])
        return tf.where(self.has_extra[None, :, None] > 0, extra_logits, direct_logits) + p["bo"]

    def _loss_and_hits(self, logits, labels):
        """(B, slots) loss and correctness of each row under each head."""
        import tensorflow as tf

        if self.outputs == 1:
            target = tf.broadcast_to(labels[:, None], tf.shape(logits)[:2])
            loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits[..., 0])
            hits = tf.cast((logits[..., 0] > 0) == (target > 0.5), tf.float32)
        else:
            target = tf.broadcast_to(tf.cast(labels, tf.int32)[:, None], tf.shape(logits)[:2])
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)
            hits = tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32) == target, tf.float32)
        return loss, hits

    def _train_epoch(self, x, y, order, row_weight, valid_x, valid_y, seed):
        """One epoch over `order` (steps, batch) row indices (padding rows weigh 0), then validation.
        Returns per-slot (loss, accuracy, val_loss, val_accuracy), as Keras' fit reports them."""
        import tensorflow as tf

        names = list(self.params)
        variables = [self.params[n] for n in names]
        totals = tf.zeros((2, self.slots))
        for step in tf.range(tf.shape(order)[0]):
            rows, weight = order[step], row_weight[step]
            with tf.GradientTape() as tape:
                logits = self._logits(tf.gather(x, rows), dropout_seed=tf.stack([seed, step]))
                loss, hits = self._loss_and_hits(logits, tf.gather(y, rows))
                per_head = tf.reduce_sum(loss * weight[:, None], axis=0) / tf.reduce_sum(weight)
                total = tf.reduce_sum(per_head)
            for name, variable, gradient in zip(names, variables, tape.gradient(total, variables)):
                velocity = self.velocity[name]
                velocity.assign(RHO * velocity + (1.0 - RHO) * tf.square(gradient))
                variable.assign_sub(self._slot_lr(name) * gradient / tf.sqrt(velocity + EPSILON))
            totals += tf.stack([tf.reduce_sum(loss * weight[:, None], axis=0),
                                tf.reduce_sum(hits * weight[:, None], axis=0)])
        train = totals / tf.reduce_sum(row_weight)
        val_loss, val_hits = self._loss_and_hits(self._logits(valid_x), valid_y)
        return tf.concat([train, tf.stack([tf.reduce_mean(val_loss, 0), tf.reduce_mean(val_hits, 0)])], axis=0)

    def _snapshot(self, improved):
        """Copy the current parameters of the `improved` slots over their best ones."""
        import tensorflow as tf

        for name, variable in self.params.items():
            mask = tf.repeat(improved, self.width) if name in ("w1", "b1") else tf.reshape(
                improved, (-1,) + (1,) * (len(variable.shape) - 1))
            self.best[name].assign(tf.where(mask > 0, variable, self.best[name]))

    # ------------------------------------------------------------------------------------------ slots

    def _layout(self, spec: HeadSpec) -> list[str]:
        """The group parameters holding a head's weights, in the order of `build_head(...).get_weights()`."""
        return ["w1", "b1", "w2", "b2", "wo_extra", "bo"] if spec.extra_units else ["w1", "b1", "wo_direct", "bo"]

    def _slot_part(self, name: str, slot: int):
        """Index of `slot`'s share of a group parameter: its columns of the first layer, else its row."""
        columns = slice(slot * self.width, (slot + 1) * self.width)
        return {"w1": (slice(None), columns), "b1": columns}.get(name, slot)

    def _shapes(self, spec: HeadSpec) -> list[tuple[int, ...]]:
        """A head's weight shapes at its own sizes, in the same order."""
        sizes = [self.input_dim, spec.units, *([spec.extra_units] if spec.extra_units else []), self.outputs]
        return [shape for fan_in, fan_out in zip(sizes, sizes[1:]) for shape in ((fan_in, fan_out), (fan_out,))]

    def _fresh_weights(self, spec: HeadSpec) -> list[np.ndarray]:
        """keras' default Dense initialisers: glorot_uniform kernels, zero biases."""
        rng = np.random.default_rng(spec.seed)
        return [rng.uniform(-math.sqrt(6.0 / sum(shape)), math.sqrt(6.0 / sum(shape)), shape).astype(np.float32)
                if len(shape) == 2 else np.zeros(shape, np.float32) for shape in self._shapes(spec)]

    def start(self, slot: int, spec: HeadSpec, epochs: int | None = None,
              weights: list[np.ndarray] | None = None) -> None:
        """A head in `slot`, trained for `epochs` (default: set_data's) from `weights` (in build_head's order;
        default: fresh ones), with zero optimizer state. Unused units of the slot are zero."""
        weights = self._fresh_weights(spec) if weights is None else weights
        values = dict(zip(self._layout(spec), weights))
        for name in self.params:
            where = self._slot_part(name, slot)
            value = np.zeros(self.params[name][where].shape, np.float32)
            if name in values:
                value[tuple(slice(0, size) for size in values[name].shape)] = values[name]
            for variable in (self.params[name], self.best[name]):
                variable[where].assign(value)
            self.velocity[name][where].assign(np.zeros_like(value))
        for variable, value in ((self.has_extra, float(bool(spec.extra_units))), (self.rate, spec.dropout),
                                (self.active, 1.0)):
            variable[slot].assign(value)
        self.runs[slot] = HeadRun(spec, epochs or self._epochs)
        self._waited[slot] = 0

    def head_weights(self, slot: int, spec: HeadSpec) -> list[np.ndarray]:
        """The slot's best weights in the order of `build_head(...).get_weights()`."""
        return [self.best[name][self._slot_part(name, slot)].numpy()[tuple(slice(0, size) for size in shape)]
                for name, shape in zip(self._layout(spec), self._shapes(spec))]

    # ------------------------------------------------------------------------------------------ training

    def set_data(self, train_x: np.ndarray, train_y: np.ndarray, valid_x: np.ndarray, valid_y: np.ndarray,
                 epochs: int, patience: int, objective: str, shuffle_seed: int) -> None:
        """What every head trains on: a head stops after `patience` epochs without a better `objective` (0: never)
        or after `epochs`, and keeps its best epoch."""
        import tensorflow as tf

        steps = math.ceil(len(train_y) / self.batch_size)
        weight = np.zeros(steps * self.batch_size, np.float32)
        weight[:len(train_y)] = 1.0
        self._data = (tf.constant(train_x, tf.float32), tf.constant(train_y, tf.float32),
                      tf.constant(weight.reshape(steps, self.batch_size)), tf.constant(valid_x, tf.float32),
                      tf.constant(valid_y, tf.float32))
        self._rows, self._steps = len(train_y), steps
        self._epochs, self._patience, self._objective = epochs, patience, objective
        self._rng = np.random.default_rng(shuffle_seed)
        self._waited = [0] * self.slots
        self.clear()

    def free_slots(self) -> list[int]:
        return [slot for slot, run in enumerate(self.runs) if run is None]

    def clear(self) -> None:
        """Every slot free (the heads in training abandoned)."""
        self.runs = [None] * self.slots
        self.active.assign(np.zeros(self.slots, np.float32))

    def step(self) -> list[tuple[int, HeadRun]]:
        """One epoch of every running head (one shuffled pass, shared); returns the heads that finished, with their
        best weights, and frees their slots."""
        import tensorflow as tf

        x, y, row_weight, valid_x, valid_y = self._data
        order = np.zeros(self._steps * self.batch_size, np.int32)
        order[:self._rows] = self._rng.permutation(self._rows)
        seed = tf.constant(int(self._rng.integers(2**31)), tf.int32)
        started = time.perf_counter()
        metrics = self._epoch(x, y, tf.constant(order.reshape(self._steps, self.batch_size)), row_weight,
                              valid_x, valid_y, seed).numpy()
        seconds = time.perf_counter() - started
        improved, finished = np.zeros(self.slots, np.float32), []
        for slot, run in enumerate(self.runs):
            if run is None:
                continue
            for index, name in enumerate(("loss", "accuracy", "val_loss", "val_accuracy")):
                run.history.setdefault(name, []).append(float(metrics[index, slot]))
            run.epoch_seconds.append(seconds)
            value, epoch = run.history[self._objective][-1], len(run.epoch_seconds) - 1
            if better(self._objective, value, run.best_value):
                run.best_value, run.best_epoch, self._waited[slot] = value, epoch, 0
                improved[slot] = 1
            else:
                self._waited[slot] += 1
            if epoch + 1 >= run.epochs or (self._patience and self._waited[slot] >= self._patience):
                finished.append(slot)
        if improved.any():
            self._keep_best(tf.constant(improved))
        done = []
        for slot in finished:
            run, self.runs[slot] = self.runs[slot], None
            run.weights = self.head_weights(slot, run.spec)
            self.active[slot].assign(0.0)
            done.append((slot, run))
        return done

    def train(self, specs: list[HeadSpec], train_x: np.ndarray, train_y: np.ndarray, valid_x: np.ndarray,
              valid_y: np.ndarray, epochs: int, patience: int, objective: str, shuffle_seed: int) -> list[HeadRun]:
        """Train up to `slots` heads together until each has finished; their runs, in the order of `specs`."""
        if not 0 < len(specs) <= self.slots:
            raise ValueError(f"{len(specs)} heads for a group of {self.slots}")
        self.set_data(train_x, train_y, valid_x, valid_y, epochs, patience, objective, shuffle_seed)
        for slot, spec in enumerate(specs):
            self.start(slot, spec)
        runs: dict[int, HeadRun] = {}
        while len(runs) < len(specs):
            runs.update(self.step())
        return [runs[slot] for slot in range(len(specs))]
