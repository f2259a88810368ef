import keras_tuner as kt

from components.config import load_config
from components.search.oracle import GridBayesianOracle
from components.search.space import HeadHyperModel


def smooth_score(values: dict) -> float:
    """A made-up validation accuracy, best at units 32, dropout 0.5, extra layer of 8."""
    return (1.0 - 0.01 * abs(values["units"] - 32) - (values["dropout"] - 0.5) ** 2
            - 0.001 * abs(values.get("extra_units", 0) - 8))


class ScoredTuner(kt.Tuner):
    """Scores each trial with `smooth_score` instead of training: the oracle's choices alone are under test."""

    def run_trial(self, trial, *args, **kwargs):
        return {"val_accuracy": smooth_score(trial.hyperparameters.values)}


def _tuner(tmp_path, max_trials: int) -> ScoredTuner:
    (tmp_path / "params.yaml").write_text("{}")
    config = load_config(tmp_path / "params.yaml")  # the default space: 66 points
    oracle = GridBayesianOracle(objective=kt.Objective("val_accuracy", "max"), max_trials=max_trials, seed=3)
    return ScoredTuner(oracle=oracle, hypermodel=HeadHyperModel(config.space, 4, 2),
                       directory=str(tmp_path / "tuner"), project_name="grid")


def test_grid_lists_every_point_of_the_default_space_once(tmp_path):
    tuner = _tuner(tmp_path, 1)
    tuner.search(verbose=0)  # declares the space
    vectors, points = tuner.oracle._grid()
    assert len(points) == len(vectors) == 3 * 6 + 2 * 6 * 4  # units 4/8/16 x dropout; 32/64 x dropout x extra
    assert len({tuple(sorted(p.items())) for p in points}) == len(points)
    assert {p["dropout"] for p in points} == {0.3, 0.4, 0.5, 0.6, 0.7, 0.8}
    assert all(("extra_units" in p) == (p["units"] in (32, 64)) for p in points)


def test_search_finds_the_best_point_of_a_smooth_objective(tmp_path):
    tuner = _tuner(tmp_path, 20)
    tuner.search(verbose=0)
    _, points = tuner.oracle._grid()
    best_possible = max(points, key=smooth_score)
    best = tuner.oracle.get_best_trials(1)[0].hyperparameters.values
    assert best == best_possible == {"units": 32, "dropout": 0.5, "extra_units": 8}
    assert len(tuner.oracle.trials) == 20  # 20 of 66 points: a random search finds the best one in 20 tries ~30%


def test_trials_taken_together_are_different_points(tmp_path):
    """Past the random start, four trials asked for at once (tuner.parallel_heads, or workers) all differ."""
    tuner = _tuner(tmp_path, 40)
    tuner.search(verbose=0)  # 40 trials scored one by one: the Gaussian process is well past its random start
    oracle, status = tuner.oracle, kt.engine.trial.TrialStatus
    oracle.max_trials = 44
    taken = [oracle.create_trial(f"slot-{slot}") for slot in range(4)]
    assert [t.status for t in taken] == [status.RUNNING] * 4
    assert len({tuple(sorted(t.hyperparameters.values.items())) for t in taken}) == 4
