"""The files of a run directory: where it is, its lock, its snapshot, its branches, its metrics.

The pieces `RunDir` (rundir.py) composes into a transaction; reading checkpoints is
checkpoints.py. A run directory is decided once and is the same on every rank; rank 0 holds
an exclusive lock on it for the run's life; a resume that fails before its first new
checkpoint puts the run's files back as they were (`RunSnapshot`); a run that died before any
checkpoint starts again in place; resuming from an older checkpoint branches.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import time
from pathlib import Path

from fmb.errors import FmbError, describe_os_error
from fmb.utils import atomic_write_bytes, atomic_write_text, writable_folder

RUN_DIR_ENV = "FMB_RUN_DIR"
RESUME_ENV = "FMB_RESUME_CKPT"  # rank 0's checkpoint choice, for the ranks Lightning starts


def _started_by_lightning() -> bool:
    """A rank > 0 that Lightning's launcher started: it sets LOCAL_RANK (torchrun does too,
    with its run id; SLURM sets SLURM_LOCALID instead). Not RANK/SLURM_PROCID: a child of a
    single-task SLURM job inherits SLURM_PROCID=0."""
    local = os.environ.get("LOCAL_RANK", "")
    return local.isdigit() and int(local) > 0 and "TORCHELASTIC_RUN_ID" not in os.environ


def decide_run_dir(explicit: str | None, name: str, root: str = "runs") -> Path:
    """`run.dir`, or runs/<name>/<id> where every rank must arrive at the same <id>.

    Lightning re-launches the command for ranks > 0 with our environment, so rank 0's
    choice travels in FMB_RUN_DIR. torchrun and SLURM start ranks independently: their
    shared run/job id names the directory instead of a clock that can differ by a second.
    Rank 0 always decides afresh: a FMB_RUN_DIR left by an earlier run in this process (a
    notebook) or inherited from a parent process must not send a new run into an old dir.
    """
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.environ.get(RUN_DIR_ENV) and _started_by_lightning():
        return Path(os.environ[RUN_DIR_ENV])
    run_id = None
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        run_id = f"slurm-{os.environ['SLURM_JOB_ID']}-{os.environ.get('SLURM_STEP_ID', '0')}"
    elif os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        run_id = f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    path = Path(root) / name / (run_id or time.strftime("%Y%m%d-%H%M%S"))
    if run_id is None:
        suffix = 1
        while path.exists():  # two runs started in the same second get their own dirs
            path = path.with_name(f"{path.name.split('.')[0]}.{suffix}")
            suffix += 1
    path = path.resolve()
    os.environ[RUN_DIR_ENV] = str(path)
    return path


def resume_point(path: Path) -> tuple[Path, Path]:
    """(run dir, checkpoint) for `--resume PATH`: a run directory (its last.ckpt) or a .ckpt in
    a run's checkpoints/ directory (e.g. the best one)."""
    path = Path(path).expanduser().resolve()
    if path.is_file() and path.suffix == ".ckpt":
        run_dir = path.parent.parent
        if not (run_dir / "config.yaml").is_file():
            raise FmbError(f"cannot resume from {path}: expected it in <run dir>/checkpoints/ next to the "
                           "run's config.yaml (a checkpoint written by fmb train)")
        return run_dir, path
    if not path.is_dir():
        raise FmbError(f"cannot resume: {path} does not exist; expected a run directory made by fmb train "
                       "or a .ckpt inside one")
    ckpt = path / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise FmbError(f"cannot resume {path}: no checkpoints/last.ckpt there (the run stopped before "
                       f"its first checkpoint); start it again in place: {restart_command(path)}")
    return path, ckpt


def restart_command(run_dir: Path) -> str:
    return f"fmb train -c {run_dir / 'config.yaml'} run.dir={run_dir}"


# ---- the run directory's lock and its state ------------------------------------------------

LOCK_NAME = ".fmb.lock"
FAILED_ATTEMPTS = "failed-attempts"
RUN_FILES = ("config.yaml", "summary.json", "metrics.csv", "hparams.yaml", "error.log", "tensorboard")


def check_run_dir(run_dir: Path) -> None:
    """run.dir must be (or become) a writable directory: said before any work."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FmbError(f"run.dir {run_dir} is an existing file; expected a directory (choose another run.dir)")
    folder, problem = writable_folder(run_dir)
    if problem == "file":
        raise FmbError(f"run.dir {run_dir}: {folder} is a file, not a folder; choose another run.dir")
    if problem == "read-only":
        raise FmbError(f"run.dir {run_dir} is not writable ({folder} is read-only or not yours); "
                       "choose another run.dir")


class RunLock:
    """An exclusive flock on <run dir>/.fmb.lock for the run's life: a second process that
    wants the same directory is refused at once. The kernel drops it when the process dies,
    so a killed run never leaves a stale lock."""

    def __init__(self, run_dir: Path):
        self.run_dir, self._fd, self._created = Path(run_dir), None, False

    def acquire(self) -> RunLock:
        check_run_dir(self.run_dir)
        self._created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise FmbError(f"cannot create run dir {self.run_dir}: {describe_os_error(exc)}; "
                           "choose another run.dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FmbError(f"run dir {self.run_dir} is in use by another fmb process (it holds "
                           f"{self.run_dir / LOCK_NAME}); wait for it to end or choose another run.dir") from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        if self._created and {p.name for p in self.run_dir.iterdir()} == {LOCK_NAME}:
            # nothing but the lock: a run refused before it began leaves no empty directory behind
            (self.run_dir / LOCK_NAME).unlink(missing_ok=True)
            self.run_dir.rmdir()
        os.close(self._fd)
        self._fd = None


def read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def run_checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("*.ckpt")) + sorted(run_dir.glob("hpc_ckpt_*.ckpt"))


def holds_run(run_dir: Path) -> bool:
    return (run_dir / "config.yaml").exists() or bool(run_checkpoints(run_dir))


def set_aside_failed_attempt(run_dir: Path) -> Path:
    """Move the files of an attempt that died before its first checkpoint into
    failed-attempts/<time>/, so the run starts again in place and nothing is deleted."""
    target = run_dir / FAILED_ATTEMPTS / time.strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while target.exists():
        target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
        suffix += 1
    target.mkdir(parents=True)
    for name in RUN_FILES:
        if (run_dir / name).exists():
            os.replace(run_dir / name, target / name)
    return target


def slurm_requeued(summary: dict) -> bool:
    """This process is the requeued SLURM job whose earlier attempt was preempted in this run."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    return summary.get("status") == "preempted" and bool(job) and summary.get("slurm_job_id") == job


def branch_dir(run_dir: Path, ckpt: Path) -> Path:
    """A sibling directory for a run continued from an older checkpoint."""
    path = run_dir.with_name(f"{run_dir.name}-from-{ckpt.stem}")
    suffix = 1
    while path.exists():
        path = run_dir.with_name(f"{run_dir.name}-from-{ckpt.stem}.{suffix}")
        suffix += 1
    return path


def start_branch(run_dir: Path, ckpt: Path, branch: Path, first_epoch: int, first_step: int) -> Path:
    """Copy the run's config, its metrics before `first_epoch` and the checkpoint into
    `branch` (already locked); the original run is only read. Returns the copied checkpoint."""
    (branch / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copy2(run_dir / "config.yaml", branch / "config.yaml")
    if (run_dir / "metrics.csv").is_file():
        shutil.copy2(run_dir / "metrics.csv", branch / "metrics.csv")
        trim_metrics(branch / "metrics.csv", first_epoch, first_step)
    target = branch / "checkpoints" / ckpt.name
    shutil.copy2(ckpt, target)
    return target


def trim_metrics(path: Path, first_epoch: int, first_step: int) -> None:
    """Drop the rows of epochs a resumed run will train again (an epoch cut short by a kill,
    or the epochs after an older checkpoint), so metrics.csv never holds an epoch twice;
    rows without an epoch (learning rates) go by their step."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or "epoch" not in rows[0]:
        return
    epoch, step = rows[0].index("epoch"), rows[0].index("step") if "step" in rows[0] else None

    def number(row, column):
        try:
            return float(row[column])
        except (IndexError, TypeError, ValueError):
            return None

    def keep(row):
        if number(row, epoch) is not None:
            return number(row, epoch) < first_epoch
        return step is None or number(row, step) is None or number(row, step) < first_step
    kept = [rows[0]] + [row for row in rows[1:] if keep(row)]
    if len(kept) != len(rows):
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(kept)
        atomic_write_text(path, out.getvalue())


class RunSnapshot:
    """The run's small files (not its checkpoints) before a resume; put back exactly, and
    files the attempt added removed, when the resume fails before its first new checkpoint."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.files = {p: p.read_bytes() for p in self._tracked()}

    def _tracked(self) -> list[Path]:
        return [p for p in self.run_dir.rglob("*") if p.is_file() and p.suffix != ".ckpt"
                and p.name != LOCK_NAME and FAILED_ATTEMPTS not in p.relative_to(self.run_dir).parts]

    def restore(self, keep=("error.log",)) -> None:
        for path in self._tracked():
            if path not in self.files and path.name not in keep:
                path.unlink(missing_ok=True)
        for path, data in self.files.items():
            if not path.is_file() or path.read_bytes() != data:
                atomic_write_bytes(path, data)
