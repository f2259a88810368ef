"""`ffx finetune`: the backbone's top layers fine-tuned with the best head, or head-only kept."""
from __future__ import annotations

from pathlib import Path

import typer

from ffx.options import ParamsOption, QuietOption, SetOption, command_app, debug_requested, read_config, say

app = command_app()


@app.command()
def finetune(ctx: typer.Context, params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
             quiet: QuietOption = False):
    """Fine-tune the backbone's top layers with the best head from features cached at the boundary (finetune.*);
    keep whichever of fine-tuned and head-only is better on the valid images held out for decisions, for
    `ffx evaluate`."""
    config = read_config(params, set_)
    if config.finetune.enabled:  # off, the stage only writes its decision: no TensorFlow to load
        from components.runtime import quiet_tensorflow

        quiet_tensorflow(debug_requested(ctx))
    from components.stages.finetune import finetune_stage

    decision = finetune_stage(config, None if quiet else lambda line: typer.echo(line, err=True))
    if not decision["enabled"]:
        say(quiet, "finetune: off (finetune.enabled: false); evaluate scores the head alone")
