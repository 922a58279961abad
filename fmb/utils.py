"""Small helpers with no better home: atomic file writes, rank-zero printing, the CPU we run on."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = ".tmp", errors: tuple = (OSError,)):
    """A temp file beside `path` for the block to write; renamed onto `path` when the block ends
    without an error, so readers never see half a file. A failure (disk full, read-only, a file
    where a folder should be; `errors` says which exceptions mean that) leaves no temp file,
    keeps the old file, and is one FmbError naming the path. The one place fmb writes a file
    atomically: results, configs, checkpoints, plots and exports all come through here."""
    from fmb.errors import write_error

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except errors as exc:
        raise write_error(path, exc) from None  # before the temp file goes: a full disk is still full now
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` atomically (see atomic_path)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` atomically (see atomic_path), flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def writable_folder(path: Path) -> tuple[Path, str | None]:
    """(the nearest folder that exists at or above `path`, what stops writing there or None):
    a file where a folder must be, or a read-only place."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return folder, "file"
    if not os.access(folder, os.W_OK | os.X_OK):
        return folder, "read-only"
    return folder, None


def check_writable(path: Path, option: str, example: Path | None = None) -> None:
    """Refuse an output path that cannot be written before any work is done: a directory
    where a file goes, a file where a folder must be, or a read-only place."""
    from fmb.errors import FmbError

    path = Path(path).expanduser()
    too_long = next((part for part in path.parts if len(os.fsencode(part)) > 255), None)
    if too_long is not None:  # checked first: the file system refuses even to look such a name up
        raise FmbError(f"{option} {path}: the name {too_long[:40]}… is {len(os.fsencode(too_long))} bytes; expected "
                       "at most 255 bytes per file or folder name")
    if path.is_dir():
        raise FmbError(f"{option} {path} is a directory; expected a file path such as {example or path / 'result.json'}")
    folder, problem = writable_folder(path.parent)
    if problem == "file":
        raise FmbError(f"{option} {path}: {folder} is a file, not a folder; expected a path in a writable folder")
    if problem == "read-only":
        raise FmbError(f"{option} {path}: the folder {folder} is not writable (read-only or no permission); "
                       "expected a path in a writable folder")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Width of a console that is not a terminal: wide enough that no path, command or table cell
# is ever wrapped or cut (rich would otherwise lay everything out in 80 columns).
PIPED_WIDTH = 10_000


def make_console(stderr: bool = False, **kwargs):
    """A rich Console for fmb's output. Piped or in a SLURM log (not a terminal): no wrapping,
    no cut cells, no colour codes, no progress-bar frames, so every printed path and command
    stays whole and copyable."""
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    if hasattr(stream, "isatty") and stream.isatty():
        return Console(stderr=stderr, **kwargs)
    return Console(stderr=stderr, width=PIPED_WIDTH, soft_wrap=True, **kwargs)


def rank_zero_print(message: str) -> None:
    """Print rich markup once, on global rank 0 (every rank runs the same code under DDP)."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        make_console(stderr=True, highlight=False).print(message)


def cpu_cores() -> int:
    """The cores this process may use, not the host's (containers, taskset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> str:
    """The CPU's model name ('AMD EPYC 7B13'), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine() or "CPU"


def others_busy_cores(window: float = 0.3) -> float | None:
    """How many of this process's cores other processes keep busy now: a `window`-second sample
    of /proc/stat over the cores we may use, less this process's own CPU time. Unlike the
    1-minute load average it no longer counts a job that ended seconds ago. None without /proc."""
    cpus = {f"cpu{i}" for i in (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else ())}
    if not cpus:
        return None

    def sample() -> tuple[int, int, float]:
        busy = total = 0
        for line in Path("/proc/stat").read_text().splitlines():
            name, *ticks = line.split()
            if name in cpus:
                # user nice system idle iowait irq softirq steal (guest time is inside user)
                values = [int(t) for t in ticks[:8]]
                busy, total = busy + sum(values) - values[3] - values[4], total + sum(values)
        return busy, total, time.process_time()

    try:
        busy0, total0, own0 = sample()
        start = time.perf_counter()
        time.sleep(window)
        busy1, total1, own1 = sample()
        elapsed = time.perf_counter() - start
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    busy = (busy1 - busy0) / (total1 - total0) * len(cpus)
    return max(0.0, busy - (own1 - own0) / elapsed)
