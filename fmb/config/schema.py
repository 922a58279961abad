"""The run configuration: every key, its default, its allowed values and its check, in one place.

Each section is a dataclass that OmegaConf reads as a structured config (so a misspelt key or
a value of the wrong type fails while merging) and that checks its own values in
`__post_init__` when `load_config` turns the merged config into these objects. A field's
`doc` is what `fmb train --help` and `--print-config` show.

Defaults are neutral (the paper's ImageNet recipe where it has one); the digits front door
is configs/experiment/digits_v2s.yaml.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional, Union

from fmb.config.fields import (MAX_IMAGE_SIZE, MAX_RANDAUGMENT_MAGNITUDE, _bad, check_choices, check_number,  # noqa: F401
                               opt)
from fmb.errors import FmbError


@dataclass
class ModelConfig:
    variant: str = opt("efficientnetv2_s", "model name, see `fmb models`")
    blocks: Optional[str] = opt(None, "placement, one letter per stage (F fused, M MBConv); null = the variant's")
    stage_overrides: dict[int, dict[str, Any]] = opt({}, "per-stage fields, e.g. {4: {se_ratio: 0.0}}")
    width_mult: Optional[float] = opt(None, "multiplies the variant's width")
    depth_mult: Optional[float] = opt(None, "multiplies the variant's depth")
    drop_rate: Optional[float] = opt(None, "dropout before the classifier; null = the variant's")
    drop_path_rate: Optional[float] = opt(None, "stochastic depth of the last block; null = the variant's")
    padding: Literal["symmetric", "same"] = opt("symmetric", "same = TensorFlow padding, for tf_ weights")
    pretrained: Union[bool, str, None] = opt(None, "weights to start from: a file, hf-hub:ORG/NAME, torchvision:ENUM.NAME, "
                                                   "or true = the variant's default (`fmb models --pretrained`)")
    bn_eps: Optional[float] = opt(None, "BatchNorm eps; null = the pretrained weights' origin, else the official 1e-3")
    bn_momentum: Optional[float] = opt(None, "BatchNorm momentum; null = the weights' origin, else the official")
    freeze_stages: int = opt(0, "stem and stages 1..N keep their (pretrained) weights and BN statistics; 0 = none")
    sync_bn: Optional[bool] = opt(None, "SyncBatchNorm; null = on with several CUDA devices")
    channels_last: Union[bool, str] = opt("auto", "NHWC memory format; auto = on with CUDA or CPU bf16 (fmb/training/auto.py)")
    compile: Union[bool, str] = opt("auto", "torch.compile the training forward; auto = on with CUDA for runs of >= 10k steps")
    cuda_graphs: Union[bool, str] = opt("auto", "replay the training step as CUDA graphs (static shapes); auto = "
                                                "with CUDA, fixed image size, runs of >= 10k steps")

    def __post_init__(self):
        check_choices(self, "model")
        for key in ("channels_last", "compile", "cuda_graphs"):
            if isinstance(getattr(self, key), str) and getattr(self, key) != "auto":
                raise _bad(f"model.{key}", getattr(self, key), "true, false or auto")
        from fmb.models import build_stages

        if self.blocks is not None and not str(self.blocks).strip():
            raise _bad("model.blocks", self.blocks, "a placement such as FFFMMM, or null for the variant's own")
        for key in ("drop_rate", "drop_path_rate"):
            check_number(f"model.{key}", getattr(self, key), low=0, high=1, high_open=True)
        for key in ("width_mult", "depth_mult"):
            check_number(f"model.{key}", getattr(self, key), low=0, high=16, low_open=True,
                         expected="a positive multiplier such as 0.25 or 1.0")
        check_number("model.bn_eps", self.bn_eps, low=0, high=1, low_open=True, high_open=True)
        check_number("model.bn_momentum", self.bn_momentum, low=0, high=1)
        # Builds no module: checks the variant, placement and overrides before any work.
        _, stages, _ = build_stages(self.variant, self.blocks, self.stage_overrides or None, self.width_mult,
                                    self.depth_mult)
        check_number("model.freeze_stages", self.freeze_stages, low=0, high=len(stages),
                     expected=f"a stage number from 0 (none frozen) to {len(stages)}")


def absolute_source(source: str) -> str:
    """A local data path (or glob) made absolute, so a run directory's config finds its data
    from any directory; hub ids and the built-in names stay as they are."""
    text = str(source).strip()
    if text in ("digits", "synthetic"):
        return source
    expanded = os.path.expanduser(text)
    if os.path.exists(expanded) or (any(ch in expanded for ch in "*?[") and glob.glob(expanded, recursive=True)):
        return os.path.abspath(expanded)
    return source


@dataclass
class DataConfig:
    source: str = opt("digits", "hub id, local folder/files, save_to_disk dir, digits or synthetic")
    name: Optional[str] = opt(None, "the hub dataset's configuration name")
    train_split: str = opt("train", "split to train on")
    val_split: Optional[str] = opt(None, "null = validation/valid/val/dev if present, else carved from train")
    test_split: Optional[str] = opt(None, "null = test if present")
    val_fraction: float = opt(0.1, "share of train held out for validation when the source has none")
    split_seed: int = opt(0, "seed of the carved validation split (fixed, so every run sees the same one)")
    holdout_fraction: float = opt(0.0, "share of train held out to choose checkpoints on; 0 = choose on validation")
    image_column: Optional[str] = opt(None, "null = detected (the Image feature)")
    label_column: Optional[str] = opt(None, "null = detected (the ClassLabel, or label/labels/...)")
    image_size: Optional[int] = opt(None, "train size; null = the variant's, capped at 4x small images")
    eval_image_size: Optional[int] = opt(None, "null = scaled from the train size as the variant's")
    crop_ratio: float = opt(0.875, "eval centre crop: resize to size/crop_ratio, crop size")
    mean: list[float] = opt([0.485, 0.456, 0.406], "per-channel mean (0..1 scale) normalized away; ImageNet's")
    std: list[float] = opt([0.229, 0.224, 0.225], "per-channel std (0..1 scale); ImageNet's")
    interpolation: Literal["bicubic", "bilinear"] = opt("bicubic", "resize filter of the train crop and eval resize")
    crop_scale_min: float = opt(0.08, "smallest RandomResizedCrop area (tiny images need more kept; official V2: 0.05)")
    preprocessing: Literal["fmb", "official"] = opt("fmb", "official = google/automl V2's TF crop sampling, "
                                                    "unantialiased resize, eval rule and half/half MixUp-CutMix")
    hflip: bool = opt(True, "random horizontal flips; off where mirroring changes the class")
    batch_size: int = opt(32, "images per device per step")
    num_workers: Union[int, str] = opt("auto", "loader worker processes; auto = a CUDA device's share of the cores, 2 on CPU")
    streaming: bool = opt(False, "stream the source instead of downloading it")
    on_bad_image: Literal["error", "skip"] = opt("error", "an unreadable image stops the run, or is skipped")
    cache_dir: Optional[str] = opt(None, "datasets cache; null = its default")
    shuffle_buffer: int = opt(1000, "streaming: examples in the shuffle buffer")
    synthetic_size: int = opt(512, "source=synthetic: train examples")
    synthetic_classes: int = opt(10, "source=synthetic: classes")
    pin_memory: Optional[bool] = opt(None, "null = on with CUDA")
    persistent_workers: Optional[bool] = opt(None, "null = on when there are workers")

    def __post_init__(self):
        check_choices(self, "data")
        if not str(self.source).strip():
            raise _bad("data.source", self.source, "a hub id, a local path, digits or synthetic")
        self.source = absolute_source(self.source)
        check_number("data.val_fraction", self.val_fraction, low=0, high=1, low_open=True, high_open=True)
        check_number("data.holdout_fraction", self.holdout_fraction, low=0, high=1, high_open=True)
        if self.holdout_fraction and self.streaming:
            raise FmbError("data.holdout_fraction needs a map-style set; expected data.holdout_fraction=0 "
                           "with data.streaming=true")
        check_number("data.crop_ratio", self.crop_ratio, low=0, high=1, low_open=True)
        for key in ("mean", "std"):
            values = list(getattr(self, key))
            if len(values) != 3 or (key == "std" and min(values) <= 0):
                raise _bad(f"data.{key}", values, "three numbers on the 0..1 scale, one per RGB channel"
                           + (", each > 0" if key == "std" else "") + ", e.g. [0.5, 0.5, 0.5]")
        check_number("data.crop_scale_min", self.crop_scale_min, low=0, high=1, low_open=True)
        for key in ("image_size", "eval_image_size"):
            check_number(f"data.{key}", getattr(self, key), low=16, high=MAX_IMAGE_SIZE,
                         expected=f"16 to {MAX_IMAGE_SIZE} px (the network downsamples 32x), e.g. 224")
        if self.num_workers == "auto":
            pass  # decided for the machine (fmb/training/auto.py, fmb/data/workers.py)
        elif isinstance(self.num_workers, str) or isinstance(self.num_workers, bool):
            raise _bad("data.num_workers", self.num_workers, "a whole number >= 0 or auto")
        else:
            check_number("data.num_workers", self.num_workers, low=0, expected="a whole number >= 0 or auto")
        for key, low in (("batch_size", 1), ("shuffle_buffer", 1), ("synthetic_size", 1), ("synthetic_classes", 2)):
            check_number(f"data.{key}", getattr(self, key), low=low, expected=f"a whole number >= {low}")


@dataclass
class AugConfig:
    randaugment_magnitude: float = opt(0.0, "RandAugment level on the official scale (10 = base range); 0 = off")
    mixup_alpha: float = opt(0.0, "MixUp alpha; 0 = off")
    cutmix_alpha: float = opt(0.0, "CutMix alpha; 0 = off")
    label_smoothing: float = opt(0.1, "label smoothing of the loss")

    def __post_init__(self):
        check_number("aug.randaugment_magnitude", self.randaugment_magnitude, low=0, high=MAX_RANDAUGMENT_MAGNITUDE)
        for key in ("mixup_alpha", "cutmix_alpha"):
            check_number(f"aug.{key}", getattr(self, key), low=0, expected="0 (off) or a positive alpha, e.g. 0.2")
        check_number("aug.label_smoothing", self.label_smoothing, low=0, high=1, high_open=True)


@dataclass
class OptimConfig:
    name: Literal["rmsprop", "rmsprop_torch", "sgd", "adamw"] = opt(
        "rmsprop", "rmsprop = TensorFlow's (the paper's); rmsprop_torch = torch.optim.RMSprop")
    lr: float = opt(0.016, "learning rate (per 256 images when lr_per_256)")
    lr_per_256: bool = opt(True, "scale lr by global batch / 256, as the paper states it")
    weight_decay: float = opt(1e-5, "on conv/linear weights only")
    momentum: float = opt(0.9, "rmsprop/sgd momentum")
    head_lr_factor: float = opt(1.0, "lr multiplier of the layers pretrained weights did not provide (the new "
                                     "classifier, stages that start fresh); 1 = one lr")

    def __post_init__(self):
        check_choices(self, "optim")
        check_number("optim.head_lr_factor", self.head_lr_factor, low=0, low_open=True,
                     expected="a positive multiplier, e.g. 10 for a head that learns 10x faster")
        check_number("optim.lr", self.lr, low=0, low_open=True, expected="a positive learning rate, e.g. 0.016")
        check_number("optim.weight_decay", self.weight_decay, low=0)
        check_number("optim.momentum", self.momentum, low=0, high=1, high_open=True)


@dataclass
class SchedConfig:
    name: Literal["cosine", "exponential", "constant"] = opt("exponential", "lr schedule after warmup")
    warmup_epochs: float = opt(5.0, "linear warmup")
    decay_rate: float = opt(0.97, "exponential: x decay_rate every decay_epochs")
    decay_epochs: float = opt(2.4, "exponential: epochs per decay step")
    min_lr_ratio: float = opt(0.0, "floor of the lr, as a fraction of the peak")

    def __post_init__(self):
        check_choices(self, "sched")
        check_number("sched.warmup_epochs", self.warmup_epochs, low=0)
        check_number("sched.decay_rate", self.decay_rate, low=0, high=1, low_open=True)
        check_number("sched.decay_epochs", self.decay_epochs, low=0, low_open=True)
        check_number("sched.min_lr_ratio", self.min_lr_ratio, low=0, high=1)


@dataclass
class ProgressiveConfig:
    enabled: bool = opt(False, "progressive learning (paper, Section 4.2)")
    schedule: Literal["paper", "official"] = opt("paper", "paper = Table 6; official = google/automl's main.py")
    stages: int = opt(4, "stages the epochs are split into")
    min_image_size: Optional[int] = opt(None, "null = the variant's preset, scaled to the data")
    max_image_size: Optional[int] = opt(None, "null = data.image_size")
    min_randaugment: Optional[float] = opt(None, "null = the preset's")
    max_randaugment: Optional[float] = opt(None, "null = the preset's")
    min_mixup: Optional[float] = opt(None, "null = the preset's")
    max_mixup: Optional[float] = opt(None, "null = the preset's")
    min_dropout: Optional[float] = opt(None, "null = the preset's")
    max_dropout: Optional[float] = opt(None, "null = the preset's")

    def __post_init__(self):
        check_choices(self, "progressive")
        check_number("progressive.stages", self.stages, low=1, expected="a whole number >= 1")
        for key in ("min_image_size", "max_image_size"):
            check_number(f"progressive.{key}", getattr(self, key), low=16, high=MAX_IMAGE_SIZE)
        for key in ("min_randaugment", "max_randaugment"):
            check_number(f"progressive.{key}", getattr(self, key), low=0, high=MAX_RANDAUGMENT_MAGNITUDE)
        for key in ("min_mixup", "max_mixup"):
            check_number(f"progressive.{key}", getattr(self, key), low=0)
        for key in ("min_dropout", "max_dropout"):
            check_number(f"progressive.{key}", getattr(self, key), low=0, high=1, high_open=True)


@dataclass
class EmaConfig:
    enabled: bool = opt(False, "validate and save an exponential moving average of the weights")
    decay: float = opt(0.9999, "EMA decay")
    warmup: bool = opt(True, "the official warm-up: decay min(decay, (1 + n) / (10 + n)) at update n")

    def __post_init__(self):
        check_number("ema.decay", self.decay, low=0, high=1, low_open=True, high_open=True,
                     expected="a number in (0, 1), e.g. 0.9999")


@dataclass
class RunConfig:
    dir: Optional[str] = opt(None, "run directory; null = runs/<name>/<timestamp>")
    name: Optional[str] = opt(None, "null = <variant>-<data source>")
    seed: int = opt(0, "initialisation and data order")
    deterministic: bool = opt(False, "deterministic kernels (slower)")
    loggers: list[Literal["csv", "tensorboard", "wandb", "mlflow"]] = opt(
        ["csv", "tensorboard"], "Lightning loggers, several at once: csv (always), tensorboard, wandb, mlflow")
    wandb_project: str = opt("fmb", "W&B project")
    wandb_offline: bool = opt(False, "W&B offline mode: files under <run dir>/wandb, `wandb sync` later")
    mlflow_tracking_uri: Optional[str] = opt(None, "MLflow store; null = file store <run dir>/mlruns")
    progress_every: int = opt(50, "steps between plain progress lines when stdout is not a terminal; 0 = none")
    threads: Union[int, str] = opt("auto", "CPU threads: auto = every core (same seed, same numbers on a busy "
                                           "machine); follow_load = the cores others leave free, each epoch; or N")

    def __post_init__(self):
        if self.threads not in ("auto", "follow_load") and (isinstance(self.threads, bool) or not isinstance(
                self.threads, int) or self.threads < 1):
            raise _bad("run.threads", self.threads, "auto, follow_load or a whole number of threads >= 1")
        if "csv" not in self.loggers:
            raise _bad("run.loggers", list(self.loggers), "a list that includes csv (the run's metrics.csv, read by "
                       "fmb ablate and resume), e.g. [csv, tensorboard, wandb]")
        if len(set(self.loggers)) != len(self.loggers):
            raise _bad("run.loggers", list(self.loggers), "each logger once")
        check_number("run.progress_every", self.progress_every, low=0, expected="a whole number >= 0")
        from fmb.config.checks import check_run_dir, check_run_name, check_seed
        check_run_name(self.name), check_run_dir(self.dir), check_seed(self.seed)


def default_trainer() -> dict[str, Any]:
    return {"max_epochs": 10, "accelerator": "auto", "devices": 1, "precision": "auto", "log_every_n_steps": 10}


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    trainer: dict[str, Any] = field(default_factory=default_trainer,
                                    metadata={"doc": "passed to lightning.Trainer (max_epochs, devices, ...)"})
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        from fmb.config.trainer import check_trainer

        check_trainer(self.trainer)
        if self.progressive.enabled and self.trainer.get("max_epochs") in (None, -1):
            raise FmbError("progressive.enabled needs trainer.max_epochs (stages split the epochs); "
                           "set trainer.max_epochs or progressive.enabled=false")


def section_docs(section) -> dict[str, str]:
    """{key: doc} of a section dataclass, for help texts."""
    return {f.name: f.metadata.get("doc", "") for f in fields(section)}
