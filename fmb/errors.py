"""One exception type for user mistakes, so the CLI can print one line and exit cleanly."""
from __future__ import annotations

import difflib
from collections.abc import Iterable


class FmbError(Exception):
    """A mistake in the user's input, config or data.

    The message says what was wrong, what was expected and, where there is one, the
    nearest valid choice. ``exit_code`` is 2 for usage/config/input errors and 1 for a
    run that failed after it started.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def nearest(value: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix naming the closest valid choice, or ''."""
    match = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def choice_error(what: str, value, choices: Iterable[str]) -> FmbError:
    """'unknown <what> 'value'; expected one of a, b, c (did you mean b?)'."""
    choices = list(choices)
    shown = ", ".join(choices) if len(choices) <= 20 else ", ".join(choices[:20]) + ", ..."
    return FmbError(f"unknown {what} '{value}'; expected one of {shown}{nearest(value, choices)}")


def unwrap_worker_error(error: FmbError) -> FmbError:
    """The one-line message of an FmbError raised in a DataLoader worker, which torch
    re-raises in the main process with the worker's traceback as its text."""
    text = str(error)
    if not text.startswith("Caught "):
        return error
    lines = [line for line in text.splitlines() if "FmbError: " in line]
    return FmbError(lines[-1].split("FmbError: ", 1)[1], error.exit_code) if lines else error


# Exit codes of the `fmb` command (docs/errors.md lists what gets which).
EXIT_FAILED = 1       # a run (or command) that started and failed: crash, disk full, out of memory
EXIT_BAD_INPUT = 2    # the user's input, config, data or paths are wrong; nothing was run
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_PREEMPTED = 143    # SIGTERM / SLURM preemption or time limit (128 + SIGTERM); checkpoint saved


def describe_os_error(exc: BaseException) -> str:
    """'No space left on device' rather than '[Errno 28] No space left on device: ...'."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def write_error(path, exc: BaseException, exit_code: int = EXIT_FAILED) -> FmbError:
    """A failed write as one line that names the path and what to do about it."""
    import errno

    reason = describe_os_error(exc)
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "space left" in reason.lower() or _disk_full(path):
        reason, hint = "no space left on device", "free space there or choose another location"
    elif code in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "choose a writable location"
    elif code in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        hint = "a file stands where a directory is needed (or the reverse); choose another path"
    else:
        hint = "check the path and the disk"
    return FmbError(f"cannot write {path}: {reason}; {hint}", exit_code)


def _disk_full(path) -> bool:
    """torch.save reports a full disk as a failed write ('unexpected pos'), not ENOSPC."""
    import shutil
    from pathlib import Path

    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False
