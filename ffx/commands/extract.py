"""`ffx extract`: every image through the backbone once, features/SPLIT.h5."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import typer

from ffx.options import ParamsOption, QuietOption, SetOption, command_app, debug_requested, read_config, say

app = command_app()


class _ProgressBars:
    """A tqdm bar per split with images/s and ETA; silent under --quiet or when stderr is not a terminal. Called
    with (split, total) it gives the split's progress callback; `close()` ends any bar an error left open, so that
    the error's line is drawn after it, not above a bar redrawn at exit."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.interactive = sys.stderr.isatty() and not quiet
        self.bars = []

    def __call__(self, split: str, total: int):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"extract {split}", unit="img", disable=not self.interactive, leave=True)
        self.bars.append(bar)
        started = time.perf_counter()
        done = [0]

        def advance(count: int) -> None:
            bar.update(count)
            done[0] += count
            if done[0] >= total:
                bar.close()
                if not self.interactive:
                    seconds = time.perf_counter() - started
                    say(self.quiet, f"extract {split}: {total} images in {seconds:.1f}s "
                                    f"({total / max(seconds, 1e-9):.1f} img/s)")
        return advance

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


@app.command()
def extract(ctx: typer.Context, params: ParamsOption = Path("params.yaml"), set_: SetOption = None,
            quiet: QuietOption = False):
    """Run every image of train/valid/test once through the backbone; write features/SPLIT.h5."""
    from components.runtime import quiet_tensorflow
    from components.stages.extract import extract_stage
    from components.tracking import check_tracking_server

    config = read_config(params, set_)
    quiet_tensorflow(debug_requested(ctx))
    check_tracking_server(config)  # the tune stage needs it: find a dead server before the backbone work
    bars = _ProgressBars(quiet)
    try:
        results = extract_stage(config, progress_for=bars)
    finally:
        bars.close()
    for result in results.values():
        reused = result.count - result.computed
        note = "up to date" if result.cached else f"{result.computed} computed, {reused} from cache"
        skipped = f", {len(result.skipped)} bad image(s) skipped" if result.skipped else ""
        say(quiet, f"{result.split}: {result.count} images -> {result.path} ({note}, {result.seconds:.1f}s{skipped})")
