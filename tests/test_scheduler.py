"""The TrialScheduler against a fake source of trials and a fake trainer (pure Python, no TensorFlow): which heads
train when, and how each trial is reported. The fakes stand for the project's own collaborators (the KerasTuner
glue and HeadGroup), whose real versions the search tests (test_tune.py, test_reliability.py) run."""
from dataclasses import dataclass

import pytest

from components.search.head_group import HeadRun, HeadSpec
from components.search.scheduler import Execution, NoTrial, TrialScheduler


@dataclass
class FakeTrial:
    trial_id: str


class FakeSource:
    """An oracle of `trials` trials that, like KerasTuner's, hands a request id back the unfinished trial it holds;
    trial n trains `epochs[n]` epochs (default 2) in each of its `executions` executions."""

    def __init__(self, trials: int, executions: int = 1, epochs: dict | None = None, held: dict | None = None):
        self.left = [FakeTrial(str(n)) for n in range(trials)]
        self.executions_per_trial, self.epochs = executions, epochs or {}
        self.held = dict(held or {})  # request id -> unfinished trial of an earlier, killed search
        self.log: list[tuple] = []
        self.idle_on: set[int] = set()  # the requests (counted from 1) answered IDLE

    def request(self, request_id):
        self.log.append(("request", request_id))
        if request_id in self.held:
            return self.held[request_id]
        if sum(entry[0] == "request" for entry in self.log) in self.idle_on:
            return NoTrial.IDLE
        if not self.left:
            return NoTrial.OVER
        self.held[request_id] = trial = self.left.pop(0)
        return trial

    def executions(self, trial):
        epochs = self.epochs.get(trial.trial_id, 2)
        return [Execution(HeadSpec(4, 0.0, 0, seed=int(trial.trial_id) * 10 + n), epochs)
                for n in range(self.executions_per_trial)]

    def begin(self, trial):
        self.log.append(("begin", trial.trial_id))

    def _release(self, trial):
        (request_id,) = [i for i, held in self.held.items() if held is trial]
        del self.held[request_id]

    def completed(self, trial, runs):
        self._release(trial)
        self.log.append(("completed", trial.trial_id, [run.spec.seed for run in runs]))

    def failed(self, trial, error):
        self._release(trial)
        self.log.append(("failed", trial.trial_id, error.strip().splitlines()[-1]))

    def search_over(self, request_ids):
        self.log.append(("over", tuple(request_ids)))

    def reports(self):
        return [entry for entry in self.log if entry[0] in ("completed", "failed")]


class FakeTrainer:
    """Slots whose head finishes after its `epochs`; `failing_steps`: the step numbers (from 1) that raise."""

    def __init__(self, slots: int, failing_steps=()):
        self.slots, self.failing_steps = slots, set(failing_steps)
        self.runs: list[HeadRun | None] = [None] * slots
        self.steps = 0
        self.busy: list[list[int]] = []  # the seeds in training at each step

    def free_slots(self):
        return [slot for slot, run in enumerate(self.runs) if run is None]

    def start(self, slot, spec, epochs=None, weights=None):
        assert self.runs[slot] is None, f"slot {slot} is busy"
        self.runs[slot] = HeadRun(spec, epochs)

    def step(self):
        self.steps += 1
        self.busy.append(sorted(run.spec.seed for run in self.runs if run))
        if self.steps in self.failing_steps:
            raise RuntimeError(f"step {self.steps} failed")
        finished = []
        for slot, run in enumerate(self.runs):
            if run:
                run.epoch_seconds.append(0.0)
                if len(run.epoch_seconds) == run.epochs:
                    finished.append((slot, run))
                    self.runs[slot] = None
        return finished

    def clear(self):
        self.runs = [None] * self.slots


def _run(source, trainer, ids=("w-0", "w-1"), **kwargs):
    TrialScheduler(source, trainer, list(ids), **kwargs).run()


def test_a_slot_freed_by_an_early_stop_is_refilled_before_the_next_step():
    source, trainer = FakeSource(4, epochs={"0": 1, "1": 3, "2": 1, "3": 1}), FakeTrainer(2)
    _run(source, trainer)
    # Trial 0 stops after one epoch, trial 1 trains on: trials 2 and then 3 take slot 0 at once.
    assert trainer.busy == [[0, 10], [10, 20], [10, 30]]
    assert [r[:2] for r in source.reports()] == [("completed", "0"), ("completed", "2"), ("completed", "3"),
                                                 ("completed", "1")]


def test_every_trial_is_reported_once_and_every_request_id_told_the_search_is_over():
    source, trainer = FakeSource(7, epochs={str(n): 1 + n % 3 for n in range(7)}), FakeTrainer(3)
    _run(source, trainer, ids=("w-0", "w-1", "w-2"))
    assert sorted(r[1] for r in source.reports()) == [str(n) for n in range(7)]
    assert source.log[-1] == ("over", ("w-0", "w-1", "w-2"))
    assert max(len(busy) for busy in trainer.busy) == 3 and not source.held


def test_a_failing_step_fails_the_trials_in_training_only_and_the_search_goes_on():
    source, trainer = FakeSource(4, epochs={"0": 1, "1": 3, "2": 2, "3": 1}), FakeTrainer(2, failing_steps={2})
    _run(source, trainer)
    # Step 1 finishes trial 0; step 2 (trials 1 and 2 in training) fails; trial 3 then trains alone.
    assert source.reports() == [("completed", "0", [0]), ("failed", "1", "RuntimeError: step 2 failed"),
                                ("failed", "2", "RuntimeError: step 2 failed"), ("completed", "3", [30])]
    assert trainer.busy[-1] == [30]


def test_a_fatal_error_of_the_trainer_stops_the_search():
    class Fatal(Exception):
        pass

    class FatalTrainer(FakeTrainer):
        def step(self):
            raise Fatal("stop")

    source = FakeSource(2)
    with pytest.raises(Fatal):
        _run(source, FatalTrainer(2), fatal=(Fatal,))
    assert source.reports() == []


def test_an_error_of_the_source_is_not_turned_into_failed_trials():
    class BrokenSource(FakeSource):
        def completed(self, trial, runs):
            raise AttributeError("a bug in the glue")

    source = BrokenSource(2)
    with pytest.raises(AttributeError, match="a bug in the glue"):
        _run(source, FakeTrainer(2))
    assert source.reports() == []


def test_a_trial_is_reported_after_all_its_executions_in_their_order():
    source = FakeSource(2, executions=3, epochs={"0": 2, "1": 1})
    trainer = FakeTrainer(2)
    _run(source, trainer)
    # Trial 0's executions 0 and 1 fill both slots, its third waits for one; trial 1 takes the other slot.
    assert trainer.busy == [[0, 1], [0, 1], [2, 10], [2, 11], [12]]
    assert source.reports() == [("completed", "0", [0, 1, 2]), ("completed", "1", [10, 11, 12])]
    assert source.log.count(("begin", "0")) == source.log.count(("begin", "1")) == 1


def test_unfinished_trials_of_a_killed_search_are_rerun_under_their_request_ids():
    held = {"w-1": FakeTrial("5"), "w-0": FakeTrial("4")}
    source = FakeSource(1, held=held)
    _run(source, FakeTrainer(2))
    assert sorted(r[:2] for r in source.reports()) == [("completed", "0"), ("completed", "4"), ("completed", "5")]
    assert source.log[:4] == [("request", "w-0"), ("begin", "4"), ("request", "w-1"), ("begin", "5")]


def test_an_idle_source_is_asked_again_while_heads_train_or_after_a_pause():
    source, trainer, pauses = FakeSource(2, epochs={"0": 3, "1": 1}), FakeTrainer(2), []
    source.idle_on = {1}
    _run(source, trainer, sleep=pauses.append, poll_seconds=0.5)
    assert pauses == [0.5]  # nothing in training: the scheduler waited before asking again
    assert trainer.busy[0] == [0, 10]
    source, trainer, pauses = FakeSource(2, epochs={"0": 3, "1": 1}), FakeTrainer(2), []
    source.idle_on = {2}
    _run(source, trainer, sleep=pauses.append)
    assert pauses == []  # trial 0 trained alone meanwhile, and trial 1 joined it after one step
    assert trainer.busy[:2] == [[0], [0, 10]] and sorted(r[1] for r in source.reports()) == ["0", "1"]


def test_the_kerastuner_glue_declares_the_partners_it_needs():
    from components.search.grouped_trials import GroupedTrials

    with pytest.raises(TypeError, match="without on_search_begin.*log_executions"):
        type("Alone", (GroupedTrials,), {})
