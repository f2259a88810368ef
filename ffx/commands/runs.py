"""`ffx runs`: recent searches and the best trials of one, from the MLflow store."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ffx.options import ParamsOption, SetOption, command_app, read_config

app = command_app()


@app.command()
def runs(params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
         searches: Annotated[int, typer.Option("--searches", "-n", min=1, help="recent searches to list")] = 5,
         top: Annotated[int, typer.Option("--top", "-t", min=1, help="best trials to show")] = 10,
         search: Annotated[Optional[str], typer.Option(help="run id (or prefix) of the search whose trials to show; "
                                                             "default: the latest")] = None):
    """Recent searches and the best trials of one, read from the MLflow store: compare without a browser."""
    from components.reports.runs import (
        find_search,
        recent_searches,
        search_trials,
        searches_table,
        top_trials,
        trials_table,
    )
    from components.tracking import setup_mlflow
    from components.ui_links import compare_link, experiment_link

    config = read_config(params, set_)
    client, experiment_id = setup_mlflow(config, create=False)
    listed = recent_searches(client, experiment_id, searches)
    if not listed:
        typer.echo(f"no searches yet in experiment '{config.mlflow.experiment}'; run `ffx tune`", err=True)
        return
    typer.echo(f"Recent searches (experiment '{config.mlflow.experiment}', {experiment_link(config, experiment_id)}):")
    typer.echo(searches_table(listed))
    chosen = find_search(client, experiment_id, search) if search else listed[0]
    objective = chosen.data.params.get("tuner.objective")
    trials = search_trials(client, experiment_id, chosen.info.run_id)
    best = top_trials(trials, objective or "score", top)
    typer.echo(f"\nTop {len(best)} of {len(trials)} trials of search {chosen.info.run_id} (by {objective or 'score'}):")
    typer.echo(trials_table(best))
    if best:
        typer.echo(f"\nCompare them in the MLflow UI: {compare_link(config, experiment_id, [t.run_id for t in best])}")
