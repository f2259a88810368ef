import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from components.config import load_config
from components.features.identity import load_split_features, valid_parts
from components.search.tuner import run_search
from components.stages.extract import extract_stage
from components.tracking import tracking_uri


def _search(project, *overrides):
    config = load_config(project / "params.yaml", list(overrides))
    extract_stage(config, splits=("train", "valid", "test"))
    train, valid = load_split_features(config, "train"), load_split_features(config, "valid")
    return config, run_search(config, train, valid)


def _children(config, parent_run_id):
    client = MlflowClient(tracking_uri(config))
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return client, runs


def test_every_trial_is_a_nested_run_with_params_and_epoch_histories(tiny_run):
    config, result = tiny_run.config, tiny_run.search
    client, runs = _children(config, result.parent_run_id)
    assert len(runs) == 3 and len(result.trials) == 3
    for run in runs:
        assert run.info.status == "FINISHED"
        assert set(run.data.params) >= {"units", "dropout", "extra_units"}
        for name in ("loss", "accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
            history = client.get_metric_history(run.info.run_id, name)
            assert [m.step for m in history] == [0, 1], name
        assert {"score", "trial_seconds", "mean_epoch_seconds"} <= set(run.data.metrics)
        if run.data.params["units"] not in ("32", "64"):
            assert run.data.params["extra_units"] == "inactive"
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["train_content_hash"] and parent.data.tags["git_commit"]
    assert {"best_score", "search_seconds"} <= set(parent.data.metrics)
    assert parent.data.params["best.units"] == str(result.hyperparameters["units"])
    assert result.score == max(t["score"] for t in result.trials)



def test_the_search_its_trials_and_its_evaluation_log_the_feature_files_they_saw_as_datasets(tiny_run):
    config = tiny_run.config
    client, trials = _children(config, tiny_run.search.parent_run_id)
    features = {split: load_split_features(config, split) for split in ("train", "valid", "test")}
    features["valid"] = valid_parts(config, features["valid"])[0]  # the search never sees the held-out part

    def datasets(run_id: str) -> dict:
        return {d.dataset.name: d for d in client.get_run(run_id).inputs.dataset_inputs}

    for run in trials:
        assert sorted(datasets(run.info.run_id)) == ["train", "valid"]
    logged = datasets(tiny_run.search.parent_run_id)  # the search's, and the evaluation's test split
    assert sorted(logged) == ["test", "train", "valid"]
    for split, entry in logged.items():
        dataset, shown = entry.dataset, features[split]
        assert dataset.digest == shown.attrs["key"][:16]
        assert json.loads(dataset.source) == {"uri": str(config.data.root / split)}
        profile = json.loads(dataset.profile)
        assert profile["rows"] == len(shown.labels) and profile["feature_shape"] == [shown.features.shape[1]]
        assert profile["features_key"] == shown.attrs["key"]
        assert {t.key: t.value for t in entry.tags} == {"mlflow.data.context": split}

# What each of a trial's two executions reports, epoch by epoch: no series is monotone and each execution has its
# best epoch elsewhere, so every other way of combining them (first or last execution, last epoch, best of the
# per-epoch means, best of all epochs) gives a different number than KerasTuner's.
EXECUTION_HISTORIES = [
    {"loss": [1.0, 0.8, 0.7, 0.65], "accuracy": [0.5, 0.6, 0.7, 0.75],
     "val_loss": [0.9, 0.3, 0.6, 0.7], "val_accuracy": [0.5, 0.9, 0.6, 0.7]},
    {"loss": [1.2, 0.9, 0.6, 0.5], "accuracy": [0.55, 0.65, 0.6, 0.8],
     "val_loss": [0.5, 0.8, 0.1, 0.4], "val_accuracy": [0.6, 0.4, 0.95, 0.8]},
]


def _report_known_histories(monkeypatch) -> list:
    """Real training, then what each execution reports replaced by the known series."""
    from components.search.head_group import HeadGroup

    executions = []
    real_step = HeadGroup.step

    def step(self):
        finished = real_step(self)
        for _, run in finished:  # the group's own bookkeeping of each head's best epoch, on the known series
            run.history = {k: list(v) for k, v in EXECUTION_HISTORIES[len(executions)].items()}
            run.best_epoch = int(np.argmax(run.history["val_accuracy"]))
            run.best_value = max(run.history["val_accuracy"])
            executions.append(run)
        return finished

    monkeypatch.setattr(HeadGroup, "step", step)
    return executions


@pytest.mark.parametrize("heads", [1, 2])
def test_trial_logs_the_mean_of_its_executions_per_epoch_and_scores_their_mean_best_epoch(extracted_project,
                                                                                          monkeypatch, heads):
    executions = _report_known_histories(monkeypatch)
    config, result = _search(extracted_project, "tuner.max_trials=1", "tuner.executions_per_trial=2",
                             "tuner.algorithm=random", "train.epochs=4", "train.early_stopping_patience=0",
                             f"tuner.parallel_heads={heads}", f"tuner.directory=.ffx/tuner-{heads}",
                             f"mlflow.experiment=heads-{heads}")
    client, (run,) = _children(config, result.parent_run_id)
    assert len(executions) == 2
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        logged = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in logged] == [0, 1, 2, 3], name  # one value per epoch, not per execution
        expected = np.mean([h[name] for h in EXECUTION_HISTORIES], axis=0)
        np.testing.assert_allclose([m.value for m in logged], expected, rtol=1e-6, err_msg=name)
    # KerasTuner's score: each execution's best epoch (highest val_accuracy: 0.9 and 0.95), averaged.
    assert run.data.metrics["score"] == pytest.approx(0.925) and result.score == pytest.approx(0.925)


def test_rerun_of_a_finished_search_reuses_its_parent_run(extracted_project):
    settings = ("tuner.max_trials=2", "train.epochs=1")
    config, first = _search(extracted_project, *settings)
    _, second = _search(extracted_project, *settings)
    assert second.parent_run_id == first.parent_run_id
    _, runs = _children(config, first.parent_run_id)
    assert len(runs) == 2  # no trial ran twice


@pytest.mark.e2e
def test_hyperband_continues_a_trial_from_the_best_weights_of_the_one_it_extends(extracted_project, monkeypatch):
    from components.search.grouped_trials import GroupedTrials

    continued = []
    real = GroupedTrials.continued

    def spy(self, trial, epochs):
        budget, weights = real(self, trial, epochs)
        if weights is not None:  # the checkpoint of the trial it extends, read back
            previous = self.hypermodel.build(trial.hyperparameters)
            previous.load_weights(self.head_weights_path(trial.hyperparameters.values["tuner/trial_id"]))
            assert all(np.array_equal(a, b) for a, b in zip(weights, previous.get_weights()))
            continued.append((trial.trial_id, budget))
        return budget, weights

    monkeypatch.setattr(GroupedTrials, "continued", spy)
    config, result = _search(extracted_project, "tuner.algorithm=hyperband", "train.epochs=4",
                             "tuner.executions_per_trial=1", "train.early_stopping_patience=0",
                             "tuner.directory=.ffx/tuner-hyperband", "mlflow.experiment=hyperband")
    client, runs = _children(config, result.parent_run_id)
    assert continued and all(run.info.status == "FINISHED" for run in runs)
    by_trial = {run.data.tags["ffx_trial_id"]: run for run in runs}
    for trial_id, budget in continued:  # trained tuner/epochs - tuner/initial_epoch epochs, not all of them
        params = by_trial[trial_id].data.params
        assert budget == int(params["tuner/epochs"]) - int(params["tuner/initial_epoch"]) < config.train.epochs
        assert len(client.get_metric_history(by_trial[trial_id].info.run_id, "loss")) == budget
    assert result.model.output_shape == (None, 1)


@pytest.mark.e2e
def test_multi_class_search_learns_three_separable_classes(tmp_path):
    """Three colour classes (tests/conftest.py make_dataset), separable even through a random-weights backbone:
    a search whose multi-class loss or labels were wrong would stay near chance (1/3) or predict one class."""
    from conftest import make_dataset, write_params

    make_dataset(tmp_path / "data", classes=("blue", "green", "red"))
    write_params(tmp_path)
    config, result = _search(tmp_path, "tuner.max_trials=1", "train.epochs=10", "tuner.algorithm=random")
    assert result.model.output_shape == (None, 3)
    valid = load_split_features(config, "valid")
    probabilities = result.model.predict(valid.features, verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)  # one distribution per image
    predicted = probabilities.argmax(axis=1)
    assert set(predicted) == {0, 1, 2}  # every class is predicted
    assert (predicted == valid.labels).mean() >= 0.75  # chance: 1/3
    assert result.score == pytest.approx(max(t["score"] for t in result.trials)) and result.score >= 0.75


def test_train_and_valid_features_of_other_backbone_settings_are_refused_naming_the_setting(extracted):
    import dataclasses

    from components.errors import FFXError
    from components.features.identity import load_split_features, valid_parts
    from components.search.tuner import check_compatible

    train, valid = load_split_features(extracted.config, "train"), load_split_features(extracted.config, "valid")
    check_compatible(train, valid)
    other = dataclasses.replace(valid, attrs=dict(valid.attrs, identity=dict(valid.attrs["identity"], pooling="avg")))
    with pytest.raises(FFXError, match=r"other backbone settings than train.h5 \(pooling 'avg', expected 'flatten'\)"):
        check_compatible(train, other)
