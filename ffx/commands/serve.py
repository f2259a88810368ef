"""`ffx serve`: the Prefect deployment of the pipeline, on its schedule."""
from __future__ import annotations

from pathlib import Path

import typer

from ffx.options import ParamsOption, SetOption, command_app, debug_requested, read_config

app = command_app()


@app.command()
def serve(ctx: typer.Context, params: ParamsOption = Path("params.yaml"), set_: SetOption = None):
    """Serve the `ffx-pipeline` deployment with the schedule from params.yaml (needs `prefect server start`)."""
    from components.runtime import quiet_tensorflow

    read_config(params, set_)  # a params error shows before serving
    quiet_tensorflow(debug_requested(ctx))
    from flows.pipeline import serve as serve_flow

    serve_flow(params, list(set_ or []))
