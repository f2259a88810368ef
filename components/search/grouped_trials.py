"""The KerasTuner side of grouped training: a tuner mixin whose search keeps every slot of a HeadGroup busy with the
executions of trials taken from the oracle."""
from __future__ import annotations

import time
import traceback

import numpy as np

from components.config import minimised
from components.errors import DiskFullError
from components.files import content_key, disk_full_as_error
from components.search.head_group import HeadGroup, HeadRun, HeadSpec


class GroupedTrials:
    """Mixed into a KerasTuner tuner: its search keeps every slot of a HeadGroup busy with the executions of
    trials taken from the oracle as slots free up — concurrent trials, as KerasTuner hands them to distributed
    workers. A head that stops early makes room for the next one at once.

    Each trial is still a trial: its MLflow run, its own score reported to the oracle (the mean over executions of
    each one's best epoch, as KerasTuner scores), its best weights in KerasTuner's checkpoint (so `load_model`
    gives the ordinary head), and resumption after a kill (a request id gets its unfinished trial back).
    """

    def search_grouped(self, group: HeadGroup, data: tuple, epochs: int, patience: int, seed: int) -> None:
        """`data`: standardised (train features, train labels, valid features, valid labels)."""
        import keras_tuner as kt

        self.oracle.verbose = 0  # as tuner.search(verbose=0): ffx prints its own line per trial
        self.on_search_begin()
        group.set_data(*data, epochs, patience, self.oracle.objective.name, seed)
        # One oracle request id per slot: a trial holds its id until it ends, so at most `slots` run at once.
        ids = {f"{self.tuner_id}-{n}": None for n in range(group.slots)}
        waiting: list = []          # (trial, execution) not yet in a slot
        done: dict[str, list] = {}  # trial id -> finished HeadRuns
        in_slot: dict[int, tuple] = {}
        over = False
        while True:
            while group.free_slots() and (waiting or not over):
                if not waiting:
                    trial, over = self._next_trial(ids, bool(in_slot))
                    if trial is None:
                        break
                    self.on_trial_begin(trial)
                    done[trial.trial_id] = []
                    waiting += [(trial, execution) for execution in range(self.executions_per_trial)]
                trial, execution = job = waiting.pop(0)
                slot = group.free_slots()[0]
                spec = HeadSpec(*self.hypermodel.sizes(trial.hyperparameters),
                                seed=int(content_key([seed, trial.trial_id, execution])[:8], 16))
                group.start(slot, spec, *self._continued(trial, epochs))
                in_slot[slot] = job
            if not in_slot:
                break
            try:
                finished = group.step()
            except Exception as exc:  # every trial in training fails with it, as KerasTuner records a failure
                if isinstance(exc, kt.errors.FatalError):
                    raise
                failure = traceback.format_exc()
                for trial in {t.trial_id: t for t, _ in [*in_slot.values(), *waiting]}.values():
                    done.pop(trial.trial_id)
                    self._end(trial, ids, failure=failure)
                group.clear()
                in_slot.clear()
                waiting.clear()
                continue
            for slot, run in finished:
                trial, _ = in_slot.pop(slot)
                done[trial.trial_id].append(run)
                if len(done[trial.trial_id]) == self.executions_per_trial:
                    self._end(trial, ids, runs=done.pop(trial.trial_id), slots=group.slots)
        for tuner_id in ids:  # a distributed chief ends once every id it has seen was told the search is over
            self.oracle.create_trial(tuner_id)
        self.on_search_end()

    def _continued(self, trial, epochs: int) -> tuple[int, list[np.ndarray] | None]:
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

    def _next_trial(self, ids: dict, busy: bool):
        """(a new or, after a kill, unfinished trial under a free request id, or None; whether the search is over)."""
        import keras_tuner as kt

        status = kt.engine.trial.TrialStatus
        while True:
            tuner_id = next(i for i, held in ids.items() if held is None)
            trial = self.oracle.create_trial(tuner_id)
            if trial.status == status.RUNNING:
                ids[tuner_id] = trial.trial_id
                return trial, False
            if trial.status == status.STOPPED:
                return None, True
            if busy:  # IDLE: a distributed chief still computing; the heads in training go on meanwhile
                return None, False
            time.sleep(1)

    def _end(self, trial, ids: dict, runs: list[HeadRun] | None = None, slots: int = 0, failure: str = "") -> None:
        """Score, checkpoint and log a trial whose executions all finished (or record its failure); end it."""
        import keras_tuner as kt

        try:
            if failure:
                raise kt.errors.FailedTrialError(failure)
            self._report(trial, runs, slots)
        except DiskFullError:
            raise  # the machine's fault, not the trial's: the search stops, and resumes this trial once there is space
        except Exception:
            trial.status, trial.message = kt.engine.trial.TrialStatus.FAILED, failure or traceback.format_exc()
        ids[next(i for i, held in ids.items() if held == trial.trial_id)] = None
        self.on_trial_end(trial)

    def _report(self, trial, runs: list[HeadRun], slots: int) -> None:
        """The trial's score to the oracle, its best weights to KerasTuner's checkpoint, its epochs to MLflow."""
        import keras_tuner as kt

        names = list(runs[0].history)
        metrics = {name: float(np.mean([run.history[name][run.best_epoch] for run in runs])) for name in names}
        self.oracle.update_trial(trial.trial_id, metrics, step=int(np.mean([run.best_epoch for run in runs])))
        best = min(runs, key=lambda run: minimised(self.oracle.objective.name, run.best_value))
        head = self.hypermodel.build(trial.hyperparameters)
        head.set_weights(best.weights)
        checkpoint = self._get_checkpoint_fname(trial.trial_id)
        with disk_full_as_error(checkpoint):
            head.save_weights(checkpoint)
        self.log_executions(trial, [run.history for run in runs], [run.epoch_seconds for run in runs])
        self.log_heads_in_graph(trial, slots)
        trial.status = kt.engine.trial.TrialStatus.COMPLETED
