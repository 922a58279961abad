"""`fmb train` as a library function: claim the run directory, load the data, decide the auto
settings, build the Trainer and the model, fit, and report.

Each step is one object or function in its own module: RunDir (rundir.py), the plan
(auto.py over fmb/device.py's facts), the Trainer (trainer.py), the outcome (outcome.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import lightning as L

from fmb.config import TrainConfig, load_config, to_dict
from fmb.data import ImageDataModule
from fmb.device import machine
from fmb.errors import FmbError
from fmb.models import get_variant
from fmb.training import auto
from fmb.training.checkpoints import check_resumable, read_checkpoint_file
from fmb.training.distributed import check_rank_shares, plan_devices
from fmb.training.memory import check_fits
from fmb.training.module import ImageClassifier, model_kwargs
from fmb.training.outcome import Outcome
from fmb.training.rundir import RunDir
from fmb.training.run_files import read_summary, resume_point
from fmb.training.summary import summarize
from fmb.training.trainer import build_trainer
from fmb.utils import rank_zero_print


def train(cfg: TrainConfig, *, resume: str | Path | None = None, callbacks=()) -> dict:
    """Train one model as the config says; returns (and writes) the run's summary.

    `callbacks` are extra Lightning callbacks (notebooks, tests), added after fmb's own. The run
    directory is a transaction: see fmb/training/rundir.py and docs/errors.md."""
    started = time.time()
    with RunDir.claim(cfg, resume) as run:
        L.seed_everything(cfg.run.seed, workers=True, verbose=False)
        devices = plan_devices(cfg.trainer, cfg.model.sync_bn)  # devices this machine lacks: one line
        data = build_data(cfg, devices.world_size or 1)
        here = machine()  # probed once: the plan and the Trainer's callbacks read the same facts
        plan = auto.resolve(cfg, here, data, world_size=devices.world_size or 1, resumed=resume is not None,
                            measure_precision=lambda: _measure_precision(cfg, data))
        cfg = plan.apply(cfg)  # what runs; the caller's config stays as it was asked for
        data.data = cfg.data  # its loaders take the decided settings (data.num_workers)
        rank_zero_print(plan.describe())
        check_fits(cfg, max(data.image_size, cfg.progressive.max_image_size or 0), cfg.data.batch_size, plan.device)
        trainer = build_trainer(cfg, plan, run, devices, here, callbacks)
        module = build_module(cfg, data, run.ckpt)
        run.start(cfg)
        global_batch = cfg.data.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        _announce(cfg, run, module, data, trainer, global_batch)
        with Outcome(trainer, run) as outcome:
            trainer.fit(module, datamodule=data, ckpt_path=str(run.ckpt) if run.ckpt else None)
        summary = summarize(trainer, module, cfg, run.path, outcome.status, outcome.error, started, global_batch,
                            data, plan.record())
        if trainer.is_global_zero:
            run.finish(summary)
        outcome.reraise()
        return summary


def build_data(cfg: TrainConfig, world_size: int = 1) -> ImageDataModule:
    """The run's data, loaded and split, its image sizes resolved; every rank checked to get a batch."""
    variant = get_variant(cfg.model.variant)
    data = ImageDataModule(cfg.data, cfg.aug, seed=cfg.run.seed, variant_sizes=(variant.train_size, variant.eval_size))
    data.prepare_data()
    data.setup("fit")
    # Before Lightning starts the other ranks: a rank with no batch would stall DDP.
    check_rank_shares(data.split_sizes(), world_size, cfg.data.batch_size)
    return data


def build_module(cfg: TrainConfig, data: ImageDataModule, ckpt: Path | None = None) -> ImageClassifier:
    """The model for `data`'s classes, from model.pretrained where given; a resume's checkpoint
    checked against it before anything is written."""
    pretrained = None
    if cfg.model.pretrained:
        from fmb.models.weights import read_checkpoint
        pretrained = read_checkpoint(cfg.model.pretrained, family=get_variant(cfg.model.variant).family,
                                     padding=cfg.model.padding, variant=cfg.model.variant)
    module = ImageClassifier(cfg, data.num_classes, data.class_names,
                             bn_kwargs=pretrained[1].bn_kwargs if pretrained else None)
    if pretrained is not None:
        from fmb.models.weights import load_into
        load_into(module.model, *pretrained, source=str(cfg.model.pretrained))
    if ckpt is not None:
        check_resumable(read_checkpoint_file(ckpt, mmap=True), ckpt, module)
    return module


def _measure_precision(cfg: TrainConfig, data: ImageDataModule) -> dict:
    from fmb.training.precision_probe import measure_model_precision
    return measure_model_precision(model_kwargs(cfg.model), data.image_size, cfg.data.batch_size)


def _announce(cfg, run, module, data, trainer, global_batch) -> None:
    rank_zero_print(
        (f"[yellow]{run.note}[/]\n" if run.note else "")
        + f"[bold]fmb train[/] {cfg.model.variant} blocks={module.model.placement} "
        f"params={sum(p.numel() for p in module.model.parameters()):,} classes={data.num_classes}\n"
        f"  run dir: {run.path}\n  batch: {cfg.data.batch_size} per device × {trainer.world_size} devices × "
        f"{trainer.accumulate_grad_batches} accumulation = {global_batch} global; "
        f"image {cfg.data.image_size}px, eval {cfg.data.eval_image_size}px")


def load_run_config(resume: str | Path, overrides=()) -> TrainConfig:
    """The saved config of the run being resumed, with extra overrides such as more epochs.

    Settings the run left to `auto` are `auto` again: a resume decides them for the machine it
    runs on (summary.json records what was asked for)."""
    run_dir, _ = resume_point(Path(resume))
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FmbError(f"cannot resume {run_dir}: config.yaml is missing; expected a run directory made by fmb train")
    asked = [f"{key}={entry['requested']}" for key, entry in (read_summary(run_dir).get("auto") or {}).items()
             if entry.get("requested") == auto.AUTO and key.split(".")[0] != "torch"]
    saved = load_config([str(path)])
    cfg = load_config([str(path)], [*asked, *overrides])
    # The checkpoint holds this model's weights and this optimizer's state: neither can change.
    before, after = to_dict(saved), to_dict(cfg)
    for section, key in [("optim", "name"), *(("model", k) for k in before["model"])]:
        if before[section][key] != after[section][key] and (section, key) not in _AUTO_MODEL_KEYS:
            raise FmbError(f"cannot resume {run_dir} with {section}.{key} changed ({before[section][key]} → "
                           f"{after[section][key]}); the checkpoint holds the old one — start a new run instead")
    return cfg


# How a model is run, not what it holds: free to differ between attempts of one run.
_AUTO_MODEL_KEYS = {("model", "channels_last"), ("model", "compile"), ("model", "cuda_graphs")}
