"""`fmb eval` as a library function: a checkpoint alone → top-1/top-5/loss and per-class accuracy."""
from __future__ import annotations

import io
from pathlib import Path

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from fmb.config import TrainConfig, from_dict
from fmb.data import ImageDataModule
from fmb.errors import FmbError
from fmb.training.module import ImageClassifier, accuracy_metrics


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FmbError(f"checkpoint not found: {path}; expected a .ckpt from a run's checkpoints/ directory")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an unreadable file is the user's input problem
        raise FmbError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0][:200]}") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not ({"config", "model_kwargs"} & set(hp)) or "state_dict" not in ckpt:
        raise FmbError(f"{path} is not an fmb checkpoint (no model hyperparameters); expected a .ckpt written "
                       "by fmb train — for torchvision/timm weights use model.pretrained=PATH")
    return ckpt


def _upgrade(hp: dict) -> dict:
    """Hyperparameters of a release-0.1 checkpoint (model_kwargs, optim, data, run_config) in
    today's shape (the whole config), so its runs still evaluate."""
    if "config" in hp or "run_config" not in hp:
        return hp
    config = dict(hp["run_config"])
    config["data"] = {**config.get("data", {}), **{k: hp["data"][k] for k in ("image_size", "eval_image_size")
                                                   if k in (hp.get("data") or {})}}
    return {"config": config, "num_classes": hp["num_classes"], "class_names": hp.get("class_names"),
            "bn_eps": hp["model_kwargs"].get("bn_eps")}


def restore_module(ckpt: dict, *, ema: bool = True) -> ImageClassifier:
    """Rebuild the LightningModule from its hyperparameters and load its weights.

    With EMA, Lightning stores the averaged weights as `state_dict` and the raw ones as
    `current_model_state`; `ema=False` picks the raw ones.
    """
    hp = _upgrade(dict(ckpt["hyper_parameters"]))
    config = from_dict(hp["config"])
    config.model.compile = False
    module = ImageClassifier(config, hp["num_classes"], hp.get("class_names"), bn_eps=hp.get("bn_eps"))
    state = ckpt["state_dict"]
    if not ema:
        if "current_model_state" not in ckpt:
            raise FmbError("this checkpoint has no separate raw weights (EMA was off); drop --no-ema")
        state = ckpt["current_model_state"]
    module.load_state_dict(state, strict=True)
    return module.eval()


def evaluate(checkpoint: str | Path, *, split: str = "val", data_overrides: list[str] | None = None,
             resolution: int | None = None, ema: bool = True, batch_size: int | None = None,
             device: str = "cpu") -> dict:
    """Evaluate on the run's own data (or with `data_overrides`, `key=value` items of data.*),
    single process: exact counts, no padding."""
    if split not in ("val", "test"):
        raise FmbError(f"unknown split '{split}'; expected 'val' or 'test'")
    ckpt = load_checkpoint(checkpoint)
    module = restore_module(ckpt, ema=ema).to(device)
    hp = _upgrade(dict(ckpt["hyper_parameters"]))
    overrides = [f"data.{item.removeprefix('data.')}" for item in data_overrides or []]
    if resolution is not None:
        overrides.append(f"data.eval_image_size={resolution}")
    if batch_size is not None:
        overrides.append(f"data.batch_size={batch_size}")
    saved = dict(hp["config"])
    saved.pop("trainer", None)  # evaluation needs none of the saved trainer's settings
    cfg = _with_overrides(saved, overrides)
    datamodule = ImageDataModule(cfg.data, cfg.aug, seed=cfg.run.seed)
    datamodule.setup("validate" if split == "val" else "test")
    num_classes = hp["num_classes"]
    if datamodule.num_classes != num_classes or (hp.get("class_names") and list(hp["class_names"]) != datamodule.class_names):
        raise FmbError(f"checkpoint was trained on {num_classes} classes "
                       f"({', '.join(map(str, (hp.get('class_names') or [])[:5]))}, ...) but the data has "
                       f"{datamodule.num_classes} ({', '.join(datamodule.class_names[:5])}, ...); expected the same classes")
    role = "val" if split == "val" else "test"
    if not datamodule.has_split(role):
        raise FmbError(f"data.source '{cfg.data.source}' has no test split; expected data.test_split=NAME "
                       "(fmb eval --data test_split=NAME), or --split val")
    loader = datamodule.val_dataloader() if role == "val" else datamodule.test_dataloader()

    metrics = accuracy_metrics(num_classes).to(device)
    per_class = MulticlassAccuracy(num_classes, average=None).to(device)
    confusion = MulticlassConfusionMatrix(num_classes).to(device)
    loss_sum, count = 0.0, 0
    with torch.inference_mode():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            logits = module(images)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            count += labels.numel()
            metrics.update(logits, labels)
            per_class.update(logits, labels)
            confusion.update(logits, labels)
    if count == 0:
        raise FmbError(f"the {split} split is empty; nothing to evaluate")
    scores = {k: float(v) for k, v in metrics.compute().items()}
    names = list(hp.get("class_names") or range(num_classes))
    matrix = confusion.compute().cpu()
    return {
        "checkpoint": str(checkpoint),
        "split": split,
        "examples": count,
        "top1": scores["top1"],
        "top5": scores.get("top5"),
        "loss": loss_sum / count,
        "ema": ema and "current_model_state" in ckpt,
        "eval_image_size": datamodule.eval_image_size,
        "per_class": [{"class": str(n), "accuracy": float(a), "support": int(matrix[i].sum())}
                      for i, (n, a) in enumerate(zip(names, per_class.compute().cpu()))],
        "confusion_matrix": matrix.tolist(),
    }


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
