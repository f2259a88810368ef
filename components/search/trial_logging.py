"""One MLflow run per KerasTuner trial, nested under the search's parent run: a mixin for any KerasTuner tuner."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
from mlflow.entities import Metric, Param

from components.tracking import patiently

# The head's hyperparameters (components.search.space declares them): every trial run logs all of them as params
# ("inactive" when unused), the search report's columns.
HP_NAMES = ("units", "dropout", "extra_units")
TrialProgress = Callable[[dict], None]


def mean_per_epoch(series: list[list[float]]) -> list[float]:
    """Mean over executions, epoch by epoch; an execution stopped early counts only in the epochs it ran."""
    return [float(np.mean([s[epoch] for s in series if epoch < len(s)])) for epoch in range(max(map(len, series)))]


class MlflowTrialLogging:
    """Mixed into a KerasTuner tuner: opens, fills and closes one MLflow run per trial."""

    def attach_mlflow(self, client, experiment_id: str, parent_run_id: str, progress: TrialProgress | None,
                      datasets: list = ()):
        """`datasets`: MLflow dataset inputs (mlflow_datasets.feature_datasets) each trial run logs: train, valid."""
        self._client = client
        self._datasets = list(datasets)
        self._experiment_id = experiment_id
        self._parent_run_id = parent_run_id
        self._progress = progress
        self._trial_runs: dict[str, tuple[str, float]] = {}
        self._search_started = time.perf_counter()
        self._finished_here = 0

    def on_trial_begin(self, trial):
        super().on_trial_begin(trial)
        run_id, existed = patiently(self._client, trial_run, self._experiment_id, self._parent_run_id,
                                    trial.trial_id)
        if existed:  # a trial cut short by a kill is re-run in its own run
            self._client.update_run(run_id, status="RUNNING")
        # Logged on a re-run too (same values, so MLflow accepts them): a kill may have come before they were.
        hp = trial.hyperparameters
        values = {name: (hp.values[name] if name in hp.values and hp.is_active(name) else "inactive")
                  for name in HP_NAMES}
        values.update({k: v for k, v in hp.values.items() if k not in values})
        self._client.log_batch(run_id, params=[Param(k, str(v)) for k, v in values.items()])
        if self._datasets:
            self._client.log_inputs(run_id, datasets=self._datasets)
        self._trial_runs[trial.trial_id] = (run_id, time.perf_counter())

    def log_heads_in_graph(self, trial, heads: int) -> None:
        """How many heads trained side by side with this trial's (tuner.parallel_heads): its epoch_seconds are
        the shared graph's."""
        self._client.set_tag(self._trial_runs[trial.trial_id][0], "heads_in_graph", str(heads))

    def log_executions(self, trial, histories: list[dict[str, list[float]]], epoch_seconds: list[list[float]]):
        """A trial's per-epoch metrics, the mean over its executions; the trial's score uses each execution's
        best epoch, as KerasTuner does."""
        run_id, _ = self._trial_runs[trial.trial_id]
        now = int(time.time() * 1000)
        series = {name: mean_per_epoch([h[name] for h in histories]) for name in histories[0]}
        series["epoch_seconds"] = mean_per_epoch(epoch_seconds)
        metrics = [Metric(name, float(v), now, step) for name, values in series.items()
                   for step, v in enumerate(values)]
        metrics.append(Metric("mean_epoch_seconds", float(np.mean(series["epoch_seconds"])), now, 0))
        self._client.log_batch(run_id, metrics=metrics)  # MLflow splits it into batches its store accepts

    def on_trial_end(self, trial):
        try:
            super().on_trial_end(trial)  # the oracle scores the trial here (and raises after too many failures)
        finally:
            seconds = self._close_trial_run(trial)  # recorded, with its error, even when the oracle raises
        self._finished_here += 1
        if self._progress:
            best = self.oracle.get_best_trials(1)
            self._progress({
                "trial_id": trial.trial_id, "total": self.oracle.max_trials,
                # trials ended, not started (several run at once); a distributed worker's oracle client cannot
                # list trials: it counts its own
                "done": (sum(str(t.status) != "RUNNING" for t in self.oracle.trials.values())
                         if hasattr(self.oracle, "trials") else self._finished_here),
                "status": str(trial.status), "score": trial.score, "best": best[0].score if best else None,
                "elapsed": time.perf_counter() - self._search_started, "trial_seconds": seconds,
            })

    def close_own_trial_runs(self, status: str) -> None:
        """The runs of the trials this process has open (a distributed worker stopped): closed with `status`.
        Other workers' trials under the same search are theirs to close."""
        for run_id, _ in self._trial_runs.values():
            self._client.set_terminated(run_id, status)
        self._trial_runs.clear()

    def _close_trial_run(self, trial) -> float:
        run_id, started = self._trial_runs.pop(trial.trial_id)
        seconds = time.perf_counter() - started
        self._client.log_metric(run_id, "trial_seconds", seconds)
        status = str(trial.status)
        self._client.set_tag(run_id, "trial_status", status)
        if trial.score is not None:
            self._client.log_metric(run_id, "score", float(trial.score))
        failed = status != "COMPLETED"
        if failed and trial.message:
            self._client.set_tag(run_id, "error", trial.message[-4000:])
            self._client.log_text(run_id, trial.message, "error.txt")
        self._client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
        return seconds


def trial_run(client, experiment_id: str, parent_run_id: str, trial_id: str) -> tuple[str, bool]:
    """(run id, whether it was there) of trial `trial_id`'s run in the search `parent_run_id`: found by the trial's
    id, made when missing. Run as one step (tracking.patiently): a make whose answer was lost is found, not doubled."""
    runs = client.search_runs(
        [experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.ffx_trial_id = '{trial_id}'")
    if runs:
        return runs[0].info.run_id, True
    return client.create_run(experiment_id, run_name=f"trial-{trial_id}",
                             tags={"mlflow.parentRunId": parent_run_id, "ffx_trial_id": trial_id}).info.run_id, False


def close_open_trials(client, experiment_id: str, parent_run_id: str, status: str) -> None:
    """Trial runs still RUNNING under the parent (their process was killed or stopped): closed with `status`."""
    for run in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                                   "and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, status)


def finish_completed_trials(client, experiment_id: str, parent_run_id: str, oracle) -> None:
    """Trial runs closed KILLED when a search resumed although the oracle had completed their trial (the kill came
    between the oracle's record and the run's close, a window trials trained together can fall in): FINISHED."""
    completed = {t.trial_id: t.score for t in oracle.trials.values() if str(t.status) == "COMPLETED"}
    for run in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                                   "and attributes.status = 'KILLED'"):
        trial_id = run.data.tags.get("ffx_trial_id")
        if trial_id in completed:
            if completed[trial_id] is not None:
                client.log_metric(run.info.run_id, "score", float(completed[trial_id]))
            client.set_tag(run.info.run_id, "trial_status", "COMPLETED")
            client.set_terminated(run.info.run_id, "FINISHED")


def progress_line(info: dict) -> str:
    """One finished trial, as `ffx tune` and distributed workers print it."""
    score = f"{info['score']:.4f}" if info["score"] is not None else (
        "failed" if info["status"] != "COMPLETED" else "scored by the chief")
    best = "-" if info["best"] is None else f"{info['best']:.4f}"
    return (f"trial {info['done']}/{info['total'] or '?'} ({info['trial_id']}): score {score}, best {best}, "
            f"{info['trial_seconds']:.1f}s, elapsed {info['elapsed']:.0f}s")
