"""Bayesian optimisation of the head's hyperparameters behind KerasTuner's public oracle protocol: a Gaussian process
(scikit-learn) fitted on the trials' values and scores, its upper-confidence-bound acquisition minimised over every
point of a finite space, or over random points of a space too large to list."""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import keras_tuner as kt
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import Matern

from components.config import minimised

# Points the acquisition is scored on: every point of a space that has no more, else this many random ones. The
# head's space is finite (every knob a choice or a stepped range), so its acquisition minimum is exact and costs
# one vectorised prediction.
MAX_CANDIDATES = 10_000
# KerasTuner's BayesianOptimizationOracle defaults, so that this search weighs evidence as KerasTuner's does: the
# noise on the kernel's diagonal, the weight of the posterior's standard deviation in the acquisition, and the
# restarts of the kernel's length-scale fit.
ALPHA, BETA, KERNEL_RESTARTS = 1e-4, 2.6, 20


@dataclass(frozen=True)
class Knob:
    """A hyperparameter the search chooses (any but Fixed)."""
    hp: Any                # the KerasTuner hyperparameter: its name, default, value_to_prob and random_sample
    options: list | None   # its values when finitely many; None: continuous

    def embed(self, value) -> float:
        """`value` in [0, 1]: a finite knob's at the centre of its value's slot, so that every value is told apart
        (KerasTuner's value_to_prob maps dropout 0.5 and 0.6 of 0.3-0.8 by 0.1 to the same number); a continuous
        one's where value_to_prob puts it."""
        if self.options is None:
            return float(self.hp.value_to_prob(value))
        return (slot(self.options, value) + 0.5) / len(self.options)


class SearchSpace:
    """A KerasTuner search space (HyperParameters), read through its public serialisation (get_config)."""

    def __init__(self, hyperparameters):
        entries = hyperparameters.get_config()["space"]
        self.declared = [(hp, entry["class_name"], entry["config"])
                         for hp, entry in zip(hyperparameters.space, entries, strict=True)]
        self.knobs = [Knob(hp, grid_values(kind, config)) for hp, kind, config in self.declared if kind != "Fixed"]

    def embed(self, values: dict) -> list[float]:
        """A point's vector; a knob inactive in it (absent from `values`) at its default, as KerasTuner embeds it."""
        return [knob.embed(values[knob.hp.name] if knob.hp.name in values else knob.hp.default)
                for knob in self.knobs]

    def trial_vector(self, hyperparameters) -> list[float]:
        """The vector of a trial's values (its HyperParameters): the knobs active in the trial."""
        return self.embed({knob.hp.name: hyperparameters.values[knob.hp.name] for knob in self.knobs
                           if hyperparameters.is_active(knob.hp) and knob.hp.name in hyperparameters.values})

    def active_values(self, chosen: dict) -> dict:
        """`chosen` with only the knobs active under it (KerasTuner's conditional scopes), and the Fixed values."""
        hps = kt.HyperParameters()
        for hp, kind, config in self.declared:
            hps.merge([hp])
            if hps.is_active(hp):
                hps.values[hp.name] = config["value"] if kind == "Fixed" else chosen[hp.name]
        return hps.values

    def grid(self) -> list[dict] | None:
        """Every distinct point of the space; None when a knob is continuous or the points are too many to list."""
        if any(knob.options is None for knob in self.knobs) or \
                math.prod(len(knob.options) for knob in self.knobs) > MAX_CANDIDATES:
            return None
        points: dict[tuple, dict] = {}
        for combination in itertools.product(*(knob.options for knob in self.knobs)):
            values = self.active_values(dict(zip((knob.hp.name for knob in self.knobs), combination)))
            points.setdefault(tuple(sorted(values.items())), values)
        return list(points.values())

    def random_points(self, count: int, seed: list[int]) -> list[dict]:
        """`count` points drawn by each knob's own random_sample, seeded from `seed`."""
        seeds = np.random.default_rng(seed).integers(2**31, size=(count, len(self.knobs)))
        return [self.active_values({knob.hp.name: knob.hp.random_sample(int(s)) for knob, s in zip(self.knobs, row)})
                for row in seeds]


@dataclass(frozen=True)
class UpperConfidenceBound:
    """KerasTuner's Bayesian model and acquisition: a Gaussian process with a Matern(5/2) kernel on the normalised
    scores to minimise, and the lowest mean - beta * std."""
    alpha: float = ALPHA
    beta: float = BETA

    def fit(self, x: np.ndarray, y: np.ndarray, seed: int | None, kernel=None) -> GaussianProcessRegressor:
        """The process fitted on points `x` with scores `y`: its kernel's length scale fitted from restarts drawn
        from `seed`, or `kernel` as is."""
        process = GaussianProcessRegressor(kernel=kernel or Matern(nu=2.5), alpha=self.alpha, normalize_y=True,
                                           optimizer=None if kernel else "fmin_l_bfgs_b",
                                           n_restarts_optimizer=0 if kernel else KERNEL_RESTARTS, random_state=seed)
        with warnings.catch_warnings():  # a length scale at its bound is a fine fit here, not news for the user
            warnings.simplefilter("ignore", ConvergenceWarning)
            process.fit(np.nan_to_num(x, posinf=0, neginf=0), np.nan_to_num(y, posinf=0, neginf=0))
        return process

    def with_running(self, done_x: np.ndarray, done_y: np.ndarray, running_x: np.ndarray,
                     seed: int | None) -> GaussianProcessRegressor:
        """The process fitted on the completed points, then told the running ones at a pessimistic guess (the
        fitted mean plus one standard deviation there), so that trials taken together spread out. The kernel is
        the completed points' alone: a guess is no evidence about the length scale."""
        process = self.fit(done_x, done_y, seed)
        if not len(running_x):
            return process
        mean, std = process.predict(running_x, return_std=True)
        return self.fit(np.vstack([done_x, running_x]), np.concatenate([done_y, mean + std]), seed,
                        kernel=process.kernel_)

    def lowest(self, candidates: np.ndarray, done_x: np.ndarray, done_y: np.ndarray, running_x: np.ndarray,
               seed: int | None = None) -> int:
        """Index of the candidate of lowest acquisition; a candidate still running is not proposed again (unless
        every one is)."""
        mean, std = self.with_running(done_x, done_y, running_x, seed).predict(candidates, return_std=True)
        acquisition = mean - self.beta * std
        if len(running_x):
            taken = np.isclose(candidates[:, None, :], running_x[None, :, :]).all(axis=2).any(axis=1)
            if not taken.all():
                acquisition = np.where(taken, np.inf, acquisition)
        return int(np.argmin(acquisition))


class GridBayesianOracle(kt.oracles.RandomSearchOracle):
    """Bayesian optimisation through the oracle's public hook (populate_space): random points (KerasTuner's random
    search, which also says when the space is exhausted) until `num_initial_points` trials have completed (default:
    3 per hyperparameter, at least 3, as KerasTuner's), then the point of lowest acquisition given the completed
    and running trials."""

    def __init__(self, objective, max_trials: int, seed: int | None = None, num_initial_points: int | None = None,
                 alpha: float = ALPHA, beta: float = BETA, **kwargs):
        super().__init__(objective=objective, max_trials=max_trials, seed=seed, **kwargs)
        self.num_initial_points = num_initial_points
        self.acquisition = UpperConfidenceBound(alpha, beta)

    def populate_space(self, trial_id):
        space = SearchSpace(self.hyperparameters)
        completed = [t for t in self.trials.values() if t.status == "COMPLETED"]
        initial_points = self.num_initial_points or max(3 * len(self.hyperparameters.space), 3)
        if not space.knobs or len(completed) < initial_points:
            return super().populate_space(trial_id)
        candidates = space.grid() or space.random_points(MAX_CANDIDATES, [self.seed, len(self.trials)])
        dimensions = len(space.knobs)
        index = self.acquisition.lowest(
            np.array([space.embed(values) for values in candidates]),
            np.array([space.trial_vector(t.hyperparameters) for t in completed]),
            np.array([minimised(self.objective.name, t.score) for t in completed]),
            np.array([space.trial_vector(t.hyperparameters) for t in self.ongoing_trials.values()]).reshape(
                -1, dimensions), seed=self.seed)
        return {"status": "RUNNING", "values": candidates[index]}


def slot(options: list, value) -> int:
    if value in options:
        return options.index(value)
    return int(np.argmin([abs(option - value) for option in options]))  # a float a rounding away from its step


def grid_values(kind: str, config: dict) -> list | None:
    """The values a hyperparameter of `kind` (its class name in HyperParameters.get_config) can take, or None when
    it is continuous."""
    if kind == "Choice":
        return list(config["values"])
    if kind == "Boolean":
        return [False, True]
    if kind in ("Int", "Float") and config["step"] and config["sampling"] in (None, "linear"):
        count = int(np.floor((config["max_value"] - config["min_value"]) / config["step"] + 1e-9)) + 1
        return [round(config["min_value"] + i * config["step"], 10) for i in range(count)]
    return None
