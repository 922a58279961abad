"""`fmb train` as a library function: config → Trainer → data → model → fit → run directory."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fmb.config import TrainConfig, load_config, to_dict, to_yaml
from fmb.data import ImageDataModule
from fmb.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PREEMPTED, FmbError, unwrap_worker_error, write_error
from fmb.models import get_variant
from fmb.training import auto
from fmb.training.ema import WarmupEMAWeightAveraging
from fmb.training.distributed import check_rank_shares, plan_devices
from fmb.training.loggers import LogHyperparameters, run_loggers
from fmb.training.memory import check_fits
from fmb.training.module import ImageClassifier
from fmb.training.optim import global_batch_size
from fmb.training.progress import PlainProgress
from fmb.training.progressive import ProgressiveLearning
from fmb.training.summary import slurm_job, summarize
from fmb.training.cpu_threads import FollowLoad
from fmb.training.checkpoints import check_resumable, checkpoint_step, read_checkpoint_file, resume_epoch
from fmb.training.rundir import (
    RESUME_ENV, RUN_DIR_ENV, AtomicCheckpointIO, Preemption, RunLock, RunSnapshot, _started_by_lightning, branch_dir,
    decide_run_dir, holds_run, read_summary, restart_command, resume_point, run_checkpoints, set_aside_failed_attempt,
    slurm_requeued, start_branch, trim_metrics,
)
from fmb.utils import atomic_write_text, rank_zero_print

def _pretrained(cfg: TrainConfig):
    """(state dict, origin) of model.pretrained, or None."""
    if not cfg.model.pretrained:
        return None
    from fmb.models.weights import read_checkpoint
    return read_checkpoint(cfg.model.pretrained, family=get_variant(cfg.model.variant).family,
                           padding=cfg.model.padding, variant=cfg.model.variant)


def _callbacks(cfg: TrainConfig, run_dir: Path, extra=()) -> list:
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
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar(leave=True))
    if cfg.ema.enabled:
        callbacks.append(WarmupEMAWeightAveraging(decay=cfg.ema.decay, warmup=cfg.ema.warmup))
    if cfg.progressive.enabled:
        callbacks.append(ProgressiveLearning(cfg.progressive, cfg.model.variant))
    return callbacks + list(extra)


def build_trainer(cfg: TrainConfig, run_dir: Path, callbacks=()) -> L.Trainer:
    """The Trainer the config asks for: Lightning resolves and checks accelerator and strategy.

    `auto` settings (precision, accelerator, channels_last, compile) are decided here for this
    machine, printed once, written into `cfg` (so config.yaml holds what ran) and kept on the
    trainer as `fmb_auto` for summary.json."""
    devices = plan_devices(cfg.trainer, cfg.model.sync_bn)  # devices this machine lacks: one line, before anything
    decisions = auto.decide(cfg)
    auto.apply(cfg, decisions)
    rank_zero_print(auto.describe(decisions))
    device = auto.device_type(decisions["trainer.accelerator"].value)
    if auto.follows_load(device, cfg.trainer.get("devices", 1)):
        callbacks = [FollowLoad(), *callbacks]
    options = {"enable_progress_bar": True, **cfg.trainer}
    if cfg.progressive.enabled or cfg.data.streaming:
        options.setdefault("reload_dataloaders_every_n_epochs", 1)  # new train loader per stage / stream epoch
    try:
        trainer = L.Trainer(
            **options,
            default_root_dir=str(run_dir),
            logger=run_loggers(run_dir, cfg.run),
            callbacks=_callbacks(cfg, run_dir, callbacks),
            plugins=[AtomicCheckpointIO()],
            sync_batchnorm=devices.sync_bn,
            deterministic=cfg.run.deterministic or None,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as exc:
        raise FmbError(f"invalid trainer settings: {str(exc).splitlines()[0]}") from None
    trainer.fmb_auto = auto.record(decisions)
    return trainer


@dataclass
class _Claim:
    """The run directory this process trains in, and how it got it."""
    run_dir: Path
    ckpt: Path | None = None          # checkpoint to resume from
    lock: RunLock | None = None       # held by rank 0 for the run's life
    snapshot: RunSnapshot | None = None  # a resume's files before it began, put back if it fails early
    note: str | None = None           # what was decided, said once before training
    committed: bool = False           # the attempt has written a checkpoint: the run's files are its own

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _run_dir(cfg: TrainConfig, resume) -> _Claim:
    """Claim the run's directory (rank 0 locks it) and decide where training starts from.

    A fresh run never mixes with a run that has checkpoints. It starts again in place where
    an earlier attempt died before its first checkpoint, and a SLURM job requeued after
    preemption resumes its run. `--resume` of an older checkpoint continues in a branch.
    """
    if rank_zero_only.rank != 0 and _started_by_lightning():
        # A rank Lightning started: rank 0 decided and claimed; follow it.
        ckpt = os.environ.get(RESUME_ENV)
        return _Claim(Path(os.environ[RUN_DIR_ENV]), Path(ckpt) if ckpt else None)
    claim = _claim(cfg, resume) if rank_zero_only.rank == 0 else _follow(cfg, resume)
    os.environ[RUN_DIR_ENV] = str(claim.run_dir)
    os.environ[RESUME_ENV] = str(claim.ckpt or "")
    return claim


def _follow(cfg: TrainConfig, resume) -> _Claim:
    """Ranks > 0 started by torchrun or SLURM: the same directory and checkpoint as rank 0."""
    if resume is not None:
        run_dir, ckpt = resume_point(Path(resume))
        return _Claim(run_dir, ckpt)
    source_name = Path(str(cfg.data.source)).name or "data"
    return _Claim(decide_run_dir(cfg.run.dir, cfg.run.name or f"{cfg.model.variant}-{source_name}"))


def _claim(cfg: TrainConfig, resume) -> _Claim:
    if resume is not None:
        run_dir, ckpt = resume_point(Path(resume))
        state = read_checkpoint_file(ckpt, mmap=True)
        _check_epochs_left(state, cfg.trainer.get("max_epochs"))
        last = run_dir / "checkpoints" / "last.ckpt"
        if ckpt != last and last.is_file() and checkpoint_step(last) > int(state.get("global_step", 0)):
            # An older checkpoint: the run's newer files stay as they are; continue in a branch.
            branch = branch_dir(run_dir, ckpt)
            lock = RunLock(branch).acquire()
            try:
                copied = start_branch(run_dir, ckpt, branch, resume_epoch(state), int(state.get("global_step", 0)))
            except OSError as exc:
                lock.release()
                raise write_error(branch, exc) from None
            return _Claim(branch, copied, lock, None,
                          f"{ckpt.name} is older than last.ckpt: continuing from it in a new run dir {branch}; "
                          f"{run_dir} is left as it was")
        lock = RunLock(run_dir).acquire()
        snapshot = RunSnapshot(run_dir)
        trim_metrics(run_dir / "metrics.csv", resume_epoch(state), int(state.get("global_step", 0)))
        return _Claim(run_dir, ckpt, lock, snapshot)
    source_name = Path(str(cfg.data.source)).name or "data"
    name = cfg.run.name or f"{cfg.model.variant}-{source_name}"
    requeued = None if cfg.run.dir else _requeued_run(Path("runs") / name)
    run_dir = requeued or decide_run_dir(cfg.run.dir, name)
    lock = RunLock(run_dir).acquire()
    try:
        return _claim_fresh(cfg, run_dir, lock)
    except BaseException:
        lock.release()
        raise


def _claim_fresh(cfg: TrainConfig, run_dir: Path, lock: RunLock) -> _Claim:
    if not holds_run(run_dir):
        return _Claim(run_dir, None, lock)
    summary = read_summary(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    if slurm_requeued(summary) and last.is_file():
        state = read_checkpoint_file(last, mmap=True)
        snapshot = RunSnapshot(run_dir)
        trim_metrics(run_dir / "metrics.csv", resume_epoch(state), int(state.get("global_step", 0)))
        return _Claim(run_dir, last, lock, snapshot,
                      f"SLURM job {summary['slurm_job_id']} was requeued after preemption: resuming {run_dir}")
    if not run_checkpoints(run_dir):
        moved = set_aside_failed_attempt(run_dir)
        return _Claim(run_dir, None, lock, None,
                      f"{run_dir} held an attempt that ended before its first checkpoint "
                      f"({summary.get('status', 'killed')}); starting again in place (its files: {moved})")
    raise FmbError(f"run dir {run_dir} already holds a run; continue it with --resume {run_dir} "
                   "or choose another run.dir")


def _requeued_run(root: Path) -> Path | None:
    """The run of this SLURM job that was preempted, when this process is its requeued job."""
    if not os.environ.get("SLURM_RESTART_COUNT", "0").strip("0"):
        return None
    for summary in sorted(root.glob("*/summary.json")):
        if slurm_requeued(read_summary(summary.parent)):
            return summary.parent.resolve()
    return None


def train(cfg: TrainConfig, *, resume: str | Path | None = None, callbacks=()) -> dict:
    """Train one model as the config says; returns (and writes) the run's summary.

    Lightning's order: config → Trainer → datamodule → model → fit. `callbacks` are extra
    Lightning callbacks (notebooks, tests) added after fmb's own. The run directory is a
    transaction: see fmb/training/rundir.py and docs/errors.md.
    """
    claim = _run_dir(cfg, resume)
    try:
        return _train(cfg, claim, callbacks)
    except BaseException:
        if claim.snapshot is not None and not claim.committed and claim.lock is not None:
            claim.snapshot.restore()  # a resume that failed before its first checkpoint changes nothing
        raise
    finally:
        claim.release()


def _train(cfg: TrainConfig, claim: _Claim, callbacks) -> dict:
    started = time.time()
    run_dir = claim.run_dir
    ckpt_path = str(claim.ckpt) if claim.ckpt else None
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    preemption = Preemption(run_dir)
    trainer = build_trainer(cfg, run_dir, [*callbacks, preemption])

    variant = get_variant(cfg.model.variant)
    datamodule = ImageDataModule(cfg.data, cfg.aug, seed=cfg.run.seed,
                                 variant_sizes=(variant.train_size, variant.eval_size))
    datamodule.prepare_data()
    datamodule.setup("fit")
    # Before Lightning starts the other ranks: a rank with no batch would stall DDP.
    check_rank_shares(datamodule.split_sizes(), trainer.world_size, cfg.data.batch_size)
    cfg.data.image_size, cfg.data.eval_image_size = datamodule.image_size, datamodule.eval_image_size
    largest = max(datamodule.image_size, cfg.progressive.max_image_size or 0)
    from lightning.pytorch.accelerators import CUDAAccelerator
    device_type = "cuda" if isinstance(trainer.accelerator, CUDAAccelerator) else "cpu"
    check_fits(cfg, largest, cfg.data.batch_size, device_type)  # before any work
    global_batch = global_batch_size(cfg.data.batch_size, trainer)
    steps = auto.planned_steps(datamodule.split_sizes()["train"], global_batch, trainer.accumulate_grad_batches,
                               cfg.trainer)
    compiled = {"model.compile": auto.compile_(cfg.model.compile, device_type, bool(cfg.progressive.enabled), steps)}
    auto.apply(cfg, compiled)  # decided now the run's length is known
    rank_zero_print(auto.describe(compiled))
    trainer.fmb_auto.update(auto.record(compiled))

    pretrained = _pretrained(cfg)
    module = ImageClassifier(cfg, datamodule.num_classes, datamodule.class_names,
                             bn_kwargs=pretrained[1].bn_kwargs if pretrained else None)
    if pretrained is not None:
        from fmb.models.weights import load_into
        load_into(module.model, *pretrained, source=str(cfg.model.pretrained))
    if claim.ckpt is not None:
        check_resumable(read_checkpoint_file(claim.ckpt, mmap=True), claim.ckpt, module)

    claim.committed = claim.snapshot is None  # a fresh run (or a branch) owns its files from the start

    def commit(_path=None):
        if not claim.committed and trainer.is_global_zero:  # the resume made its first checkpoint: now it is the run
            atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        claim.committed = True
    trainer.strategy.checkpoint_io.after_save = commit
    if trainer.is_global_zero and claim.committed:
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    rank_zero_print(
        (f"[yellow]{claim.note}[/]\n" if claim.note else "")
        + f"[bold]fmb train[/] {cfg.model.variant} blocks={module.model.placement} "
        f"params={sum(p.numel() for p in module.model.parameters()):,} classes={datamodule.num_classes}\n"
        f"  run dir: {run_dir}\n  batch: {cfg.data.batch_size} per device × {trainer.world_size} devices × "
        f"{trainer.accumulate_grad_batches} accumulation = {global_batch} global; "
        f"image {cfg.data.image_size}px, eval {cfg.data.eval_image_size}px")
    status, error, failure = "completed", None, None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            status = "interrupted"
    except SIGTERMException:
        status, failure = "preempted", _preempted(trainer, run_dir)
    except FmbError as exc:
        status, error = "failed", str(unwrap_worker_error(exc))
        _write_error_log(run_dir, trainer)
        raise
    except Exception as exc:  # noqa: BLE001 - a crash mid-run is reported as a failed run, in one line
        _write_error_log(run_dir, trainer)
        if trainer.received_sigterm:  # SIGTERM broke something on its way (e.g. torch.compile's workers)
            status, failure = "preempted", _preempted(trainer, run_dir)
        else:
            status, error = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if os.environ.get("FMB_DEBUG"):
                raise
            raise FmbError(f"run failed in {run_dir}: {error} (traceback in {run_dir / 'error.log'})",
                           exit_code=EXIT_FAILED) from exc
    except BaseException:  # Ctrl-C: Lightning turns it into SystemExit (and ignores SIGINT from then on)
        status = "interrupted"
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)
        where = (f"continue with: fmb train --resume {run_dir}" if (run_dir / "checkpoints" / "last.ckpt").is_file()
                 else f"start it again in place: {restart_command(run_dir)}")
        failure = FmbError(f"run interrupted at step {trainer.global_step}; {where}", EXIT_INTERRUPTED)
    finally:
        summary = summarize(trainer, module, cfg, run_dir, status, error, started, global_batch, datamodule)
        if trainer.is_global_zero:
            _finish(run_dir, summary, claim.committed)
    if failure is not None:
        raise failure
    return summary


def _preempted(trainer: L.Trainer, run_dir: Path) -> FmbError:
    return FmbError(f"run preempted (SIGTERM){' and requeued by SLURM' if slurm_job() else ''}: "
                    f"checkpoint of step {trainer.global_step} saved in {run_dir / 'checkpoints' / 'last.ckpt'}; "
                    f"continue with: fmb train --resume {run_dir}", EXIT_PREEMPTED)


def _finish(run_dir: Path, summary: dict, committed: bool) -> None:
    """Write the summary (not for a resume that failed before its first checkpoint: train()
    puts that run back as it was)."""
    try:
        if committed:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    except FmbError:
        if summary["status"] == "completed":
            raise
        # a failed run whose summary cannot be written (disk full): its own error says more


def _write_error_log(run_dir: Path, trainer) -> None:
    """The failed run's full traceback, next to its files (the terminal gets one line)."""
    if not trainer.is_global_zero:
        return
    try:
        atomic_write_text(run_dir / "error.log", traceback.format_exc())
    except FmbError:
        pass  # the disk that failed the run may refuse this too; the run's own error says so


def _check_epochs_left(state: dict, max_epochs) -> None:
    """Resuming a run that already reached its epochs would only overwrite its summary."""
    done = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed")
    if done is not None and max_epochs not in (None, -1) and done >= max_epochs:
        raise FmbError(f"cannot resume: the run already trained {done} of trainer.max_epochs={max_epochs} epochs; "
                       f"pass trainer.max_epochs={done + 1} or more to train further")


def load_run_config(resume: str | Path, overrides=()) -> TrainConfig:
    """The saved config of the run being resumed, with extra overrides such as more epochs."""
    run_dir, _ = resume_point(Path(resume))
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FmbError(f"cannot resume {run_dir}: config.yaml is missing; expected a run directory made by fmb train")
    saved = load_config([str(path)])
    cfg = load_config([str(path)], list(overrides))
    # The checkpoint holds this model's weights and this optimizer's state: neither can change.
    before, after = to_dict(saved), to_dict(cfg)
    for section, key in [("optim", "name"), *(("model", k) for k in before["model"])]:
        if before[section][key] != after[section][key]:
            raise FmbError(f"cannot resume {run_dir} with {section}.{key} changed ({before[section][key]} → "
                           f"{after[section][key]}); the checkpoint holds the old one — start a new run instead")
    return cfg
