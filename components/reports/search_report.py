"""The search's trial comparison, read back from MLflow: parallel coordinates, objective by trial, the best trial's
learning curves and the trial table (CSV and HTML), under reports/search/."""
from __future__ import annotations

from pathlib import Path

from components.config import Config, lower_is_better
from components.reports import plots
from components.reports.runs import metric_histories, search_trials, write_trial_table
from components.search.trial_logging import HP_NAMES
from components.tracking import setup_mlflow


def write_search_report(config: Config, parent_run_id: str) -> list[Path]:
    """Trial comparison read back from MLflow: parallel coordinates, objective by trial, trial table (CSV + HTML)
    and the best trial's learning curves, under reports/search/."""
    client, experiment_id = setup_mlflow(config, create=False)
    trials = search_trials(client, experiment_id, parent_run_id)
    objective = config.tuner.objective
    maximise = not lower_is_better(objective)
    out = config.reports.dir / "search"
    table_csv, table_html = out / "trials.csv", out / "trials.html"
    write_trial_table(table_csv, table_html, trials, f"Trials of search {parent_run_id}")
    paths = [
        plots.parallel_coordinates_png(out / "parallel_coordinates.png",
                                       [{"params": t.params, "score": t.score} for t in trials], HP_NAMES,
                                       objective, maximise),
        plots.objective_by_trial_png(out / "objective_by_trial.png", [t.score for t in trials], objective, maximise),
    ]
    best_id = client.get_run(parent_run_id).data.tags.get("best_trial_id")
    best = next((t for t in trials if t.trial_id == best_id), None)
    history = metric_histories(client, best.run_id) if best else {}
    paths.append(plots.learning_curves_png(out / "learning_curves.png", history,
                                           f"Learning curves of the best trial ({best_id or 'none'})"))
    return [*paths, table_csv, table_html]
