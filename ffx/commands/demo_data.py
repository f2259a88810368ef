"""`ffx demo-data`: the offline demo dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ffx.options import ParamsOption, SetOption, command_app, read_config

app = command_app()


@app.command("demo-data")
def demo_data(params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
              force: Annotated[bool, typer.Option(help="rewrite an existing folder")] = False):
    """Generate the demo dataset at data.root, offline: pagoda, dahlia, face and flag crops of shipped sample photos.

    45/18/18 images per class in train/valid/test; no source pixel is in two splits (components/data/sampledata.py)."""
    import shutil

    from components.data.sampledata import make_demo_dataset

    config = read_config(params, set_)
    root = config.data.root
    if root.exists() and any(root.iterdir()):
        if not force:
            typer.echo(f"{root} already holds data; keeping it (use --force to regenerate)", err=True)
            return
        shutil.rmtree(root)
    # Made in a sibling folder and renamed: a run killed half-way leaves no half dataset that looks complete.
    partial = root.with_name(f".{root.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    counts = make_demo_dataset(partial)
    partial.rename(root)
    typer.echo(f"demo dataset written to {root}: {counts}", err=True)
