"""`fmb eval` as a library function: a checkpoint alone → top-1/top-5/loss and per-class accuracy."""
from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from fmb.config import TrainConfig, from_dict
from fmb.data import ImageDataModule
from fmb.errors import FmbError
from fmb.training.module import ImageClassifier, accuracy_metrics


def load_checkpoint(path: str | Path) -> dict:
    from fmb.training.checkpoints import read_checkpoint_file

    path = Path(path)
    if path.is_dir():
        raise FmbError(f"{path} is a directory; expected a .ckpt file such as {path / 'checkpoints' / 'last.ckpt'}")
    ckpt = read_checkpoint_file(path)  # empty, text, random or truncated files: one line saying which
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not ({"config", "model_kwargs"} & set(hp)) or "state_dict" not in ckpt:
        raise FmbError(f"{path} is not an fmb checkpoint (no model hyperparameters); expected a .ckpt written "
                       "by fmb train — for torchvision/timm weights use model.pretrained=PATH")
    ckpt["hyper_parameters"] = _upgrade(hp)  # every caller reads today's shape
    return ckpt


def _upgrade(hp: dict) -> dict:
    """Hyperparameters of a checkpoint in the older layout (model_kwargs, optim, data, run_config) in
    today's shape (the whole config), so its runs still evaluate."""
    if "config" in hp or "run_config" not in hp:
        return hp
    config = dict(hp["run_config"])
    config["data"] = {**config.get("data", {}), **{k: hp["data"][k] for k in ("image_size", "eval_image_size")
                                                   if k in (hp.get("data") or {})}}
    return {"config": config, "num_classes": hp["num_classes"], "class_names": hp.get("class_names"),
            "bn_kwargs": {"bn_eps": hp["model_kwargs"]["bn_eps"]} if hp["model_kwargs"].get("bn_eps") else None}


def restore_module(ckpt: dict, *, ema: bool = True) -> ImageClassifier:
    """Rebuild the LightningModule from its hyperparameters (as `load_checkpoint` gives them)
    and load its weights.

    With EMA, Lightning stores the averaged weights as `state_dict` and the raw ones as
    `current_model_state`; `ema=False` picks the raw ones.
    """
    hp = ckpt["hyper_parameters"]
    config = from_dict(hp["config"])
    config.model.compile = False
    module = ImageClassifier(config, hp["num_classes"], hp.get("class_names"), bn_kwargs=hp.get("bn_kwargs"))
    state = ckpt["state_dict"]
    if not ema:
        if "current_model_state" not in ckpt:
            raise FmbError("this checkpoint has no separate raw weights (EMA was off); drop --no-ema")
        state = ckpt["current_model_state"]
    module.load_state_dict(state, strict=True)
    return module.eval()


def evaluate(checkpoint: str | Path, *, split: str = "val", data_overrides: list[str] | None = None,
             resolution: int | None = None, ema: bool = True, batch_size: int | None = None,
             device: str = "auto", precision: str | None = None, num_workers: int | None = None,
             devices: int = 1) -> dict:
    """Evaluate on the run's own data (or with `data_overrides`, `key=value` items of data.*)
    through Lightning's `validate`/`test`: exact counts, no padding, on one device or, with
    `devices` > 1, as that many DDP processes (each scores its share of the images, never a
    repeat; torchmetrics sums the counts over ranks, so every rank returns the same result).

    `split` is `val` (the run's validation split, carved or named), `test`, or any split name
    of the source (e.g. `train`). A split the source lacks is an error listing those it has —
    never a silent fall-back to another split. `device` is auto|cpu|cuda[:N]|mps; `precision`
    fp32|bf16|fp16 (autocast), or None / "run" for the precision the run trained in. The
    result names the split, image count, checkpoint and weights (`weights`: "ema" or "raw")."""
    import os

    from fmb.inference.device import check_devices, check_precision, resolve_device, run_precision

    target = resolve_device(device)
    if precision not in (None, "run"):  # None / "run": the precision the checkpoint trained in
        precision = check_precision(precision, target)
    if batch_size is not None and batch_size < 1:
        raise FmbError(f"--batch-size {batch_size}; expected 1 or more")
    check_devices(devices, target)
    ckpt = load_checkpoint(checkpoint)
    if precision in (None, "run"):
        precision = run_precision(ckpt["hyper_parameters"], target)[0]
    module = restore_module(ckpt, ema=ema)
    hp = ckpt["hyper_parameters"]
    overrides = [f"data.{item.removeprefix('data.')}" for item in data_overrides or []]
    role = "val" if split == "val" else "test"
    if split not in ("val", "test"):
        overrides.append(f"data.test_split={split}")  # any named split of the source, evaluated as 'test'
    if resolution is not None:
        overrides.append(f"data.eval_image_size={resolution}")
    if batch_size is not None:
        overrides.append(f"data.batch_size={batch_size}")
    if num_workers is not None:
        overrides.append(f"data.num_workers={num_workers}")
    saved = dict(hp["config"])
    saved.pop("trainer", None)  # evaluation needs none of the saved trainer's settings
    cfg = _with_overrides(saved, overrides)
    available = _source_splits(cfg)
    if split not in ("val", "test") and available is not None and split not in available:
        raise FmbError(f"data.source '{cfg.data.source}' has no split '{split}'; its splits are "
                       f"{', '.join(available)} (plus val, held out from {cfg.data.train_split} when it has none)")
    datamodule = ImageDataModule(cfg.data, cfg.aug, seed=cfg.run.seed)
    datamodule.setup("validate" if role == "val" else "test")
    num_classes = hp["num_classes"]
    if datamodule.num_classes != num_classes or (hp.get("class_names") and list(hp["class_names"]) != datamodule.class_names):
        raise FmbError(f"checkpoint was trained on {num_classes} classes "
                       f"({', '.join(map(str, (hp.get('class_names') or [])[:5]))}, ...) but the data has "
                       f"{datamodule.num_classes} ({', '.join(datamodule.class_names[:5])}, ...); expected the same classes")
    if not datamodule.has_split(role):
        raise FmbError(f"data.source '{cfg.data.source}' has no {role} split; its splits are "
                       f"{', '.join(available or [])}; expected --split with one of them (or val), or "
                       f"--data test_split=NAME")
    split_name = datamodule.splits[role].name if datamodule.splits and role in datamodule.splits else role
    if role == "val" and split_name == cfg.data.train_split and cfg.data.val_split is None:
        split_name = f"{split_name} (held-out {cfg.data.val_fraction:g} for validation)"
    scorer = _Scorer(module, num_classes)
    _run_lightning(scorer, datamodule, role, target, devices, precision)
    count = scorer.result["count"] if scorer.result else 0
    if count == 0:
        raise FmbError(f"the {split} split is empty; nothing to evaluate")
    scores, matrix = scorer.result["scores"], scorer.result["confusion"]
    names = list(hp.get("class_names") or range(num_classes))
    weights = "ema" if ema and "current_model_state" in ckpt else "raw"
    return {
        "checkpoint": os.path.abspath(checkpoint),
        "split": split,
        "split_name": split_name,
        "data_source": cfg.data.source,
        "images": count,
        "examples": count,
        "top1": scores["top1"],
        "top5": scores.get("top5"),
        "loss": scorer.result["loss_sum"] / count,
        "weights": weights,
        "ema": weights == "ema",
        "device": str(target),
        "devices": devices,
        "precision": precision,
        "batch_size": cfg.data.batch_size,
        "eval_image_size": datamodule.eval_image_size,
        "skipped_images": datamodule.skipped_images,
        "per_class": [{"class": str(n), "accuracy": float(a), "support": int(matrix[i].sum())}
                      for i, (n, a) in enumerate(zip(names, scorer.result["per_class"]))],
        "confusion_matrix": matrix.tolist(),
    }


class _Scorer(L.LightningModule):
    """What `evaluate` reports, counted in Lightning's validation/test loop. Each metric is a
    torchmetrics state, so with several DDP ranks `compute()` sums them over the ranks."""

    def __init__(self, model: ImageClassifier, num_classes: int):
        super().__init__()
        self.model = model
        self.metrics = accuracy_metrics(num_classes)
        self.per_class = MulticlassAccuracy(num_classes, average=None)
        self.confusion = MulticlassConfusionMatrix(num_classes)
        self.loss_sum, self.count = SumMetric(), SumMetric()
        self.result: dict | None = None

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx:  # the run's held-out selection set (data.holdout_fraction): not this split
            return
        images, labels = batch
        logits = self.model(images).float()
        self.loss_sum.update(F.cross_entropy(logits, labels, reduction="sum"))
        self.count.update(labels.numel())
        self.metrics.update(logits, labels)
        self.per_class.update(logits, labels)
        self.confusion.update(logits, labels)

    test_step = validation_step

    def on_validation_epoch_end(self):
        self.result = {"scores": {k: float(v) for k, v in self.metrics.compute().items()},
                       "loss_sum": float(self.loss_sum.compute()), "count": int(self.count.compute()),
                       "per_class": self.per_class.compute().cpu().tolist(),
                       "confusion": self.confusion.compute().cpu()}

    on_test_epoch_end = on_validation_epoch_end


PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def _run_lightning(scorer: _Scorer, datamodule: ImageDataModule, role: str, target: torch.device,
                   devices: int, precision: str) -> None:
    """One pass over the split with Lightning: DDP over `devices` processes when more than one
    (Lightning starts the others by running the same command again)."""
    import logging

    if target.index is not None and devices > 1:
        raise FmbError(f"--device {target} names one GPU but --devices {devices} asks for several; "
                       f"expected --device cuda with --devices {devices}")
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # "GPU available: ..." lines are noise in an eval report
    try:
        trainer = L.Trainer(accelerator=target.type, devices=[target.index] if target.index is not None else devices,
                            strategy="ddp" if devices > 1 else "auto", precision=PRECISION[precision],
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, use_distributed_sampler=False)
        (trainer.validate if role == "val" else trainer.test)(scorer, datamodule=datamodule, verbose=False)
    finally:
        quiet.setLevel(level)


def _source_splits(cfg: TrainConfig) -> list[str] | None:
    """The split names the data source has (None for synthetic data, which has every role)."""
    if cfg.data.source == "synthetic":
        return None
    from fmb.data.sources import load_source
    return list(load_source(cfg.data.source, cfg.data.name, cache_dir=cfg.data.cache_dir,
                            streaming=cfg.data.streaming))


def _with_overrides(saved: dict, overrides: list[str]) -> TrainConfig:
    """The saved config with data overrides, parsed and checked as fmb train's are."""
    from omegaconf import OmegaConf

    from fmb.config import parse_overrides

    groups, nested = parse_overrides(overrides)
    if groups:
        raise FmbError("--data takes key=value items of the data section, e.g. source=/path/to/images")
    return from_dict(OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(saved), nested)))


def plot_confusion(result: dict, path: str | Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fmb.utils import atomic_write_bytes

    matrix = torch.tensor(result["confusion_matrix"], dtype=torch.float)
    normalised = matrix / matrix.sum(1, keepdim=True).clamp(min=1)
    names = [c["class"] for c in result["per_class"]]
    size = min(12, 3 + 0.35 * len(names))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 30:
        ax.set_xticks(range(len(names)), names, rotation=90)
        ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result['split']} top-1 {result['top1']:.4f}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
