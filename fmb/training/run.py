"""`fmb train` as a library function: config → Trainer → data → model → fit → run directory."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities import rank_zero_only

from fmb.config import TrainConfig, load_config, to_dict, to_yaml
from fmb.data import ImageDataModule
from fmb.errors import FmbError, unwrap_worker_error
from fmb.models import get_variant
from fmb.training.distributed import check_rank_shares, plan_devices
from fmb.training.loggers import run_loggers
from fmb.training.module import ImageClassifier
from fmb.training.optim import global_batch_size
from fmb.training.progressive import ProgressiveLearning
from fmb.training.rundir import AtomicCheckpointIO, decide_run_dir, resume_point
from fmb.utils import atomic_write_text, rank_zero_print

def _pretrained(cfg: TrainConfig):
    """(state dict, origin) of model.pretrained, or None."""
    if not cfg.model.pretrained:
        return None
    from fmb.models.weights import read_checkpoint
    return read_checkpoint(cfg.model.pretrained, family=get_variant(cfg.model.variant).family,
                           padding=cfg.model.padding)


def _callbacks(cfg: TrainConfig, run_dir: Path, extra=()) -> list:
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best-epoch{epoch:03d}", monitor="val/top1",
                        mode="max", save_top_k=1, auto_insert_metric_name=False),
        # Lightning's save_last only copies when a best checkpoint is written; resume needs
        # the latest epoch every time, so last.ckpt is a checkpoint of its own.
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar(leave=True))
    if cfg.ema.enabled:
        callbacks.append(EMAWeightAveraging(decay=cfg.ema.decay))
    if cfg.progressive.enabled:
        callbacks.append(ProgressiveLearning(cfg.progressive, cfg.model.variant))
    return callbacks + list(extra)


def build_trainer(cfg: TrainConfig, run_dir: Path, callbacks=()) -> L.Trainer:
    """The Trainer the config asks for: Lightning resolves and checks accelerator and strategy."""
    options = {"enable_progress_bar": True, **cfg.trainer}
    if cfg.progressive.enabled or cfg.data.streaming:
        options.setdefault("reload_dataloaders_every_n_epochs", 1)  # new train loader per stage / stream epoch
    try:
        return L.Trainer(
            **options,
            default_root_dir=str(run_dir),
            logger=run_loggers(run_dir),
            callbacks=_callbacks(cfg, run_dir, callbacks),
            plugins=[AtomicCheckpointIO()],
            sync_batchnorm=plan_devices(cfg.trainer, cfg.model.sync_bn).sync_bn,
            deterministic=cfg.run.deterministic or None,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as exc:
        raise FmbError(f"invalid trainer settings: {str(exc).splitlines()[0]}") from None


def _run_dir(cfg: TrainConfig, resume) -> tuple[Path, str | None]:
    """(run dir, checkpoint to resume from or None); a fresh run never reuses a run's dir."""
    if resume is not None:
        run_dir, ckpt = resume_point(Path(resume))
        _check_epochs_left(ckpt, cfg.trainer.get("max_epochs"))
        return run_dir, str(ckpt)
    source_name = Path(str(cfg.data.source)).name or "data"
    run_dir = decide_run_dir(cfg.run.dir, cfg.run.name or f"{cfg.model.variant}-{source_name}")
    if rank_zero_only.rank == 0 and ((run_dir / "config.yaml").exists() or (run_dir / "checkpoints").exists()):
        # Other ranks find rank 0's fresh config here; rank 0 must never mix two runs.
        raise FmbError(f"run dir {run_dir} already holds a run; continue it with --resume {run_dir} "
                       "or choose another run.dir")
    return run_dir, None


def train(cfg: TrainConfig, *, resume: str | Path | None = None, callbacks=()) -> dict:
    """Train one model as the config says; returns (and writes) the run's summary.

    Lightning's order: config → Trainer → datamodule → model → fit. `callbacks` are extra
    Lightning callbacks (notebooks, tests) added after fmb's own.
    """
    started = time.time()
    run_dir, ckpt_path = _run_dir(cfg, resume)
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    trainer = build_trainer(cfg, run_dir, callbacks)

    variant = get_variant(cfg.model.variant)
    datamodule = ImageDataModule(cfg.data, cfg.aug, seed=cfg.run.seed,
                                 variant_sizes=(variant.train_size, variant.eval_size))
    datamodule.prepare_data()
    datamodule.setup("fit")
    # Before Lightning starts the other ranks: a rank with no batch would stall DDP.
    check_rank_shares(datamodule.split_sizes(), trainer.world_size, cfg.data.batch_size)
    cfg.data.image_size, cfg.data.eval_image_size = datamodule.image_size, datamodule.eval_image_size

    pretrained = _pretrained(cfg)
    module = ImageClassifier(cfg, datamodule.num_classes, datamodule.class_names,
                             bn_eps=pretrained[1].bn_eps if pretrained else None)
    if pretrained is not None:
        from fmb.models.weights import load_into
        load_into(module.model, *pretrained, source=str(cfg.model.pretrained))

    global_batch = global_batch_size(cfg.data.batch_size, trainer)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    rank_zero_print(
        f"[bold]fmb train[/] {cfg.model.variant} blocks={module.model.placement} "
        f"params={sum(p.numel() for p in module.model.parameters()):,} classes={datamodule.num_classes}\n"
        f"  run dir: {run_dir}\n  batch: {cfg.data.batch_size} per device × {trainer.world_size} devices × "
        f"{trainer.accumulate_grad_batches} accumulation = {global_batch} global; "
        f"image {cfg.data.image_size}px, eval {cfg.data.eval_image_size}px")
    status, error = "completed", None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            status = "interrupted"
    except FmbError as exc:
        status, error = "failed", str(unwrap_worker_error(exc))
        raise
    except Exception as exc:  # noqa: BLE001 - a crash mid-run is reported as a failed run, in one line
        status, error = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if os.environ.get("FMB_DEBUG"):
            raise
        raise FmbError(f"run failed in {run_dir}: {error} (rerun with --debug for the traceback)", exit_code=1) from exc
    except BaseException:
        status = "interrupted"
        raise
    finally:
        summary = summarize(trainer, module, cfg, run_dir, status, error, started, global_batch, datamodule)
        if trainer.is_global_zero:
            atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _check_epochs_left(ckpt: Path, max_epochs) -> None:
    """Resuming a run that already reached its epochs would only overwrite its summary."""
    import torch
    state = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)  # Lightning reads the weights later
    done = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("processed")
    if done is not None and max_epochs not in (None, -1) and done >= max_epochs:
        raise FmbError(f"cannot resume: the run already trained {done} of trainer.max_epochs={max_epochs} epochs; "
                       f"pass trainer.max_epochs={done + 1} or more to train further")


def _metric(trainer, key):
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


def summarize(trainer, module, cfg, run_dir, status, error, started, global_batch, datamodule) -> dict:
    ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    best = float(ckpt.best_model_score) if ckpt is not None and ckpt.best_model_score is not None else None
    rates = module.images_per_sec
    return {
        "status": status,
        "error": error,
        "run_dir": str(run_dir),
        "variant": cfg.model.variant,
        "placement": module.model.placement,
        "params": sum(p.numel() for p in module.model.parameters()),
        "num_classes": module.hparams["num_classes"],
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "val_top1": _metric(trainer, "val/top1"),
        "val_top5": _metric(trainer, "val/top5"),
        "val_loss": _metric(trainer, "val/loss"),
        "val_raw_top1": _metric(trainer, "val_raw/top1"),
        "best_val_top1": best,
        "best_checkpoint": str(ckpt.best_model_path) if ckpt is not None and ckpt.best_model_path else None,
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "train_images_per_sec": round(sum(rates) / len(rates), 2) if rates else None,
        "wall_time_s": round(time.time() - started, 2),
        "per_device_batch_size": cfg.data.batch_size,
        "world_size": trainer.world_size,
        "global_batch_size": global_batch,
        "lr": module.base_lr,
        "image_size": cfg.data.image_size,
        "eval_image_size": cfg.data.eval_image_size,
        "ema": bool(cfg.ema.enabled),
        "progressive": next((c.describe() for c in trainer.callbacks if isinstance(c, ProgressiveLearning)), None),
        "skipped_images": datamodule.skipped_images,
        "seed": cfg.run.seed,
    }


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


def next_step_hint(summary: dict) -> str:
    ckpt = summary.get("best_checkpoint") or summary.get("last_checkpoint")
    return (f"next: fmb eval {ckpt}   |   fmb ablate -c configs/ablate/digits_quick.yaml   |   "
            f"fmb profile --variant {summary['variant']} --compare-blocks")
