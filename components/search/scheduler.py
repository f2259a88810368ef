"""Which heads train when, in plain Python: trials taken from a source, their executions placed in a trainer's free
slots, one training step at a time, each trial reported once all its executions have finished.

No Keras, no KerasTuner: the source (components.search.grouped_trials adapts KerasTuner's oracle and tuner to it)
and the trainer (components.search.head_group.HeadGroup) are the collaborators below, and the unit tests drive the
scheduler with fakes of them.
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Protocol, Sequence

from components.search.head_group import HeadRun, HeadSpec


class NoTrial(Enum):
    """What a source answers when it has no trial to hand out."""
    IDLE = "idle"  # none now (a distributed chief still computing the next one): ask again later
    OVER = "over"  # the search is over


class Trial(Protocol):
    trial_id: str


@dataclass(frozen=True)
class Execution:
    """One head a trial trains; a trial's score is the mean over its executions."""
    spec: HeadSpec
    epochs: int | None = None                 # None: the trainer's own number
    weights: list[Any] | None = None          # starting weights in build_head's order; None: fresh ones


class TrialSource(Protocol):
    """Hands out trials and is told how each ended."""

    def request(self, request_id: str) -> Trial | NoTrial:
        """A trial for `request_id`: a new one, or the unfinished one it held when a previous search was killed."""

    def executions(self, trial: Trial) -> Sequence[Execution]:
        """What the trial trains."""

    def begin(self, trial: Trial) -> None:
        """The trial starts (before any of its executions is placed)."""

    def completed(self, trial: Trial, runs: list[HeadRun]) -> None:
        """Every execution of the trial finished: its runs, in the order of `executions(trial)`."""

    def failed(self, trial: Trial, error: str) -> None:
        """The training of the trial raised `error` (a formatted traceback)."""

    def search_over(self, request_ids: list[str]) -> None:
        """No trial is left to train; `request_ids` are every id this scheduler requested with."""


class Trainer(Protocol):
    """Heads trained side by side in a fixed number of slots (HeadGroup)."""

    def free_slots(self) -> list[int]: ...

    def start(self, slot: int, spec: HeadSpec, epochs: int | None = None, weights: list[Any] | None = None) -> None: ...

    def step(self) -> list[tuple[int, HeadRun]]:
        """One epoch of every head in training; the heads that finished, their slots now free."""

    def clear(self) -> None:
        """Every slot free, the heads in training abandoned."""


@dataclass
class _Ongoing:
    """A trial taken from the source and not yet reported."""
    trial: Trial
    request_id: str
    executions: list[Execution]
    unplaced: list[int]                                     # executions not yet in a slot, in order
    runs: dict[int, HeadRun] = field(default_factory=dict)  # finished executions


class TrialScheduler:
    """Keeps every slot of `trainer` busy with the executions of trials from `source`.

    Each request id holds at most one trial until it is reported, so with one id per slot at most `slots` trials
    run at once (as KerasTuner hands trials to distributed workers), and a killed search gets its unfinished trials
    back under the same ids. A slot freed by a head that stopped early is refilled before the next step. Every
    trial taken is reported exactly once: `completed` when all its executions have finished, or `failed` when a
    training step raised. A failing step fails only the trials in training; exceptions of the types in `fatal`
    propagate (they stop the search), and so does any error of the source or of the scheduler itself.
    """

    def __init__(self, source: TrialSource, trainer: Trainer, request_ids: Sequence[str],
                 fatal: tuple[type[BaseException], ...] = (), poll_seconds: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.source, self.trainer, self.request_ids = source, trainer, list(request_ids)
        self.fatal, self.poll_seconds, self.sleep = fatal, poll_seconds, sleep
        self.ongoing: dict[str, _Ongoing] = {}        # trial id -> its state, in the order trials were taken
        self.in_slot: dict[int, tuple[str, int]] = {}  # slot -> (trial id, execution)
        self.over = False                              # the source said no more trials

    def run(self) -> None:
        while True:
            self._fill_free_slots()
            if not self.in_slot:
                break
            self._step()
        self.source.search_over(self.request_ids)

    def _fill_free_slots(self) -> None:
        for slot in self.trainer.free_slots():
            ongoing = next((o for o in self.ongoing.values() if o.unplaced), None) or self._take_trial()
            if ongoing is None:
                return
            execution = ongoing.unplaced.pop(0)
            job = ongoing.executions[execution]
            self.trainer.start(slot, job.spec, job.epochs, job.weights)
            self.in_slot[slot] = (ongoing.trial.trial_id, execution)

    def _take_trial(self) -> _Ongoing | None:
        """The next trial under a free request id; None when there is none now or the search is over."""
        while not self.over:
            held = {o.request_id for o in self.ongoing.values()}
            request_id = next((i for i in self.request_ids if i not in held), None)
            if request_id is None:
                return None  # as many trials ongoing as ids: the next one waits for one of them to end
            answer = self.source.request(request_id)
            if answer is NoTrial.OVER:
                self.over = True
            elif answer is NoTrial.IDLE:
                if self.in_slot:
                    return None  # the heads in training go on meanwhile; ask again after the step
                self.sleep(self.poll_seconds)
            else:
                executions = list(self.source.executions(answer))
                if not executions:
                    raise ValueError(f"trial {answer.trial_id}: no execution to train")
                self.source.begin(answer)
                ongoing = self.ongoing[answer.trial_id] = _Ongoing(answer, request_id, executions,
                                                                   list(range(len(executions))))
                return ongoing
        return None

    def _step(self) -> None:
        try:
            finished = self.trainer.step()
        except self.fatal:
            raise
        except Exception:  # the training of the heads in the graph failed: their trials fail, the search goes on
            self._fail_all(traceback.format_exc())
            return
        for slot, run in finished:
            trial_id, execution = self.in_slot.pop(slot)
            ongoing = self.ongoing[trial_id]
            ongoing.runs[execution] = run
            if len(ongoing.runs) == len(ongoing.executions):
                del self.ongoing[trial_id]
                self.source.completed(ongoing.trial, [ongoing.runs[e] for e in range(len(ongoing.executions))])

    def _fail_all(self, error: str) -> None:
        """Every ongoing trial fails: each has an execution in training (one not yet placed waits only while its
        trial's first one trains), and the step's failure is theirs alike."""
        self.trainer.clear()
        self.in_slot.clear()
        failed, self.ongoing = list(self.ongoing.values()), {}
        for ongoing in failed:
            self.source.failed(ongoing.trial, error)
