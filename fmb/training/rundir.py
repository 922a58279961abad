"""The run directory as one object: claimed, locked, snapshotted, committed, finished.

`with RunDir.claim(cfg, resume) as run:` decides where the run lives and where it starts from,
and holds the directory for the run's life:
- a fresh run never mixes with a run that has checkpoints; it starts again in place where an
  earlier attempt died before its first checkpoint, and a SLURM job requeued after
  preemption resumes its run;
- `--resume` of an older checkpoint continues in a branch, leaving the run as it was;
- a resume is a transaction: until its first new checkpoint (`commit`) the run's files are
  the old run's, and a resume that fails before then puts them back exactly;
- rank 0 decides and locks; the other ranks learn its choice through two environment
  variables (the rank channel), written here and nowhere else.
The files it works with are in run_files.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import traceback
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from fmb.config import to_yaml
from fmb.errors import FmbError, write_error
from fmb.training.checkpoints import checkpoint_step, read_checkpoint_file, resume_epoch
from fmb.training.run_files import (
    RESUME_ENV, RUN_DIR_ENV, RunLock, RunSnapshot, _started_by_lightning, branch_dir, decide_run_dir, holds_run,
    read_summary, resume_point, run_checkpoints, set_aside_failed_attempt, slurm_requeued, start_branch, trim_metrics,
)
from fmb.utils import atomic_path, atomic_write_text


class RunDir:
    """Where this process trains, and how it got there (see the module docstring)."""

    def __init__(self, path: Path, ckpt: Path | None = None, lock: RunLock | None = None,
                 snapshot: RunSnapshot | None = None, note: str | None = None):
        self.path, self.ckpt, self.lock, self.snapshot, self.note = Path(path), ckpt, lock, snapshot, note
        # A fresh run (or a branch) owns its files from the start; a resume from its first checkpoint.
        self.committed = snapshot is None
        self.cfg = None  # the config that runs, written as config.yaml once the run owns its files

    @property
    def owner(self) -> bool:
        """This process claimed the directory (rank 0): it writes the run's files."""
        return self.lock is not None

    # ---- claiming ------------------------------------------------------------------------
    @classmethod
    @contextlib.contextmanager
    def claim(cls, cfg, resume=None):
        run = cls._decide(cfg, resume)
        os.environ[RUN_DIR_ENV] = str(run.path)  # the rank channel: ranks Lightning starts follow rank 0
        os.environ[RESUME_ENV] = str(run.ckpt or "")
        try:
            yield run
        except BaseException:
            if run.owner and not run.committed:
                run.snapshot.restore()  # a resume that failed before its first checkpoint changes nothing
            raise
        finally:
            if run.lock is not None:
                run.lock.release()

    @classmethod
    def _decide(cls, cfg, resume) -> RunDir:
        if rank_zero_only.rank != 0 and _started_by_lightning():
            ckpt = os.environ.get(RESUME_ENV)  # rank 0 decided and claimed; follow it
            return cls(Path(os.environ[RUN_DIR_ENV]), Path(ckpt) if ckpt else None)
        if rank_zero_only.rank != 0:  # ranks > 0 started by torchrun or SLURM: the same choice as rank 0
            if resume is not None:
                return cls(*resume_point(Path(resume)))
            return cls(decide_run_dir(cfg.run.dir, _run_name(cfg)))
        return cls._resume(cfg, Path(resume)) if resume is not None else cls._fresh(cfg)

    @classmethod
    def _resume(cls, cfg, resume: Path) -> RunDir:
        run_dir, ckpt = resume_point(resume)
        state = read_checkpoint_file(ckpt, mmap=True)
        _check_epochs_left(state, cfg.trainer.get("max_epochs"))
        epoch, step = resume_epoch(state), int(state.get("global_step", 0))
        last = run_dir / "checkpoints" / "last.ckpt"
        if ckpt != last and last.is_file() and checkpoint_step(last) > step:
            # An older checkpoint: the run's newer files stay as they are; continue in a branch.
            branch = branch_dir(run_dir, ckpt)
            lock = RunLock(branch).acquire()
            try:
                copied = start_branch(run_dir, ckpt, branch, epoch, step)
            except OSError as exc:
                lock.release()
                raise write_error(branch, exc) from None
            return cls(branch, copied, lock, note=f"{ckpt.name} is older than last.ckpt: continuing from it in a "
                                                  f"new run dir {branch}; {run_dir} is left as it was")
        lock = RunLock(run_dir).acquire()
        snapshot = RunSnapshot(run_dir)
        trim_metrics(run_dir / "metrics.csv", epoch, step)
        return cls(run_dir, ckpt, lock, snapshot)

    @classmethod
    def _fresh(cls, cfg) -> RunDir:
        name = _run_name(cfg)
        requeued = None if cfg.run.dir else _requeued_run(Path("runs") / name)
        run_dir = requeued or decide_run_dir(cfg.run.dir, name)
        lock = RunLock(run_dir).acquire()
        try:
            return cls._in_place(run_dir, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _in_place(cls, run_dir: Path, lock: RunLock) -> RunDir:
        if not holds_run(run_dir):
            return cls(run_dir, None, lock)
        summary = read_summary(run_dir)
        last = run_dir / "checkpoints" / "last.ckpt"
        if slurm_requeued(summary) and last.is_file():
            state = read_checkpoint_file(last, mmap=True)
            snapshot = RunSnapshot(run_dir)
            trim_metrics(run_dir / "metrics.csv", resume_epoch(state), int(state.get("global_step", 0)))
            return cls(run_dir, last, lock, snapshot,
                       f"SLURM job {summary['slurm_job_id']} was requeued after preemption: resuming {run_dir}")
        if not run_checkpoints(run_dir):
            moved = set_aside_failed_attempt(run_dir)
            return cls(run_dir, None, lock, None, f"{run_dir} held an attempt that ended before its first checkpoint "
                                                  f"({summary.get('status', 'killed')}); starting again in place "
                                                  f"(its files: {moved})")
        raise FmbError(f"run dir {run_dir} already holds a run; continue it with --resume {run_dir} "
                       "or choose another run.dir")

    # ---- the run's life ------------------------------------------------------------------
    def start(self, cfg) -> None:
        """The config that runs; a run that owns its files writes it now, a resume at its first checkpoint."""
        self.cfg = cfg
        if self.owner and self.committed:
            atomic_write_text(self.path / "config.yaml", to_yaml(cfg))

    def commit(self, _checkpoint_path=None) -> None:
        """A checkpoint is in place: from now on the run's files are this attempt's."""
        if not self.committed and self.owner and self.cfg is not None:
            atomic_write_text(self.path / "config.yaml", to_yaml(self.cfg))
        self.committed = True

    def write_error_log(self) -> None:
        """The failed run's full traceback, next to its files (the terminal gets one line)."""
        if not self.owner:
            return
        try:
            atomic_write_text(self.path / "error.log", traceback.format_exc())
        except FmbError:
            pass  # the disk that failed the run may refuse this too; the run's own error says so

    def finish(self, summary: dict) -> dict:
        """Write summary.json (not for a resume that failed before its first checkpoint: the
        claim puts that run back as it was)."""
        if self.owner and self.committed:
            try:
                atomic_write_text(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")
            except FmbError:
                if summary["status"] == "completed":
                    raise
                # a failed run whose summary cannot be written (disk full): its own error says more
        return summary


def _run_name(cfg) -> str:
    return cfg.run.name or f"{cfg.model.variant}-{Path(str(cfg.data.source)).name or 'data'}"


def _requeued_run(root: Path) -> Path | None:
    """The run of this SLURM job that was preempted, when this process is its requeued job."""
    if not os.environ.get("SLURM_RESTART_COUNT", "0").strip("0"):
        return None
    for summary in sorted(root.glob("*/summary.json")):
        if slurm_requeued(read_summary(summary.parent)):
            return summary.parent.resolve()
    return None


def _check_epochs_left(state: dict, max_epochs) -> None:
    """Resuming a run that already reached its epochs would only overwrite its summary."""
    done = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed")
    if done is not None and max_epochs not in (None, -1) and done >= max_epochs:
        raise FmbError(f"cannot resume: the run already trained {done} of trainer.max_epochs={max_epochs} epochs; "
                       f"pass trainer.max_epochs={done + 1} or more to train further")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temp file and rename, so a kill mid-save never leaves a truncated checkpoint;
    a failed save (disk full) leaves no temp file and the previous checkpoint as it was.
    `on_saved(path)` runs once a checkpoint is in place (the run commits its files then)."""

    def __init__(self, on_saved=None):
        super().__init__()
        self.on_saved = on_saved

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(Path(path), errors=(OSError, RuntimeError)) as tmp:  # torch.save: RuntimeError on a full disk
            torch.save(checkpoint, tmp)
        if self.on_saved is not None:
            self.on_saved(Path(path))
