"""`ffx tune`: the dense head's hyperparameter search."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ffx.options import ParamsOption, QuietOption, SetOption, command_app, debug_requested, read_config, say

app = command_app()


@app.command()
def tune(ctx: typer.Context, params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
         quiet: QuietOption = False,
         workers: Annotated[Optional[int], typer.Option(help="KerasTuner distributed mode: a chief and N worker "
                                                              "processes on 127.0.0.1 (tuner.workers)")] = None):
    """Search the dense head's hyperparameters (each trial logged to MLflow); save the best head."""
    from components.runtime import quiet_tensorflow

    overrides = list(set_ or []) + ([f"tuner.workers={workers}"] if workers is not None else [])
    config = read_config(params, overrides)
    quiet_tensorflow(debug_requested(ctx))  # before the slow imports below
    from components.search.trial_logging import progress_line
    from components.stages.tune import tune_stage
    from components.ui_links import experiment_link, run_link

    def started(experiment_id: str, run_id: str) -> None:
        # Printed when the search starts, once (MLflow's own per-run links are off: see ffx.cli.main).
        say(quiet, f"MLflow UI, the trials: {experiment_link(config, experiment_id)}")
        say(quiet, f"MLflow UI, the search run: {run_link(config, experiment_id, run_id)}")

    result = tune_stage(config, None if quiet else lambda info: typer.echo(progress_line(info), err=True), started)
    say(quiet, f"best {config.tuner.objective} {result.score:.4f} with {result.hyperparameters} "
               f"({len(result.trials)} trials, {result.seconds:.0f}s, MLflow run {result.parent_run_id})")
