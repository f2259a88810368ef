import keras_tuner as kt
import numpy as np

from components.config import load_config
from components.search.oracle import GridBayesianOracle, SearchSpace, UpperConfidenceBound
from components.search.space import HeadHyperModel


def smooth_score(values: dict) -> float:
    """A made-up validation accuracy, best at units 32, dropout 0.5, extra layer of 8."""
    return (1.0 - 0.01 * abs(values["units"] - 32) - (values["dropout"] - 0.5) ** 2
            - 0.001 * abs(values.get("extra_units", 0) - 8))


class ScoredTuner(kt.Tuner):
    """Scores each trial with `score` instead of training: the oracle's choices alone are under test."""

    def __init__(self, score, **kwargs):
        super().__init__(**kwargs)
        self.score = score

    def run_trial(self, trial, *args, **kwargs):
        return {"val_accuracy": self.score(trial.hyperparameters.values)}


class ContinuousHyperModel(kt.HyperModel):
    """One continuous knob: no grid to list."""

    def build(self, hp):
        hp.Float("x", 0.0, 1.0)


def _tuner(tmp_path, max_trials: int) -> ScoredTuner:
    (tmp_path / "params.yaml").write_text("{}")
    config = load_config(tmp_path / "params.yaml")  # the default space: 66 points
    oracle = GridBayesianOracle(objective=kt.Objective("val_accuracy", "max"), max_trials=max_trials, seed=3)
    return ScoredTuner(smooth_score, oracle=oracle, hypermodel=HeadHyperModel(config.space, 4, 2),
                       directory=str(tmp_path / "tuner"), project_name="grid")


def test_grid_lists_every_point_of_the_default_space_once(tmp_path):
    tuner = _tuner(tmp_path, 1)
    tuner.search(verbose=0)  # declares the space
    points = SearchSpace(tuner.oracle.hyperparameters).grid()
    assert len(points) == 3 * 6 + 2 * 6 * 4  # units 4/8/16 x dropout; 32/64 x dropout x extra
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert {p["dropout"] for p in points} == {0.3, 0.4, 0.5, 0.6, 0.7, 0.8}
    assert all(("extra_units" in p) == (p["units"] in (32, 64)) for p in points)


def test_search_finds_the_best_point_of_a_smooth_objective(tmp_path):
    tuner = _tuner(tmp_path, 20)
    tuner.search(verbose=0)
    points = SearchSpace(tuner.oracle.hyperparameters).grid()
    best_possible = max(points, key=smooth_score)
    best = tuner.oracle.get_best_trials(1)[0].hyperparameters.values
    assert best == best_possible == {"units": 32, "dropout": 0.5, "extra_units": 8}
    assert len(tuner.oracle.trials) == 20  # 20 of 66 points: a random search finds the best one in 20 tries ~30%


def test_trials_taken_together_are_different_points(tmp_path):
    """Past the random start, four trials asked for at once (tuner.parallel_heads, or workers) all differ."""
    tuner = _tuner(tmp_path, 40)
    tuner.search(verbose=0)  # 40 trials scored one by one: the Gaussian process is well past its random start
    oracle = tuner.oracle
    oracle.max_trials = 44
    taken = [oracle.create_trial(f"slot-{slot}") for slot in range(4)]
    assert [t.status for t in taken] == ["RUNNING"] * 4
    assert len({tuple(sorted(t.hyperparameters.values.items())) for t in taken}) == 4


def test_a_continuous_space_is_searched_on_random_candidates_scored_by_the_process(tmp_path):
    """A smooth function of one continuous knob, best at 0.7: past the 3 random points, the acquisition's choices
    gather at the optimum. Ten random points would all fall within 0.03 of it once in 10^12 searches."""
    oracle = GridBayesianOracle(objective=kt.Objective("val_accuracy", "max"), max_trials=20, seed=5)
    tuner = ScoredTuner(lambda values: -(values["x"] - 0.7) ** 2, oracle=oracle, hypermodel=ContinuousHyperModel(),
                        directory=str(tmp_path / "tuner"), project_name="continuous")
    tuner.search(verbose=0)
    assert SearchSpace(oracle.hyperparameters).grid() is None
    assert len(oracle.trials) == 20
    last = [trial.hyperparameters.values["x"] for trial in oracle.trials.values()][-10:]
    assert all(abs(x - 0.7) < 0.03 for x in last), last


def test_a_running_trial_counts_at_a_pessimistic_guess_and_is_not_proposed_again():
    ucb = UpperConfidenceBound()
    grid = np.linspace(0, 1, 21)[:, None]
    done_x = np.array([[0.0], [0.25], [0.5], [0.75], [1.0]])
    done_y = (done_x[:, 0] - 0.4) ** 2  # lowest near 0.4
    first = ucb.lowest(grid, done_x, done_y, np.empty((0, 1)), seed=0)
    running = grid[[first]]
    fitted = ucb.fit(done_x, done_y, seed=0)
    mean, std = fitted.predict(running, return_std=True)
    told = ucb.with_running(done_x, done_y, running, seed=0)
    assert std[0] > 0.1 * abs(mean[0])  # a guess far enough from the mean to tell apart
    np.testing.assert_allclose(told.predict(running), mean + std, rtol=1e-2)  # the guess: mean plus one std
    assert told.kernel_ == fitted.kernel_  # fitted on the completed trials alone
    second = ucb.lowest(grid, done_x, done_y, running, seed=0)
    assert second != first
    assert ucb.lowest(grid[[first]], done_x, done_y, running, seed=0) == 0  # every candidate running: proposed anyway
