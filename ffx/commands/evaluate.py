"""`ffx evaluate`: the chosen model scored on the test split and registered in MLflow."""
from __future__ import annotations

import sys
from pathlib import Path

import typer

from ffx.options import ParamsOption, QuietOption, SetOption, command_app, debug_requested, read_config, say

app = command_app()


@app.command()
def evaluate(ctx: typer.Context, params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
             quiet: QuietOption = False):
    """Score the best head on the test split; write metrics, plots and reports/model_card.md; register it in MLflow."""
    import shlex

    from components.runtime import quiet_tensorflow

    config = read_config(params, set_)
    quiet_tensorflow(debug_requested(ctx))
    from components.stages.evaluate import evaluate_stage

    result = evaluate_stage(config, command=shlex.join(["ffx", *sys.argv[1:]]))
    reg = result.registration
    auc = f", ROC AUC {result.metrics['roc_auc']:.4f}" if "roc_auc" in result.metrics else ""
    say(quiet, f"test accuracy {result.metrics['accuracy']:.4f}, loss {result.metrics['loss']:.4f}{auc}")
    say(quiet, f"registered {reg.name} version {reg.version}; {reg.decision}")
    from components.ui_links import model_version_link

    say(quiet, f"MLflow UI, the model version: {model_version_link(config, reg.name, reg.version)}")
    if result.leak_warning:  # audit: a leak makes the test score optimistic
        typer.echo(result.leak_warning, err=True)
    for line in result.stale:
        typer.echo(f"note: {line}", err=True)
