"""The KerasTuner side of grouped training: a tuner mixin whose search runs the TrialScheduler
(components.search.scheduler) with the tuner's oracle as its source of trials and a HeadGroup as its trainer."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from components.config import minimised
from components.files import content_key, disk_full_as_error
from components.search.head_group import HeadGroup, HeadRun, HeadSpec
from components.search.scheduler import Execution, NoTrial, TrialScheduler

# What GroupedTrials calls on the classes it is mixed with, checked when such a class is defined: KerasTuner's
# Tuner (and BaseTuner) and components.search.trial_logging.MlflowTrialLogging.
PARTNER_METHODS = ("on_search_begin", "on_search_end", "on_trial_begin", "on_trial_end", "_get_checkpoint_fname",
                   "log_executions", "log_heads_in_graph")


class GroupedTuner(Protocol):
    """A KerasTuner tuner with GroupedTrials and MlflowTrialLogging mixed in, as KerasTunerTrials uses it."""
    oracle: Any                # keras_tuner.Oracle (or its distributed client)
    hypermodel: Any            # components.search.space.HeadHyperModel
    executions_per_trial: int
    tuner_id: str

    def on_search_begin(self) -> None: ...
    def on_search_end(self) -> None: ...
    def on_trial_begin(self, trial) -> None: ...
    def on_trial_end(self, trial) -> None: ...
    def _get_checkpoint_fname(self, trial_id: str) -> str: ...
    def log_executions(self, trial, histories: list[dict], epoch_seconds: list[list[float]]) -> None: ...
    def log_heads_in_graph(self, trial, heads: int) -> None: ...
    def _continued(self, trial, epochs: int) -> tuple[int, list[np.ndarray] | None]: ...


class GroupedTrials:
    """Mixed into a KerasTuner tuner (with MlflowTrialLogging): its search keeps every slot of a HeadGroup busy
    with the executions of trials taken from the oracle as slots free up — concurrent trials, as KerasTuner hands
    them to distributed workers. A head that stops early makes room for the next one at once.

    Each trial is still a trial: its MLflow run, its own score reported to the oracle (the mean over executions of
    each one's best epoch, as KerasTuner scores), its best weights in KerasTuner's checkpoint (so `load_model`
    gives the ordinary head), and resumption after a kill (a request id gets its unfinished trial back).
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        missing = [name for name in PARTNER_METHODS if not callable(getattr(cls, name, None))]
        if missing:
            raise TypeError(f"{cls.__name__} mixes in GroupedTrials without {', '.join(missing)}: mix it with "
                            "MlflowTrialLogging and a keras_tuner Tuner")

    def search_grouped(self: GroupedTuner, group: HeadGroup, data: tuple, epochs: int, patience: int,
                       seed: int) -> None:
        """`data`: standardised (train features, train labels, valid features, valid labels)."""
        import keras_tuner as kt

        self.oracle.verbose = 0  # as tuner.search(verbose=0): ffx prints its own line per trial
        self.on_search_begin()
        group.set_data(*data, epochs, patience, self.oracle.objective.name, seed)
        # One oracle request id per slot: a trial holds its id until it ends, so at most `slots` run at once.
        request_ids = [f"{self.tuner_id}-{n}" for n in range(group.slots)]
        trials = KerasTunerTrials(self, heads_in_graph=group.slots, epochs=epochs, seed=seed)
        TrialScheduler(trials, group, request_ids, fatal=(kt.errors.FatalError,)).run()
        self.on_search_end()

    def _continued(self: GroupedTuner, trial, epochs: int) -> tuple[int, list[np.ndarray] | None]:
        """(epochs to train, starting weights): Hyperband's trials train tuner/epochs - tuner/initial_epoch epochs,
        from the best weights of the trial they continue (tuner/trial_id), as kt.Hyperband's own fit does."""
        values = trial.hyperparameters.values
        if "tuner/epochs" not in values:
            return epochs, None
        weights = None
        if "tuner/trial_id" in values:
            head = self.hypermodel.build(trial.hyperparameters)
            head.load_weights(self._get_checkpoint_fname(values["tuner/trial_id"]))
            weights = head.get_weights()
        return values["tuner/epochs"] - values["tuner/initial_epoch"], weights


class KerasTunerTrials:
    """The scheduler's TrialSource over a KerasTuner tuner: trials from its oracle; scores to the oracle, best
    weights to KerasTuner's checkpoint and epochs to MLflow (MlflowTrialLogging)."""

    def __init__(self, tuner: GroupedTuner, heads_in_graph: int, epochs: int, seed: int):
        self.tuner, self.heads_in_graph, self.epochs, self.seed = tuner, heads_in_graph, epochs, seed

    def request(self, request_id: str):
        from keras_tuner.engine.trial import TrialStatus

        trial = self.tuner.oracle.create_trial(request_id)
        if trial.status == TrialStatus.RUNNING:
            return trial
        return NoTrial.OVER if trial.status == TrialStatus.STOPPED else NoTrial.IDLE

    def executions(self, trial) -> list[Execution]:
        epochs, weights = self.tuner._continued(trial, self.epochs)
        sizes = self.tuner.hypermodel.sizes(trial.hyperparameters)
        return [Execution(HeadSpec(*sizes, seed=int(content_key([self.seed, trial.trial_id, execution])[:8], 16)),
                          epochs, weights) for execution in range(self.tuner.executions_per_trial)]

    def begin(self, trial) -> None:
        self.tuner.on_trial_begin(trial)

    def completed(self, trial, runs: list[HeadRun]) -> None:
        """The trial's score to the oracle, its best weights to KerasTuner's checkpoint, its epochs to MLflow."""
        from keras_tuner.engine.trial import TrialStatus

        tuner = self.tuner
        metrics = {name: float(np.mean([run.history[name][run.best_epoch] for run in runs])) for name in runs[0].history}
        tuner.oracle.update_trial(trial.trial_id, metrics, step=int(np.mean([run.best_epoch for run in runs])))
        best = min(runs, key=lambda run: minimised(tuner.oracle.objective.name, run.best_value))
        head = tuner.hypermodel.build(trial.hyperparameters)
        head.set_weights(best.weights)
        checkpoint = tuner._get_checkpoint_fname(trial.trial_id)
        with disk_full_as_error(checkpoint):  # the machine's fault: the search stops, and resumes this trial
            head.save_weights(checkpoint)
        tuner.log_executions(trial, [run.history for run in runs], [run.epoch_seconds for run in runs])
        tuner.log_heads_in_graph(trial, self.heads_in_graph)
        trial.status = TrialStatus.COMPLETED
        tuner.on_trial_end(trial)

    def failed(self, trial, error: str) -> None:
        """Recorded as KerasTuner records a trial whose fit raised (its oracle stops after too many in a row)."""
        from keras_tuner.engine.trial import TrialStatus

        trial.status, trial.message = TrialStatus.FAILED, error
        self.tuner.on_trial_end(trial)

    def search_over(self, request_ids: list[str]) -> None:
        for request_id in request_ids:  # a distributed chief ends once every id it has seen was told it is over
            self.tuner.oracle.create_trial(request_id)
