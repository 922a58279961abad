"""The Typer app: one red line and an exit code for every error; shared output helpers."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from fmb.utils import make_console
from fmb.errors import EXIT_FAILED, EXIT_INTERRUPTED, FmbError, describe_os_error, unwrap_worker_error

console = make_console()
err_console = make_console(stderr=True)


class _App(typer.Typer):
    """Typer app that turns FmbError into one red line and an exit code (traceback only with --debug)."""

    def __call__(self, *args, **kwargs):
        argv = list(args[0]) if args and args[0] is not None else sys.argv[1:]
        debug_before = os.environ.get("FMB_DEBUG")  # --debug sets it for this call only (notebooks, tests)
        try:
            return super().__call__(*args, **kwargs)
        except FmbError as exc:
            exc = unwrap_worker_error(exc)
            _fail(str(exc), exc.exit_code, argv)
        except KeyboardInterrupt:
            _fail("interrupted (Ctrl-C)", EXIT_INTERRUPTED, argv)
        except MemoryError:
            _fail("out of memory; lower data.batch_size or data.image_size (or --batch-size / --resolution)",
                  EXIT_FAILED, argv)
        except Exception as exc:  # noqa: BLE001 - an unforeseen fault is still one line (docs/errors.md)
            if "out of memory" in str(exc).lower():
                _fail("out of memory; lower data.batch_size or data.image_size (or --batch-size / --resolution)",
                      EXIT_FAILED, argv)
            _fail(f"{type(exc).__name__}: {describe_os_error(exc)} (rerun with --debug for the traceback)",
                  EXIT_FAILED, argv)
        finally:
            if debug_before is None:
                os.environ.pop("FMB_DEBUG", None)
            else:
                os.environ["FMB_DEBUG"] = debug_before


def _fail(message: str, code: int, argv) -> None:
    """One red line on stderr and the exit code; with --debug the traceback first, same code."""
    from rich.markup import escape

    if _debug_requested(argv):
        import traceback
        traceback.print_exc()
    line = " ".join(message.split())  # one line, whatever the message held
    err_console.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False, soft_wrap=True,
                      emoji=False)  # ':x:' in a user's value must not become an emoji
    sys.exit(code)


def _debug_requested(argv=None) -> bool:
    return "--debug" in (sys.argv if argv is None else argv) or os.environ.get("FMB_DEBUG", "") not in ("", "0")


app = _App(
    name="fmb",
    help="EfficientNet V1/V2 around the Fused-MBConv block: which stages to fuse, and what it costs or buys.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion; the commands import lazily
)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    if debug:
        os.environ["FMB_DEBUG"] = "1"


def check_outputs(**paths) -> None:
    """Refuse unusable output paths before any work, not after it: an over-long name, a
    directory, a path under a file, a read-only folder."""
    from fmb.utils import check_writable

    for option, path in paths.items():
        if path is not None:
            example = Path(path) / ("result.json" if option == "json" else "plot.png")
            check_writable(Path(path), f"--{option.replace('_', '-')}", example=example)


def write_json(path: Path, payload) -> None:
    """Write JSON atomically: a temp file renamed into place, so no half-written results."""
    from fmb.utils import atomic_write_text
    atomic_write_text(Path(path), json.dumps(payload, indent=2) + "\n")
