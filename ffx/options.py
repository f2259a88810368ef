"""What the `ffx` commands share: the params/--set/--quiet options, reading the config, `say`, and the root options
of one run, which the root command hands to its command through Click's context object (ctx.obj)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="params file (every knob lives here)")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a param: KEY=VALUE")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")]


@dataclass
class RootOptions:
    """The options given before the command (`ffx --debug tune`), for one run."""

    debug: bool = False


def root_options(ctx: typer.Context) -> RootOptions:
    """This run's root options; the defaults when the command runs without the root group."""
    return ctx.ensure_object(RootOptions)


def debug_requested(ctx: typer.Context) -> bool:
    return root_options(ctx).debug


def command_app() -> typer.Typer:
    """The Typer app that holds one command of its own module. Without completion options: they belong to the root
    command, and Typer would append them to a single command's own options."""
    return typer.Typer(add_completion=False)


def read_config(params: Path, overrides: list[str] | None):
    """params.yaml with the --set overrides, validated: a params error shows at once, before TensorFlow loads."""
    from components.config import load_config

    return load_config(params, overrides or [])


def say(quiet: bool, message: str) -> None:
    if not quiet:
        typer.echo(message, err=True)
