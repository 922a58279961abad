"""The `fmb` command line: parse, call one library function, print. No logic lives here."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from fmb.errors import FmbError

console = Console()
err_console = Console(stderr=True)


class _App(typer.Typer):
    """Typer app that turns FmbError into one red line and an exit code (traceback only with --debug)."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except FmbError as exc:
            if _debug_requested():
                raise
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)


def _debug_requested() -> bool:
    return "--debug" in sys.argv or os.environ.get("FMB_DEBUG", "") not in ("", "0")


app = _App(
    name="fmb",
    help="EfficientNet V1/V2 around the Fused-MBConv block: train, eval, ablate, profile.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    if debug:
        os.environ["FMB_DEBUG"] = "1"


def write_json(path: Path, payload) -> None:
    """Write JSON atomically: a temp file renamed into place, so no half-written results."""
    from fmb.utils import atomic_write_text
    atomic_write_text(Path(path), json.dumps(payload, indent=2) + "\n")


@app.command("models")
def models_cmd(
    variant: Optional[list[str]] = typer.Option(None, "--variant", "-v", help="Only these variants."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON here."),
):
    """List every variant: params, GMACs at its eval size, default placement, sizes."""
    from fmb.models import get_variant
    from fmb.profiling.catalog import describe_variants

    for name in variant or []:
        get_variant(name)  # fail on a bad name before any work
    rows = describe_variants(variant or None)
    table = Table(title="fmb variants (num_classes=1000, GMACs at eval size)", box=box.SIMPLE_HEAD)
    for col in ("variant", "params", "GMACs", "blocks", "train", "eval", "drop"):
        table.add_column(col, justify="left" if col in ("variant", "blocks") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["name"], f"{r['params']:,}", f"{r['gmacs']:.2f}", r["placement"],
                      str(r["train_size"]), str(r["eval_size"]), f"{r['drop_rate']:.1f}")
    console.print(table)
    if json_path:
        write_json(json_path, {"models": rows})
