"""The Lightning Trainer a run asks for: its callbacks, loggers and checkpoint plugin."""
from __future__ import annotations

import logging
import sys
import warnings

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

from fmb.errors import FmbError
from fmb.training.cpu_threads import FollowLoad
from fmb.training.ema import WarmupEMAWeightAveraging
from fmb.training.loggers import LogHyperparameters, run_loggers
from fmb.training.outcome import Preemption
from fmb.training.progress import PlainProgress
from fmb.training.progressive import ProgressiveLearning
from fmb.training.random_state import ExactResume
from fmb.training.rundir import AtomicCheckpointIO


def fmb_callbacks(cfg, run_dir) -> list:
    # With a held-out selection set the reported validation split never chooses the checkpoint.
    monitor = "select/top1" if cfg.data.holdout_fraction else "val/top1"
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best-epoch{epoch:03d}", monitor=monitor,
                        mode="max", save_top_k=1, auto_insert_metric_name=False),
        # Lightning's save_last only copies when a best checkpoint is written; resume needs
        # the latest epoch every time, so last.ckpt is a checkpoint of its own.
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"), PlainProgress(cfg.run.progress_every), LogHyperparameters(),
        ExactResume(),
    ]
    if progress_bar(cfg):
        callbacks.append(RichProgressBar(leave=True))
    if cfg.ema.enabled:
        callbacks.append(WarmupEMAWeightAveraging(decay=cfg.ema.decay, warmup=cfg.ema.warmup))
    if cfg.progressive.enabled:
        callbacks.append(ProgressiveLearning(cfg.progressive, cfg.model.variant))
    return callbacks


def progress_bar(cfg) -> bool:
    """Rich's bar on a terminal only: piped or in a SLURM log its frames would be noise (PlainProgress
    prints a line every run.progress_every steps there instead)."""
    return bool(cfg.trainer.get("enable_progress_bar", True)) and sys.stdout.isatty()


# Lightning's advertising and facts fmb already prints in its own lines (the auto plan).
_NOISE = ("💡 Tip:", "GPU available:", "TPU available:", "HPU available:")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_NOISE)


def quiet_lightning() -> None:
    """Keep a run's log to what a reader acts on (idempotent)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in log.filters):
            log.addFilter(_DropNoise())
    # Lightning's own use of a torch API that torch deprecated: nothing a user can change.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # model.freeze_stages keeps the frozen stages (and their BN statistics) in eval mode on purpose.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


def build_trainer(cfg, plan, run, devices, machine, callbacks=()) -> L.Trainer:
    """The Trainer for the config that runs (`plan.apply`'d); checkpoints commit `run` as they land.

    `devices`: the checked DevicePlan (fmb/training/distributed.py); `callbacks`: extra Lightning
    callbacks (notebooks, tests), after fmb's own."""
    quiet_lightning()
    extra = [FollowLoad(machine)] if plan.follow_load else []
    # Lightning's model summary counts FLOPs only with an example input, so it printed 0: fmb's
    # own start line gives the parameters, `fmb profile` the FLOPs.
    options = {"enable_model_summary": False, **cfg.trainer, "enable_progress_bar": progress_bar(cfg)}
    if cfg.progressive.enabled or cfg.data.streaming:
        options.setdefault("reload_dataloaders_every_n_epochs", 1)  # new train loader per stage / stream epoch
    try:
        return L.Trainer(
            **options,
            default_root_dir=str(run.path),
            logger=run_loggers(run.path, cfg.run),
            callbacks=[*extra, *fmb_callbacks(cfg, run.path), *callbacks, Preemption(run.path)],
            plugins=[AtomicCheckpointIO(on_saved=run.commit)],
            sync_batchnorm=devices.sync_bn,
            deterministic=cfg.run.deterministic or None,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as exc:
        raise FmbError(f"invalid trainer settings: {str(exc).splitlines()[0]}") from None
