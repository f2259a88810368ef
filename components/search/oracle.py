"""KerasTuner's Bayesian optimisation, with the acquisition minimised exactly over a finite search space."""
from __future__ import annotations

import itertools
import warnings

import keras_tuner as kt
import numpy as np
from keras_tuner.src.engine import hyperparameters as hp_module
from keras_tuner.src.engine import trial as trial_module
from sklearn.exceptions import ConvergenceWarning

from components.config import minimised

MAX_GRID_POINTS = 10_000  # larger (or continuous) spaces fall back to KerasTuner's own L-BFGS restarts


class GridBayesianOracle(kt.oracles.BayesianOptimizationOracle):
    """The same Gaussian process and upper-confidence-bound acquisition as KerasTuner's Bayesian oracle.

    KerasTuner minimises the acquisition with 50 L-BFGS-B restarts in the continuous embedding of the space and
    rounds the result to the nearest valid values: about 2 s per trial at 160 trials on a 2-core CPU, spent in
    the process that hands out trials while the workers wait. Every knob of the head's space is a choice or a
    stepped range, so the space is finite (66 points by default): scoring every point in one vectorised
    prediction finds the acquisition's minimum over the values a trial can take, in milliseconds. The points are
    embedded one slot per value (see `_embed`), so the process also tells apart, and can propose, every value.
    """

    _slots = False  # whether this search uses the slot embedding (a finite space) or KerasTuner's own

    def populate_space(self, trial_id):
        completed = [t for t in self.trials.values() if t.status == "COMPLETED"]
        initial_points = self.num_initial_points or max(3 * len(self.hyperparameters.space), 3)
        grid = self._grid()
        self._slots = grid is not None  # else KerasTuner's own embedding, which its L-BFGS path decodes
        if len(completed) < initial_points or grid is None:
            return super().populate_space(trial_id)
        vectors, points = grid
        x, y = self._vectorize_trials()
        with warnings.catch_warnings():  # a length scale at its bound is a fine fit here, not news for the user
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gpr.fit(np.nan_to_num(x, posinf=0, neginf=0), np.nan_to_num(y, posinf=0, neginf=0))
        mean, std = self.gpr.predict(vectors, return_std=True)
        acquisition = mean - self.beta * std  # scores are negated when maximising, as in KerasTuner
        # Trials taken together (tuner.parallel_heads, distributed workers) differ: besides the pessimistic guess
        # `_vectorize_trials` gives running trials, a point still running is not proposed again.
        running = [self._trial_vector(t) for t in self.ongoing_trials.values()]
        taken = np.array([any(np.allclose(v, r) for r in running) for v in vectors])
        if not taken.all():
            acquisition = np.where(taken, np.inf, acquisition)
        return {"status": trial_module.TrialStatus.RUNNING, "values": points[int(np.argmin(acquisition))]}

    def _grid(self) -> tuple[np.ndarray, list[dict]] | None:
        """Every distinct point of the space as (its embedding, its values); None when the space is continuous
        or too large to list."""
        space = self._nonfixed_space()
        choices = [grid_values(hp) for hp in space]
        if not space or any(c is None for c in choices) or np.prod([len(c) for c in choices], dtype=float) > \
                MAX_GRID_POINTS:
            return None
        points: dict[tuple, dict] = {}
        for combination in itertools.product(*choices):
            values = self._active_values(dict(zip((hp.name for hp in space), combination)))
            points.setdefault(tuple(sorted(values.items())), values)
        return np.array([self._embed(values) for values in points.values()]), list(points.values())

    def _embed(self, values: dict) -> list[float]:
        """A point in [0, 1]^d: stepped and choice knobs at the centre of their value's slot (KerasTuner's own
        value_to_prob maps dropout 0.5 and 0.6 of 0.3-0.8 by 0.1 to the same number), inactive ones at their
        default, as KerasTuner does."""
        vector = []
        for hp in self._nonfixed_space():
            value = values[hp.name] if hp.name in values else hp.default
            options = grid_values(hp)
            if options is None:
                vector.append(hp.value_to_prob(value))
            else:
                vector.append((slot(options, value) + 0.5) / len(options))
        return vector

    def _vectorize_trials(self):
        """KerasTuner's, with `_embed`: completed trials at their (negated when maximising) score, running ones
        at a pessimistic guess so that parallel workers are not all sent to the same point."""
        if not self._slots:
            return super()._vectorize_trials()
        x, y = [], []
        running = set(self.ongoing_trials.values())
        for trial in self.trials.values():
            vector = self._trial_vector(trial)
            if trial in running:
                mean, std = self.gpr.predict(np.array([vector]), return_std=True)
                score = float(np.ravel(mean)[0] + np.ravel(std)[0])
            elif trial.status == "COMPLETED":
                score = minimised(self.objective.name, trial.score)
            else:  # failed or invalid: left out
                continue
            x.append(vector)
            y.append(score)
        return np.array(x), np.array(y)

    def _trial_vector(self, trial) -> list[float]:
        hps = trial.hyperparameters
        return self._embed({hp.name: hps.values[hp.name] for hp in self._nonfixed_space()
                            if hps.is_active(hp) and hp.name in hps.values})

    def _active_values(self, chosen: dict) -> dict:
        """`chosen` with only the knobs active under it (KerasTuner's conditional scopes)."""
        hps = hp_module.HyperParameters()
        for hp in self.hyperparameters.space:
            hps.merge([hp])
            if hps.is_active(hp):
                hps.values[hp.name] = hp.value if isinstance(hp, hp_module.Fixed) else chosen[hp.name]
        return hps.values


def slot(options: list, value) -> int:
    if value in options:
        return options.index(value)
    return int(np.argmin([abs(option - value) for option in options]))  # a float a rounding away from its step


def grid_values(hp) -> list | None:
    """The values a hyperparameter can take, or None when it is continuous."""
    if isinstance(hp, hp_module.Choice):
        return list(hp.values)
    if isinstance(hp, hp_module.Boolean):
        return [False, True]
    if isinstance(hp, (hp_module.Int, hp_module.Float)) and hp.step and hp.sampling in (None, "linear"):
        count = int(np.floor((hp.max_value - hp.min_value) / hp.step + 1e-9)) + 1
        return [round(hp.min_value + i * hp.step, 10) for i in range(count)]
    return None
