"""One module per `ffx` command, each imported only when its command runs (ffx.cli.command_module): a DVC stage
depends on its own command's code only."""
