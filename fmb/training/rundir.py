"""Where a run lives, decided once and the same on every rank, and checkpoints written atomically."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fmb.errors import FmbError

RUN_DIR_ENV = "FMB_RUN_DIR"


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
                       "its first epoch ended); start a new run without --resume")
    return path, ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temp file and rename, so a kill mid-save never leaves a truncated checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)
