"""Several dense heads trained at once in one compiled graph: the search's trials and executions side by side.

A small head is bound by per-step overhead, not arithmetic: one graph that steps K heads costs far less than K
graphs. The group has a fixed number of slots of a fixed width (the space's largest sizes), so it compiles once
per search; a head narrower than its slot has its unused units' weights at zero, where ReLU gives them no
gradient, so they stay zero and it trains exactly as a head of its own size would. The heads' parameters are
disjoint and the loss is the sum of theirs, so each head's gradient, RMSprop state and update are its own: the
group trains what K separate heads would on the same sequence of shuffled batches. Each head keeps its own
initialisation, dropout rate, layer sizes, early stopping and best epoch, and comes out as an ordinary single head
(`build_head`). Its dropout masks are drawn from its own seed and its own count of training steps, never from the
group's: a head draws the same masks in any slot, beside any other heads or alone (at the same slot width, which
is the search space's largest).
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
    seed: int          # initialisation and dropout masks (0 <= seed < 2**63)


@dataclass
class HeadRun:
    spec: HeadSpec
    epochs: int                                                    # the most it trains (early stopping aside)
    history: dict[str, list[float]] = field(default_factory=dict)  # loss, accuracy, val_loss, val_accuracy
    epoch_seconds: list[float] = field(default_factory=list)       # the group's epoch, shared by its heads
    best_value: float | None = None
    best_epoch: int = -1
    weights: list[np.ndarray] | None = None                        # the best epoch's, in build_head's order


@dataclass(frozen=True)
class Parameter:
    """One parameter of the group: the weight of `build_head` it holds for every slot."""
    name: str
    axes: tuple[str, ...]  # the head's weight's axes, by size: input, units, extra, outputs
    in_columns: bool       # the slots side by side in the last axis (the first layer: one matmul for all heads);
                           # else one row per slot, stacked on a leading axis
    extra: bool | None     # held for heads with a second layer (True), without (False), or both (None)


# Every group parameter, in the order of `build_head(...).get_weights()` once those a head does not use are left out.
PARAMETERS = (
    Parameter("w1", ("input", "units"), True, None),
    Parameter("b1", ("units",), True, None),
    Parameter("w2", ("units", "extra"), False, True),
    Parameter("b2", ("extra",), False, True),
    Parameter("wo_direct", ("units", "outputs"), False, False),
    Parameter("wo_extra", ("extra", "outputs"), False, True),
    Parameter("bo", ("outputs",), False, None),
)


@dataclass(frozen=True)
class SlotLayout:
    """Where each head's weights sit in the group's parameters: the one description every method uses.

    A slot is as wide as the largest head (`width` units, `extra_width` second-layer units); a head of its own
    sizes fills the leading corner of its slot's share of each parameter it uses, the rest stays zero."""
    slots: int
    input_dim: int
    width: int
    extra_width: int
    outputs: int

    def shape(self, parameter: Parameter) -> tuple[int, ...]:
        """The group parameter's shape: every slot's share at the slot's full width."""
        sizes = [self._size(axis) for axis in parameter.axes]
        if parameter.in_columns:
            return (*sizes[:-1], self.slots * sizes[-1])
        return (self.slots, *sizes)

    def share(self, parameter: Parameter, slot: int):
        """Index of `slot`'s share of the parameter: its block of columns, or its row."""
        if not parameter.in_columns:
            return slot
        columns = slice(slot * self.width, (slot + 1) * self.width)
        return (slice(None),) * (len(parameter.axes) - 1) + (columns,)

    def per_slot(self, parameter: Parameter, values):
        """A (slots,) tensor spread over the parameter's shape, each slot's value over its share."""
        import tensorflow as tf

        if parameter.in_columns:
            return tf.repeat(values, self.width)
        return tf.reshape(values, (-1,) + (1,) * len(parameter.axes))

    def head_parts(self, spec: HeadSpec) -> list[tuple[Parameter, tuple]]:
        """(parameter, index of the head's weight within its slot's share), in build_head's weight order."""
        sizes = {"input": self.input_dim, "units": spec.units, "extra": spec.extra_units, "outputs": self.outputs}
        return [(parameter, tuple(slice(0, sizes[axis]) for axis in parameter.axes)) for parameter in PARAMETERS
                if parameter.extra in (None, bool(spec.extra_units))]

    def head_shapes(self, spec: HeadSpec) -> list[tuple[int, ...]]:
        """The head's weight shapes at its own sizes, in build_head's order."""
        return [tuple(part.stop for part in corner) for _, corner in self.head_parts(spec)]

    def _size(self, axis: str) -> int:
        return {"input": self.input_dim, "units": self.width, "extra": self.extra_width, "outputs": self.outputs}[axis]


class HeadGroup:
    """`slots` heads of up to `max_units` (and `max_extra` second-layer units) over `input_dim` features."""

    def __init__(self, slots: int, input_dim: int, num_classes: int, max_units: int, max_extra: int,
                 learning_rate: float, batch_size: int, jit_compile: bool = True):
        import tensorflow as tf

        self.layout = SlotLayout(slots, input_dim, max_units, max(max_extra, 1), 1 if num_classes == 2 else num_classes)
        self.slots, self.batch_size, self.learning_rate = slots, batch_size, learning_rate
        shapes = {p.name: self.layout.shape(p) for p in PARAMETERS}
        self.params = {k: tf.Variable(tf.zeros(s), name=k) for k, s in shapes.items()}
        self.velocity = {k: tf.Variable(tf.zeros(s), trainable=False) for k, s in shapes.items()}
        self.best = {k: tf.Variable(tf.zeros(s), trainable=False) for k, s in shapes.items()}
        self.has_extra = tf.Variable(tf.zeros((slots,)), trainable=False)
        self.rate = tf.Variable(tf.zeros((slots,)), trainable=False)
        self.active = tf.Variable(tf.zeros((slots,)), trainable=False)  # 0: a stopped or empty slot stays put
        # Each head's dropout stream: its seed, and the training steps it has taken (its own, not the group's).
        self.dropout_seed = tf.Variable(tf.zeros((slots,), tf.int64), trainable=False)
        self.steps_taken = tf.Variable(tf.zeros((slots,), tf.int64), trainable=False)
        self._epoch = tf.function(self._train_epoch, jit_compile=jit_compile, reduce_retracing=True)
        self._keep_best = tf.function(self._snapshot, jit_compile=jit_compile)

    # ------------------------------------------------------------------------------------------ the graph

    def _dropout(self, hidden, step):
        """Each slot's masks from one stateless draw of its own: seeded by its head's seed and the head's own step
        count, so a head's masks do not depend on its slot, the group's size or the heads beside it."""
        import tensorflow as tf

        rows = tf.shape(hidden)[0]
        draws = [tf.random.stateless_uniform((rows, self.layout.width),
                                             tf.stack([self.dropout_seed[slot], self.steps_taken[slot] + step]))
                 for slot in range(self.slots)]
        rate = self.rate[None, :, None]
        return tf.where(tf.stack(draws, axis=1) >= rate, hidden / (1.0 - rate), 0.0)

    def _logits(self, x, step=None):
        """(B, slots, outputs) logits of every slot's head; with `step` (training), its dropout applied."""
        import tensorflow as tf

        p = self.params
        hidden = tf.nn.relu(tf.matmul(x, p["w1"]) + p["b1"])
        hidden = tf.reshape(hidden, (-1, self.slots, self.layout.width))
        if step is not None:
            hidden = self._dropout(hidden, step)
        extra = tf.nn.relu(tf.einsum("bhu,hue->bhe", hidden, p["w2"]) + p["b2"])
        direct_logits = tf.einsum("bhu,huc->bhc", hidden, p["wo_direct"])
        extra_logits = tf.einsum("bhe,hec->bhc", extra, p["wo_extra"])
        return tf.where(self.has_extra[None, :, None] > 0, extra_logits, direct_logits) + p["bo"]

    def _loss_and_hits(self, logits, labels):
        """(B, slots) loss and correctness of each row under each head."""
        import tensorflow as tf

        if self.layout.outputs == 1:
            target = tf.broadcast_to(labels[:, None], tf.shape(logits)[:2])
            loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits[..., 0])
            hits = tf.cast((logits[..., 0] > 0) == (target > 0.5), tf.float32)
        else:
            target = tf.broadcast_to(tf.cast(labels, tf.int32)[:, None], tf.shape(logits)[:2])
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)
            hits = tf.cast(tf.argmax(logits, axis=-1, output_type=tf.int32) == target, tf.float32)
        return loss, hits

    def _train_epoch(self, x, y, order, row_weight, valid_x, valid_y):
        """One epoch over `order` (steps, batch) row indices (padding rows weigh 0), then validation.
        Returns per-slot (loss, accuracy, val_loss, val_accuracy), as Keras' fit reports them."""
        import tensorflow as tf

        variables = [self.params[p.name] for p in PARAMETERS]
        steps = tf.shape(order)[0]
        totals = tf.zeros((2, self.slots))
        for step in tf.range(steps):
            rows, weight = order[step], row_weight[step]
            with tf.GradientTape() as tape:
                logits = self._logits(tf.gather(x, rows), step=tf.cast(step, tf.int64))
                loss, hits = self._loss_and_hits(logits, tf.gather(y, rows))
                per_head = tf.reduce_sum(loss * weight[:, None], axis=0) / tf.reduce_sum(weight)
                total = tf.reduce_sum(per_head)
            learning_rate = self.active * self.learning_rate  # zero in a stopped or empty slot
            for parameter, variable, gradient in zip(PARAMETERS, variables, tape.gradient(total, variables)):
                velocity = self.velocity[parameter.name]
                velocity.assign(RHO * velocity + (1.0 - RHO) * tf.square(gradient))
                variable.assign_sub(self.layout.per_slot(parameter, learning_rate) * gradient
                                    / tf.sqrt(velocity + EPSILON))
            totals += tf.stack([tf.reduce_sum(loss * weight[:, None], axis=0),
                                tf.reduce_sum(hits * weight[:, None], axis=0)])
        self.steps_taken.assign_add(tf.cast(self.active > 0, tf.int64) * tf.cast(steps, tf.int64))
        train = totals / tf.reduce_sum(row_weight)
        val_loss, val_hits = self._loss_and_hits(self._logits(valid_x), valid_y)
        return tf.concat([train, tf.stack([tf.reduce_mean(val_loss, 0), tf.reduce_mean(val_hits, 0)])], axis=0)

    def _snapshot(self, improved):
        """Copy the current parameters of the `improved` slots over their best ones."""
        import tensorflow as tf

        for parameter in PARAMETERS:
            current, best = self.params[parameter.name], self.best[parameter.name]
            best.assign(tf.where(self.layout.per_slot(parameter, improved) > 0, current, best))

    # ------------------------------------------------------------------------------------------ slots

    def _fresh_weights(self, spec: HeadSpec) -> list[np.ndarray]:
        """keras' default Dense initialisers: glorot_uniform kernels, zero biases."""
        rng = np.random.default_rng(spec.seed)
        return [rng.uniform(-math.sqrt(6.0 / sum(shape)), math.sqrt(6.0 / sum(shape)), shape).astype(np.float32)
                if len(shape) == 2 else np.zeros(shape, np.float32) for shape in self.layout.head_shapes(spec)]

    def start(self, slot: int, spec: HeadSpec, epochs: int | None = None,
              weights: list[np.ndarray] | None = None) -> None:
        """A head in `slot`, trained for `epochs` (default: set_data's) from `weights` (in build_head's order;
        default: fresh ones), with zero optimizer state. Unused units of the slot are zero."""
        weights = self._fresh_weights(spec) if weights is None else weights
        placed = {parameter.name: (corner, weight)
                  for (parameter, corner), weight in zip(self.layout.head_parts(spec), weights, strict=True)}
        for parameter in PARAMETERS:
            share = self.layout.share(parameter, slot)
            value = np.zeros(self.params[parameter.name][share].shape, np.float32)
            if parameter.name in placed:
                corner, weight = placed[parameter.name]
                value[corner] = weight
            for variable in (self.params[parameter.name], self.best[parameter.name]):
                variable[share].assign(value)
            self.velocity[parameter.name][share].assign(np.zeros_like(value))
        for variable, value in ((self.has_extra, float(bool(spec.extra_units))), (self.rate, spec.dropout),
                                (self.active, 1.0), (self.dropout_seed, spec.seed), (self.steps_taken, 0)):
            variable[slot].assign(value)
        self.runs[slot] = HeadRun(spec, epochs or self._epochs)
        self._waited[slot] = 0

    def head_weights(self, slot: int, spec: HeadSpec) -> list[np.ndarray]:
        """The slot's best weights in the order of `build_head(...).get_weights()`."""
        return [self.best[parameter.name][self.layout.share(parameter, slot)].numpy()[corner]
                for parameter, corner in self.layout.head_parts(spec)]

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
        started = time.perf_counter()
        metrics = self._epoch(x, y, tf.constant(order.reshape(self._steps, self.batch_size)), row_weight,
                              valid_x, valid_y).numpy()
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
