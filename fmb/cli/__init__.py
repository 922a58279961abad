"""The `fmb` command line: parse, call one library function, print. No logic lives here.

app.py            the Typer app, its error handling and output helpers
run_commands.py   train, eval, ablate
tool_commands.py  models, profile, predict, export, configs
"""
from fmb.cli import run_commands, tool_commands  # noqa: F401  (registers the commands on app)
from fmb.cli.app import app

__all__ = ["app"]
