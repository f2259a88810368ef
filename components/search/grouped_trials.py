"""The KerasTuner side of grouped training: a tuner mixin whose search runs the TrialScheduler
(components.search.scheduler) with the tuner's oracle as its source of trials and a HeadGroup as its trainer."""
from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from components.config import minimised
from components.errors import FFXError
from components.files import content_key, disk_full_as_error
from components.search.head_group import HeadGroup, HeadRun, HeadSpec
from components.search.scheduler import Execution, NoTrial, TrialScheduler

# What GroupedTrials calls on the classes it is mixed with, checked when such a class is defined: KerasTuner's
# Tuner (and BaseTuner) and components.search.trial_logging.MlflowTrialLogging.
PARTNER_METHODS = ("on_search_begin", "on_search_end", "on_trial_begin", "on_trial_end", "get_trial_dir",
                   "log_executions", "log_heads_in_graph")
# A trial's best head, in the trial's KerasTuner directory, under the file name KerasTuner gives a trial's
# checkpoint: a saved search whose weights KerasTuner named resumes with them.
HEAD_WEIGHTS = "checkpoint.weights.h5"
# Trials failed one after another (this process's) before the search stops: KerasTuner's default limit. The
# oracles are built without a limit of their own: theirs stops with an untyped RuntimeError.
MAX_FAILED_IN_A_ROW = 3


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
    def get_trial_dir(self, trial_id: str) -> str: ...
    def head_weights_path(self: GroupedTuner, trial_id: str) -> str: ...
    def log_executions(self, trial, histories: list[dict], epoch_seconds: list[list[float]]) -> None: ...
    def log_heads_in_graph(self, trial, heads: int) -> None: ...
    def continued(self, trial, epochs: int) -> tuple[int, list[np.ndarray] | None]: ...


class GroupedTrials:
    """Mixed into a KerasTuner tuner (with MlflowTrialLogging): its search keeps every slot of a HeadGroup busy
    with the executions of trials taken from the oracle as slots free up — concurrent trials, as KerasTuner hands
    them to distributed workers. A head that stops early makes room for the next one at once.

    Each trial is still a trial: its MLflow run, its own score reported to the oracle (the mean over executions of
    each one's best epoch, as KerasTuner scores), its best head's weights in its trial directory
    (`head_weights_path`), and resumption after a kill (a request id gets its unfinished trial back).
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

    def head_weights_path(self: GroupedTuner, trial_id: str) -> str:
        """Where the trial's best head's weights are: in the trial's KerasTuner directory (Tuner.get_trial_dir)."""
        return os.path.join(self.get_trial_dir(trial_id), HEAD_WEIGHTS)

    def continued(self: GroupedTuner, trial, epochs: int) -> tuple[int, list[np.ndarray] | None]:
        """(epochs to train, starting weights): Hyperband's trials train tuner/epochs - tuner/initial_epoch epochs,
        from the best weights of the trial they continue (tuner/trial_id), as kt.Hyperband's own fit does."""
        values = trial.hyperparameters.values
        if "tuner/epochs" not in values:
            return epochs, None
        weights = None
        if "tuner/trial_id" in values:
            head = self.hypermodel.build(trial.hyperparameters)
            head.load_weights(self.head_weights_path(values["tuner/trial_id"]))
            weights = head.get_weights()
        return values["tuner/epochs"] - values["tuner/initial_epoch"], weights


class KerasTunerTrials:
    """The scheduler's TrialSource over a KerasTuner tuner, through the oracle's public trial protocol: trials from
    create_trial, scores to update_trial, each trial ended through the tuner's on_trial_end (Oracle.end_trial and
    its MLflow run); best weights to `head_weights_path`.

    The search stops (FFXError) when MAX_FAILED_IN_A_ROW trials have failed one after another, at the next request:
    every failed trial is ended and recorded first."""

    def __init__(self, tuner: GroupedTuner, heads_in_graph: int, epochs: int, seed: int):
        self.tuner, self.heads_in_graph, self.epochs, self.seed = tuner, heads_in_graph, epochs, seed
        self.failed_in_a_row, self.last_error = 0, ""

    def request(self, request_id: str):
        if self.failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise FFXError(f"tuning stopped: {self.failed_in_a_row} trials failed in a row. Last error: "
                           f"{self.last_error} (each failed trial's error is in its MLflow run)")
        trial = self.tuner.oracle.create_trial(request_id)
        if trial.status == "RUNNING":  # create_trial's answers: RUNNING, IDLE or STOPPED (Oracle.populate_space)
            return trial
        return NoTrial.OVER if trial.status == "STOPPED" else NoTrial.IDLE

    def executions(self, trial) -> list[Execution]:
        epochs, weights = self.tuner.continued(trial, self.epochs)
        sizes = self.tuner.hypermodel.sizes(trial.hyperparameters)
        return [Execution(HeadSpec(*sizes, seed=int(content_key([self.seed, trial.trial_id, execution])[:8], 16)),
                          epochs, weights) for execution in range(self.tuner.executions_per_trial)]

    def begin(self, trial) -> None:
        self.tuner.on_trial_begin(trial)

    def completed(self, trial, runs: list[HeadRun]) -> None:
        """The trial's score to the oracle, its best head's weights to its file, its epochs to MLflow."""
        tuner = self.tuner
        metrics = {name: float(np.mean([run.history[name][run.best_epoch] for run in runs])) for name in runs[0].history}
        tuner.oracle.update_trial(trial.trial_id, metrics, step=int(np.mean([run.best_epoch for run in runs])))
        best = min(runs, key=lambda run: minimised(tuner.oracle.objective.name, run.best_value))
        head = tuner.hypermodel.build(trial.hyperparameters)
        head.set_weights(best.weights)
        weights_path = tuner.head_weights_path(trial.trial_id)
        with disk_full_as_error(weights_path):  # the machine's fault: the search stops, and resumes this trial
            head.save_weights(weights_path)
        tuner.log_executions(trial, [run.history for run in runs], [run.epoch_seconds for run in runs])
        tuner.log_heads_in_graph(trial, self.heads_in_graph)
        self.failed_in_a_row = 0
        self.end(trial, "COMPLETED")

    def failed(self, trial, error: str) -> None:
        """Recorded as KerasTuner records a trial whose fit raised: FAILED, with the error as its message."""
        self.failed_in_a_row += 1
        self.last_error = next((line.strip() for line in reversed(error.splitlines()) if line.strip()), "")
        self.end(trial, "FAILED", error)

    def end(self, trial, status: str, message: str | None = None) -> None:
        """The trial ended, through the tuner's on_trial_end: Oracle.end_trial, then its MLflow run closed.
        Oracle.end_trial's documented input is the trial itself with `status` COMPLETED, INVALID or FAILED and an
        optional `message` set by the caller: the trial object is what a worker sends the oracle, which copies
        them onto its own record of the trial."""
        trial.status, trial.message = status, message
        self.tuner.on_trial_end(trial)

    def search_over(self, request_ids: list[str]) -> None:
        for request_id in request_ids:  # a distributed chief ends once every id it has seen was told it is over
            self.tuner.oracle.create_trial(request_id)
