"""`fmb train` as a library function: config → data, model, Trainer → run directory."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EMAWeightAveraging, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf

from fmb.config import load_config, to_dict, to_yaml
from fmb.data import build_datamodule
from fmb.errors import FmbError
from fmb.models import get_variant
from fmb.training.distributed import check_rank_shares, plan_devices
from fmb.training.loggers import run_loggers
from fmb.training.module import ImageClassifier
from fmb.training.optim import global_batch_size
from fmb.training.progressive import ProgressiveLearning, plan_stages
from fmb.training.rundir import AtomicCheckpointIO, decide_run_dir, global_rank, resume_point
from fmb.utils import atomic_write_text, rank_zero_print

UPSCALE_LIMIT = 4  # upscaling small images further adds compute, not information


def _round8(x: float) -> int:
    return max(16, int(round(x / 8)) * 8)


def resolve_image_sizes(cfg: DictConfig, native: int | None) -> tuple[int, int]:
    """Train and eval sizes: explicit ones win; otherwise the variant's, capped for small images.

    The eval size keeps the variant's train/test ratio (V2-S: 300 → 384), as the paper
    evaluates at a larger size than it trains.
    """
    variant = get_variant(cfg.model.variant)
    train = cfg.data.image_size
    if train is None:
        train = variant.train_size
        if native:
            train = min(train, _round8(max(32, native * UPSCALE_LIMIT)))
    if cfg.progressive.enabled and cfg.progressive.max_image_size:
        train = cfg.progressive.max_image_size
    evaluate = cfg.data.eval_image_size
    if evaluate is None:
        same = train == variant.train_size
        evaluate = variant.eval_size if same else _round8(train * variant.eval_size / variant.train_size)
    return int(train), int(evaluate)


def _model_kwargs(cfg: DictConfig) -> dict:
    m = cfg.model
    return {"name": m.variant, "blocks": m.blocks,
            "stage_overrides": OmegaConf.to_container(m.stage_overrides) or None,
            "width_mult": m.width_mult, "depth_mult": m.depth_mult, "drop_rate": m.drop_rate,
            "drop_path_rate": m.drop_path_rate, "padding": m.padding}


def _pretrained(cfg: DictConfig, kwargs: dict):
    if not cfg.model.pretrained:
        return None
    from fmb.models.weights import read_checkpoint
    state, origin = read_checkpoint(cfg.model.pretrained, family=get_variant(cfg.model.variant).family,
                                    padding=cfg.model.padding)
    kwargs["bn_eps"] = origin.bn_eps  # equal logits need the eps of the weights' origin
    return state, origin


def _callbacks(cfg: DictConfig, run_dir: Path, plan, extra=()) -> list:
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
    if plan:
        callbacks.append(ProgressiveLearning(plan))
    return callbacks + list(extra)


def build_trainer(cfg: DictConfig, run_dir: Path, plan, callbacks=()) -> L.Trainer:
    options = dict(to_dict(cfg)["trainer"])
    options.setdefault("enable_progress_bar", True)
    try:
        return L.Trainer(
            **options,
            default_root_dir=str(run_dir),
            logger=run_loggers(run_dir),
            callbacks=_callbacks(cfg, run_dir, plan, callbacks),
            plugins=[AtomicCheckpointIO()],
            sync_batchnorm=plan_devices(cfg.trainer, cfg.model.sync_bn).sync_bn,
            deterministic=cfg.run.deterministic or None,
        )
    except (MisconfigurationException, ValueError, TypeError, RuntimeError) as exc:
        raise FmbError(f"invalid trainer settings: {str(exc).splitlines()[0]}") from None


def train(cfg: DictConfig, *, resume: str | Path | None = None, callbacks=()) -> dict:
    """Train one model as the config says; returns (and writes) the run's summary.

    `callbacks` are extra Lightning callbacks (notebooks, tests) added after fmb's own.
    """
    started = time.time()
    plan_devices(cfg.trainer, cfg.model.sync_bn)  # fail on devices this machine lacks before any work
    ckpt_path = None
    if resume is not None:
        run_dir, ckpt = resume_point(Path(resume))
        ckpt_path = str(ckpt)
        _check_epochs_left(ckpt, cfg.trainer.get("max_epochs"))
    else:
        source_name = Path(str(cfg.data.source)).name or "data"
        run_dir = decide_run_dir(cfg.run.dir, cfg.run.name or f"{cfg.model.variant}-{source_name}")
        if global_rank() == 0 and ((run_dir / "config.yaml").exists() or (run_dir / "checkpoints").exists()):
            # Other ranks find rank 0's fresh config here; rank 0 must never mix two runs.
            raise FmbError(f"run dir {run_dir} already holds a run; continue it with --resume {run_dir} "
                           "or choose another run.dir")
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)

    datamodule = build_datamodule(cfg.data, cfg.aug, seed=cfg.run.seed)
    datamodule.prepare_data()
    datamodule.setup("fit")
    train_size, eval_size = resolve_image_sizes(cfg, datamodule.native_image_size)
    datamodule.state.update(image_size=train_size, eval_image_size=eval_size)
    plan = None
    if cfg.progressive.enabled:
        p = cfg.progressive
        plan = plan_stages(cfg.model.variant, cfg.trainer.max_epochs, p.stages, train_size,
                           {k: p[k] for k in p if k.startswith(("min_", "max_"))})

    model_kwargs = _model_kwargs(cfg)
    pretrained = _pretrained(cfg, model_kwargs)
    plain = to_dict(cfg)
    module = ImageClassifier(
        model_kwargs, datamodule.num_classes, datamodule.class_names, optim=plain["optim"],
        sched=plain["sched"], label_smoothing=cfg.aug.label_smoothing,
        channels_last=cfg.model.channels_last, compile=cfg.model.compile,
        data={**plain["data"], "image_size": train_size, "eval_image_size": eval_size},
        run_config=plain,
    )
    if pretrained is not None:
        from fmb.models.weights import load_into
        load_into(module.model, *pretrained, source=str(cfg.model.pretrained))

    trainer = build_trainer(cfg, run_dir, plan, callbacks)
    # Before Lightning starts the other ranks: a rank with no batch would stall DDP.
    check_rank_shares(datamodule.split_sizes(), trainer.world_size, cfg.data.batch_size)
    global_batch = global_batch_size(cfg.data.batch_size, trainer)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    rank_zero_print(
        f"[bold]fmb train[/] {cfg.model.variant} blocks={module.model.placement} "
        f"params={sum(p.numel() for p in module.model.parameters()):,} classes={datamodule.num_classes}\n"
        f"  run dir: {run_dir}\n  batch: {cfg.data.batch_size} per device × {trainer.world_size} devices × "
        f"{trainer.accumulate_grad_batches} accumulation = {global_batch} global; image {train_size}px, eval {eval_size}px"
        + (f"\n  progressive: " + ", ".join(f"stage {v.stage}: epochs {v.first_epoch}-{v.last_epoch} "
                                           f"{v.image_size}px RA{v.randaugment_magnitude:g} mixup {v.mixup_alpha:g} "
                                           f"dropout {v.dropout:g}" for v in plan) if plan else "")
    )
    status, error = "completed", None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        if trainer.interrupted:
            status = "interrupted"
    except FmbError as exc:
        status, error = "failed", str(exc)
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
        summary = summarize(trainer, module, cfg, run_dir, status, error, started, global_batch, plan,
                            datamodule, train_size, eval_size)
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


def summarize(trainer, module, cfg, run_dir, status, error, started, global_batch, plan, datamodule,
              train_size, eval_size) -> dict:
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
        "num_classes": module.hparams.num_classes,
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
        "image_size": train_size,
        "eval_image_size": eval_size,
        "ema": bool(cfg.ema.enabled),
        "progressive": [vars(v) for v in plan] if plan else None,
        "skipped_images": getattr(datamodule, "skipped_images", 0),
        "seed": cfg.run.seed,
    }


def load_run_config(resume: str | Path, overrides=()) -> DictConfig:
    """The saved config of the run being resumed, with extra overrides such as more epochs."""
    run_dir, _ = resume_point(Path(resume))
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FmbError(f"cannot resume {run_dir}: config.yaml is missing; expected a run directory made by fmb train")
    saved = load_config([str(path)])
    cfg = load_config([str(path)], list(overrides))
    # The checkpoint holds this model's weights and this optimizer's state: neither can change.
    for key in ("optim.name", *(f"model.{k}" for k in saved.model)):
        before, after = OmegaConf.select(saved, key), OmegaConf.select(cfg, key)
        if before != after:
            raise FmbError(f"cannot resume {run_dir} with {key} changed ({before} → {after}); "
                           "the checkpoint holds the old one — start a new run instead")
    return cfg


def next_step_hint(summary: dict) -> str:
    ckpt = summary.get("best_checkpoint") or summary.get("last_checkpoint")
    return (f"next: fmb eval {ckpt}   |   fmb ablate -c configs/ablate/digits_quick.yaml   |   "
            f"fmb profile --variant {summary['variant']} --compare-blocks")
