"""What a finished (or stopped) run reports: summary.json's fields and the hint printed after it."""
from __future__ import annotations

import os
import time

from lightning.pytorch.callbacks import ModelCheckpoint

from fmb.training.progressive import ProgressiveLearning


def slurm_job() -> str | None:
    return os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")


def _metric(trainer, key):
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


def summarize(trainer, module, cfg, run_dir, status, error, started, global_batch, datamodule, auto=None) -> dict:
    """summary.json of a run; `auto` is the run plan's record (each auto setting: value, what was asked, why)."""
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
        "select_top1": _metric(trainer, "select/top1"),
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
        "slurm_job_id": slurm_job(),
        "auto": auto,
        # which stages model.pretrained loaded and which started fresh (another placement than the weights')
        "pretrained": _pretrained_report(module),
    }


def _pretrained_report(module):
    report = getattr(module.model, "pretrained_report", None)
    return report.as_dict() if report is not None else None


def next_step_hint(summary: dict) -> str:
    """The commands to run next, each quoted for a POSIX shell so a path with spaces or
    quotes pastes as one argument."""
    from shlex import quote

    ckpt = summary.get("best_checkpoint") or summary.get("last_checkpoint")
    return (f"next: fmb eval {quote(str(ckpt))}   |   fmb ablate -c configs/ablate/digits_quick.yaml   |   "
            f"fmb profile --variant {quote(str(summary['variant']))} --compare-blocks")
