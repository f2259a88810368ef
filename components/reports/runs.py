"""Searches and trials read back from the MLflow store: for trial plots, the model card and `ffx runs`."""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path

from components.config import minimised
from components.errors import FFXError
from components.files import write_csv_atomic, write_text_atomic

HISTORY_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass
class Trial:
    run_id: str
    trial_id: str
    status: str                 # KerasTuner's trial status (COMPLETED, FAILED, ...) or the run's status
    params: dict[str, str]
    score: float | None
    seconds: float | None
    started: int                # ms since the epoch, for ordering


def recent_searches(client, experiment_id: str, limit: int = 5) -> list:
    """The latest search parent runs (MLflow runs), newest first."""
    return client.search_runs([experiment_id], "tags.ffx_kind = 'search'", order_by=["attributes.start_time DESC"],
                              max_results=limit)


def find_search(client, experiment_id: str, run_id_prefix: str):
    """A search's parent run by (a prefix of) its id."""
    matches = [s for s in recent_searches(client, experiment_id, limit=1000) if s.info.run_id.startswith(run_id_prefix)]
    if len(matches) != 1:
        raise FFXError(f"--search {run_id_prefix}: {'no' if not matches else len(matches)} search runs match; "
                       "`ffx runs` lists them")
    return matches[0]


def search_trials(client, experiment_id: str, parent_run_id: str) -> list[Trial]:
    """Every trial run of a search, in the order they started."""
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"], max_results=10000)
    trials = [Trial(run.info.run_id, run.data.tags.get("ffx_trial_id", run.info.run_name or ""),
                    run.data.tags.get("trial_status", run.info.status), dict(run.data.params),
                    run.data.metrics.get("score"), run.data.metrics.get("trial_seconds"), run.info.start_time)
              for run in runs if run.data.tags.get("ffx_kind") != "finetune"]  # the finetune stage's run: no trial
    return sorted(trials, key=lambda t: (t.started, t.trial_id))


def top_trials(trials: list[Trial], objective: str, count: int) -> list[Trial]:
    """The `count` best scored trials on `objective`, best first."""
    return sorted((t for t in trials if t.score is not None), key=lambda t: minimised(objective, t.score))[:count]


def metric_histories(client, run_id: str) -> dict[str, list[float]]:
    """Per-epoch values of a trial run, by step; metrics it did not log are left out."""
    histories = {name: sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
                 for name in HISTORY_METRICS}
    return {name: [m.value for m in points] for name, points in histories.items() if points}


def param_names(trials: list[Trial]) -> list[str]:
    """Hyperparameter columns: every trial logs the same names (components.search.space.HP_NAMES), read from the runs
    so that `ffx runs` need not import Keras."""
    return sorted({k for t in trials for k in t.params})


def write_trial_table(csv_path: Path, html_path: Path, trials: list[Trial], title: str) -> None:
    """One row per trial, the same hyperparameter columns for all, as CSV and as an HTML page."""
    import pandas as pd

    names = param_names(trials)
    header = ["trial", "trial_id", "status", *names, "score", "seconds", "run_id"]
    rows = [[str(number), t.trial_id, t.status, *(t.params.get(k, "") for k in names), _number(t.score, ".4f", ""),
             _number(t.seconds, ".1f", ""), t.run_id] for number, t in enumerate(trials, start=1)]
    write_csv_atomic(csv_path, header, rows)  # the project's one CSV writer, as for metrics/*.csv
    frame = pd.DataFrame(rows, columns=header)
    write_text_atomic(html_path, f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} th{{background:#eee}}</style></head>
<body><h1>{html.escape(title)}</h1>
{frame.to_html(index=False, border=0)}
</body></html>
""")


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, for the terminal."""
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _number(value, fmt: str, missing: str = "-") -> str:
    return missing if value is None else format(value, fmt)


def searches_table(searches: list) -> str:
    """Search parent runs, one a row."""
    header = ["run_id", "started", "status", "objective", "best", "trials", "failed", "seconds", "test_accuracy",
              "backbone"]
    # The search run's metrics; counts are MLflow metrics too, floats, shown without decimals.
    columns = (("best_score", ".4f"), ("trials_completed", ".0f"), ("trials_failed", ".0f"), ("search_seconds", ".0f"),
               ("test_accuracy", ".4f"))
    rows = [[s.info.run_id[:12], time.strftime("%Y-%m-%d %H:%M", time.localtime(s.info.start_time / 1000)),
             s.info.status, s.data.params.get("tuner.objective") or "-",
             *(_number(s.data.metrics.get(name), fmt) for name, fmt in columns), s.data.tags.get("backbone", "-")]
            for s in searches]
    return format_table(header, rows)


def trials_table(trials: list[Trial]) -> str:
    names = param_names(trials)
    header = ["rank", "trial_id", *names, "score", "seconds", "status", "run_id"]
    rows = [[str(rank), t.trial_id, *(t.params.get(k, "-") for k in names), _number(t.score, ".4f"),
             _number(t.seconds, ".1f"), t.status, t.run_id[:12]] for rank, t in enumerate(trials, start=1)]
    return format_table(header, rows)
