"""`ffx audit`: what the stored features say about the data (cleanlab)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ffx.options import ParamsOption, QuietOption, SetOption, command_app, debug_requested, read_config, say

app = command_app()


@app.command()
def audit(ctx: typer.Context, params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
          quiet: QuietOption = False,
          as_json: Annotated[bool, typer.Option("--json", help="print the findings' lists as JSON")] = False,
          drift: Annotated[Optional[Path], typer.Option(
              help="a folder of new images: the share outside the training distribution (audit.drift_folder)")] = None,
          write_exclusions: Annotated[Optional[Path], typer.Option(
              help="also write the suspects to this file, for data.exclude (nothing is moved or relabelled)")] = None):
    """Label issues, leaks between splits, near-duplicates and outliers, from the stored features (cleanlab)."""
    config = read_config(params, set_)
    if drift or config.audit.drift_folder:  # new images go through the backbone
        from components.runtime import quiet_tensorflow

        quiet_tensorflow(debug_requested(ctx))
    from components.stages.audit import audit_stage, write_exclusions as write_list

    result = audit_stage(config, drift)
    if as_json:
        typer.echo(json.dumps(result.lists, indent=2))
    counts = result.lists["counts"]
    say(quiet, ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
        + f" -> {', '.join(str(p) for p in result.files)} (MLflow run {result.run_id})")
    if drift_found := result.lists.get("drift"):
        say(quiet, f"drift: {drift_found['outside']} of {drift_found['images']} image(s) of {drift_found['source']} "
                   f"({100 * drift_found['share']:.1f}%, {100 * drift_found['expected_share']:.0f}% expected) outside "
                   f"the training distribution ({drift_found['method']})")
    if write_exclusions:
        say(quiet, f"{write_list(write_exclusions, result.audit)} image(s) listed in {write_exclusions}; review "
                   "it, then set data.exclude to it")
