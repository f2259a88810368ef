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
import traceback
from dataclasses import dataclass, field

import numpy as np

RHO, EPSILON = 0.9, 1e-7  # keras.optimizers.RMSprop's defaults, which the single-head path uses


@dataclass(frozen=True)
class HeadSpec:
    units: int
    dropout: float
    extra_units: int   # 0: no second dense layer
    seed: int          # initialisation and dropout masks


@dataclass
class HeadRun:
    spec: HeadSpec
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

    def _glorot(self, rng, fan_in: int, fan_out: int) -> np.ndarray:
        """keras' default Dense initialiser (glorot_uniform) at the head's own sizes."""
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32)

    def _load(self, specs: list[HeadSpec | None]) -> None:
        """Fresh weights and optimizer state for each slot's head (None: an empty slot)."""
        values = {k: np.zeros(v.shape, np.float32) for k, v in self.params.items()}
        for slot, spec in enumerate(specs):
            if spec is None:
                continue
            rng = np.random.default_rng(spec.seed)
            columns = slice(slot * self.width, slot * self.width + spec.units)
            values["w1"][:, columns] = self._glorot(rng, self.input_dim, spec.units)
            if spec.extra_units:
                values["w2"][slot, :spec.units, :spec.extra_units] = self._glorot(rng, spec.units, spec.extra_units)
                values["wo_extra"][slot, :spec.extra_units] = self._glorot(rng, spec.extra_units, self.outputs)
            else:
                values["wo_direct"][slot, :spec.units] = self._glorot(rng, spec.units, self.outputs)
        for name, value in values.items():
            self.params[name].assign(value)
            self.best[name].assign(value)
            self.velocity[name].assign(np.zeros_like(value))
        self.has_extra.assign([float(bool(s and s.extra_units)) for s in specs])
        self.rate.assign([s.dropout if s else 0.0 for s in specs])
        self.active.assign([float(s is not None) for s in specs])

    def head_weights(self, slot: int, spec: HeadSpec) -> list[np.ndarray]:
        """The slot's best weights in the order of `build_head(...).get_weights()`."""
        best = {k: v.numpy() for k, v in self.best.items()}
        columns = slice(slot * self.width, slot * self.width + spec.units)
        weights = [best["w1"][:, columns], best["b1"][columns]]
        if spec.extra_units:
            weights += [best["w2"][slot, :spec.units, :spec.extra_units], best["b2"][slot, :spec.extra_units],
                        best["wo_extra"][slot, :spec.extra_units], best["bo"][slot]]
        else:
            weights += [best["wo_direct"][slot, :spec.units], best["bo"][slot]]
        return weights

    # ------------------------------------------------------------------------------------------ training

    def train(self, specs: list[HeadSpec], train_x: np.ndarray, train_y: np.ndarray, valid_x: np.ndarray,
              valid_y: np.ndarray, epochs: int, patience: int, objective: str, shuffle_seed: int,
              on_epoch=None) -> list[HeadRun]:
        """Train up to `slots` heads together; each stops on its own after `patience` epochs without a better
        `objective` (0: never) and keeps its best epoch. `on_epoch(epoch, runs)` is called after every epoch."""
        import tensorflow as tf

        if not 0 < len(specs) <= self.slots:
            raise ValueError(f"{len(specs)} heads for a group of {self.slots}")
        self._load(list(specs) + [None] * (self.slots - len(specs)))
        runs = [HeadRun(spec) for spec in specs]
        maximise = not objective.endswith("loss")
        waited = [0] * len(specs)
        active = [True] * len(specs)
        rng = np.random.default_rng(shuffle_seed)
        steps = math.ceil(len(train_y) / self.batch_size)
        weight = np.zeros(steps * self.batch_size, np.float32)
        weight[:len(train_y)] = 1.0
        x, y = tf.constant(train_x, tf.float32), tf.constant(train_y, tf.float32)
        vx, vy = tf.constant(valid_x, tf.float32), tf.constant(valid_y, tf.float32)
        row_weight = tf.constant(weight.reshape(steps, self.batch_size))
        names = ("loss", "accuracy", "val_loss", "val_accuracy")
        for epoch in range(epochs):
            started = time.perf_counter()
            order = np.zeros(steps * self.batch_size, np.int32)
            order[:len(train_y)] = rng.permutation(len(train_y))
            metrics = self._epoch(x, y, tf.constant(order.reshape(steps, self.batch_size)), row_weight,
                                  vx, vy, tf.constant(epoch + 1000 * shuffle_seed, tf.int32)).numpy()
            seconds = time.perf_counter() - started
            improved = np.zeros(self.slots, np.float32)
            for slot, run in enumerate(runs):
                if not active[slot]:
                    continue
                for index, name in enumerate(names):
                    run.history.setdefault(name, []).append(float(metrics[index, slot]))
                run.epoch_seconds.append(seconds)
                value = run.history[objective][-1]
                if run.best_value is None or (value > run.best_value if maximise else value < run.best_value):
                    run.best_value, run.best_epoch, waited[slot] = value, epoch, 0
                    improved[slot] = 1
                else:
                    waited[slot] += 1
                    active[slot] = not (patience and waited[slot] >= patience)
            if improved.any():
                self._keep_best(tf.constant(improved))
            self.active.assign(np.array(active + [False] * (self.slots - len(specs)), np.float32))
            if on_epoch:
                on_epoch(epoch, runs)
            if not any(active):
                break
        for slot, run in enumerate(runs):
            run.weights = self.head_weights(slot, run.spec)
        return runs


class GroupedTrials:
    """Mixed into a KerasTuner tuner: its search takes several trials from the oracle at once — concurrent trials,
    as KerasTuner hands them to distributed workers — and trains all their executions together in a HeadGroup.

    Each trial is still a trial: its MLflow run, its own score reported to the oracle (the mean over executions of
    each one's best epoch, as KerasTuner scores), its best weights in KerasTuner's checkpoint (so `load_model`
    gives the ordinary head), and resumption after a kill (a slot's tuner id gets its unfinished trial back).
    """

    def search_grouped(self, group: HeadGroup, data: tuple, epochs: int, patience: int, seed: int) -> None:
        """`data`: standardised (train features, train labels, valid features, valid labels)."""
        import keras_tuner as kt

        self.oracle.verbose = 0  # as tuner.search(verbose=0): ffx prints its own line per trial
        self.on_search_begin()
        per_group = max(1, group.slots // self.executions_per_trial)
        while trials := self._take_trials(per_group, kt.engine.trial.TrialStatus):
            for trial in trials:
                self.on_trial_begin(trial)
            try:
                runs, failure = self._train_together(group, trials, data, epochs, patience, seed), None
            except Exception as exc:  # every trial of the group fails with it, as KerasTuner records a failure
                if isinstance(exc, kt.errors.FatalError):
                    raise
                runs, failure = {}, traceback.format_exc()
            for trial in trials:  # scored and ended one by one: the oracle ranks every completed trial it holds
                try:
                    if failure:
                        raise kt.errors.FailedTrialError(failure)
                    self._report(trial, runs[trial.trial_id], len(trials))
                except Exception:
                    trial.status, trial.message = kt.engine.trial.TrialStatus.FAILED, failure or traceback.format_exc()
                self.on_trial_end(trial)
        self.on_search_end()

    def _take_trials(self, count: int, status) -> list:
        """Up to `count` new (or, after a kill, unfinished) trials, one per slot tuner id; none when the search
        is over. Every slot asks each time: a distributed chief ends only once each id it knows has been stopped."""
        while True:
            answers = [self.oracle.create_trial(f"{self.tuner_id}-{slot}") for slot in range(count)]
            trials = [trial for trial in answers if trial.status == status.RUNNING]
            if trials or any(trial.status == status.STOPPED for trial in answers):
                return trials
            time.sleep(1)  # IDLE: a distributed chief still computing; ask again

    def _train_together(self, group: HeadGroup, trials: list, data: tuple, epochs: int, patience: int,
                        seed: int) -> dict[str, list[HeadRun]]:
        from components.files import content_key

        jobs = [(trial, execution) for trial in trials for execution in range(self.executions_per_trial)]
        runs: dict[str, list[HeadRun]] = {}
        for start in range(0, len(jobs), group.slots):
            chunk = jobs[start:start + group.slots]
            specs = [HeadSpec(*self.hypermodel.sizes(trial.hyperparameters),
                              seed=int(content_key([seed, trial.trial_id, execution])[:8], 16))
                     for trial, execution in chunk]
            shuffle = int(content_key([seed, [trial.trial_id for trial, _ in chunk]])[:8], 16)
            for (trial, _), run in zip(chunk, group.train(specs, *data, epochs, patience,
                                                          self.oracle.objective.name, shuffle)):
                runs.setdefault(trial.trial_id, []).append(run)
        return runs

    def _report(self, trial, runs: list[HeadRun], trials_in_graph: int) -> None:
        """The trial's score to the oracle, its best weights to KerasTuner's checkpoint, its epochs to MLflow."""
        import keras_tuner as kt

        names = list(runs[0].history)
        metrics = {name: float(np.mean([run.history[name][run.best_epoch] for run in runs])) for name in names}
        self.oracle.update_trial(trial.trial_id, metrics, step=int(np.mean([run.best_epoch for run in runs])))
        direction = 1 if self.oracle.objective.direction == "max" else -1
        best = max(runs, key=lambda run: direction * run.best_value)
        head = self.hypermodel.build(trial.hyperparameters)
        head.set_weights(best.weights)
        head.save_weights(self._get_checkpoint_fname(trial.trial_id))
        self.log_executions(trial, [run.history for run in runs], [run.epoch_seconds for run in runs])
        self.log_heads_in_graph(trial, trials_in_graph * self.executions_per_trial)
        trial.status = kt.engine.trial.TrialStatus.COMPLETED
