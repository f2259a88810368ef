"""`ffx` command line: the root command. Each command lives in its own module under ffx/commands, imported only when
that command runs, so that a DVC stage depends on its own command's code only. No pipeline logic here."""
from __future__ import annotations

import importlib
import os
from typing import Annotated

import typer
from typer.core import TyperGroup

from ffx.options import RootOptions, root_options

# The commands, in the order `ffx --help` lists them.
COMMANDS = ("extract", "tune", "finetune", "evaluate", "audit", "predict", "runs", "pipeline", "serve", "demo-data")


def command_module(name: str) -> str:
    """The module that defines `ffx NAME`."""
    return f"ffx.commands.{name.replace('-', '_')}"


class CommandsOnDemand(TyperGroup):
    """The root group, loading a command's module when the command is looked up (Click's lazy loading of
    subcommands): `ffx tune` imports ffx.commands.tune alone; `ffx --help` imports them all to list them."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context, name: str):
        if name not in COMMANDS:
            return None
        return typer.main.get_command(importlib.import_module(command_module(name)).app)


app = typer.Typer(cls=CommandsOnDemand, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fast feature extraction: extract backbone features once, tune a dense head, predict.")


@app.callback()
def root(ctx: typer.Context,
         debug: Annotated[bool, typer.Option("--debug", help="show tracebacks and TensorFlow's own log")] = False):
    root_options(ctx).debug = debug


def main() -> None:
    from components.runtime import run_entry

    # MLflow prints "View run"/"View experiment" links for every run it ends on a tracking server: two lines per
    # trial. `ffx tune` prints one link to the search instead; MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=false brings
    # MLflow's back. Set here, in the process's entry, so that the trial workers it starts inherit it.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # MLflow's HTTP client retries a request to a tracking server that does not answer for about 4 minutes in
    # silence (7 retries); one retry here, and the search's client says that it waits, and for how long
    # (tracking.PatientClient, mlflow.wait_for_server_s).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    # A SIGTERM drops the write in progress (temporary and .partial files are never under a final name) and closes
    # the search's MLflow runs KILLED: a re-run resumes. Bad input, or out of space in any writer (KerasTuner's
    # checkpoints, MLflow's local artifacts, Prefect's results included): one line. The run's root options are
    # handed to Click as its context object: they hold --debug once it is parsed, still readable after an error.
    options = RootOptions()
    run_entry(lambda: app(obj=options), "stopped by SIGTERM; run the same command again to resume",
              debug=lambda: options.debug)


if __name__ == "__main__":
    main()
