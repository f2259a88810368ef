"""`ffx predict`: images classified with the registered champion (or another model)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ffx.options import ParamsOption, SetOption, command_app, debug_requested, read_config

app = command_app()


@app.command()
def predict(ctx: typer.Context, paths: Annotated[list[Path], typer.Argument(help="image files and folders")],
            params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
            model: Annotated[Optional[str],
                             typer.Option(help="registry | models:/NAME@ALIAS | runs:/… | MLflow model folder | "
                                               "head.keras")] = None,
            as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False):
    """Classify images with the registered champion (or another model): path, class, probability."""
    from components.model.predict import load_classifier, predict_paths, prediction_json
    from components.runtime import quiet_tensorflow

    config = read_config(params, set_)
    quiet_tensorflow(debug_requested(ctx))
    classify = load_classifier(config, model)
    failed = 0
    for p in predict_paths(classify, paths, config.predict.batch_size):
        failed += p.error is not None
        if as_json:
            typer.echo(prediction_json(p))
        elif p.error:
            typer.echo(f"{p.path}\tERROR\t{p.error}")
        else:
            typer.echo(f"{p.path}\t{p.label}\t{p.probability:.4f}")
    if failed:
        raise typer.Exit(1)
