"""`ffx pipeline`: the whole pipeline as a Prefect flow."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from ffx.options import ParamsOption, QuietOption, SetOption, command_app, debug_requested, read_config, say

app = command_app()


@app.command()
def pipeline(ctx: typer.Context, params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
             quiet: QuietOption = False,
             as_json: Annotated[bool, typer.Option("--json", help="print the run's summary as JSON")] = False):
    """Run the whole pipeline as a Prefect flow (cached tasks; visible in the Prefect UI)."""
    from components.runtime import quiet_tensorflow

    started = time.perf_counter()
    config = read_config(params, set_)
    debug = debug_requested(ctx)
    quiet_tensorflow(debug)
    from flows.pipeline import configured_pipeline, one_line_user_errors

    if not debug:
        one_line_user_errors()
    flow = configured_pipeline(config)
    summary = flow(params_file=str(params.resolve()), overrides=list(set_ or []))
    if as_json:
        typer.echo(json.dumps(dict(summary, seconds=time.perf_counter() - started), default=str))
    computed = sum(r["computed"] for r in summary["extract"].values())
    say(quiet, f"pipeline done in {time.perf_counter() - started:.1f}s: {computed} image(s) through the backbone, "
               f"best {summary['tune']['score']:.4f}, test accuracy {summary['evaluate']['accuracy']:.4f}; "
               f"{summary['evaluate']['decision']}")
