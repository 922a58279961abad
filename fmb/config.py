"""Typed run configuration: YAML files merged in order, then dotted `key=value` overrides.

The schema is a set of OmegaConf structured configs (dataclasses), so a misspelt key or a
value of the wrong type is caught with the file, key and nearest valid choice named.
`trainer.*` passes straight to `lightning.Trainer`; its keys are checked against its signature.
"""
from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError, ConfigKeyError, ConfigTypeError, OmegaConfBaseException, ValidationError,
)

from fmb.errors import FmbError, nearest

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class ModelConfig:
    variant: str = "efficientnetv2_s"
    blocks: Optional[str] = None  # placement string, e.g. FFFMMM; None = the variant's own
    stage_overrides: dict[Any, Any] = field(default_factory=dict)  # {stage_number: {field: value}}
    width_mult: Optional[float] = None
    depth_mult: Optional[float] = None
    drop_rate: Optional[float] = None  # None = the variant's dropout (or the progressive schedule's)
    drop_path_rate: Optional[float] = None
    padding: str = "symmetric"
    pretrained: Optional[str] = None
    sync_bn: Optional[bool] = None  # None = on when more than one device
    channels_last: bool = False
    compile: bool = False


@dataclass
class DataConfig:
    source: str = "digits"
    name: Optional[str] = None
    train_split: str = "train"
    val_split: Optional[str] = None
    test_split: Optional[str] = None
    val_fraction: float = 0.1
    image_column: Optional[str] = None
    label_column: Optional[str] = None
    image_size: Optional[int] = None  # None = the variant's train size
    eval_image_size: Optional[int] = None  # None = scaled like the variant's eval size
    crop_ratio: float = 0.875
    batch_size: int = 32  # per device
    num_workers: int = 2
    streaming: bool = False
    on_bad_image: str = "error"
    cache_dir: Optional[str] = None


@dataclass
class AugConfig:
    randaugment_magnitude: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.1
    crop_scale_min: float = 0.08  # RandomResizedCrop's smallest area; tiny images need more
    hflip: bool = True  # off where mirroring changes the class (digits, text)


@dataclass
class OptimConfig:
    name: str = "rmsprop"
    lr: float = 0.016
    lr_per_256: bool = True  # lr is for 256 images; scaled by the global batch
    weight_decay: float = 1e-5
    momentum: float = 0.9


@dataclass
class SchedConfig:
    name: str = "cosine"  # cosine | exponential | constant
    warmup_epochs: float = 1.0
    decay_rate: float = 0.97  # exponential: x decay_rate every decay_epochs
    decay_epochs: float = 2.4
    min_lr_ratio: float = 0.0


@dataclass
class ProgressiveConfig:
    enabled: bool = False
    stages: int = 4
    min_image_size: Optional[int] = None  # None = from the variant's preset, scaled to the data
    max_image_size: Optional[int] = None
    min_randaugment: Optional[float] = None
    max_randaugment: Optional[float] = None
    min_mixup: Optional[float] = None
    max_mixup: Optional[float] = None
    min_dropout: Optional[float] = None
    max_dropout: Optional[float] = None


@dataclass
class EmaConfig:
    enabled: bool = False
    decay: float = 0.9999


@dataclass
class RunConfig:
    dir: Optional[str] = None  # None = runs/<name>/<timestamp>
    name: Optional[str] = None  # None = <variant>-<data source>
    seed: int = 0
    deterministic: bool = False


def _trainer_defaults() -> dict[str, Any]:
    return {"max_epochs": 10, "accelerator": "auto", "devices": 1, "precision": "32-true",
            "log_every_n_steps": 10}


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    progressive: ProgressiveConfig = field(default_factory=ProgressiveConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    trainer: dict[str, Any] = field(default_factory=_trainer_defaults)
    run: RunConfig = field(default_factory=RunConfig)


CHOICES = {
    "optim.name": ("rmsprop", "sgd", "adamw"),
    "sched.name": ("cosine", "exponential", "constant"),
    "model.padding": ("symmetric", "same"),
    "data.on_bad_image": ("error", "skip"),
}
# Trainer arguments fmb sets itself from its own keys.
_TRAINER_OWNED = {"logger": "fmb logs to the run dir", "callbacks": "fmb builds them from its own keys",
                  "default_root_dir": "use run.dir", "sync_batchnorm": "use model.sync_bn",
                  "deterministic": "use run.deterministic"}


def read_yaml(path: Path) -> DictConfig:
    if path.is_dir():
        raise FmbError(f"config path {path} is a directory; expected a YAML file such as "
                       "configs/experiment/digits_v2s.yaml")
    if not path.is_file():
        hint = nearest(path.name, [p.name for p in path.parent.glob("*.yaml")]) if path.parent.is_dir() else ""
        raise FmbError(f"config file not found: {path}; expected a YAML file such as "
                       f"configs/experiment/digits_v2s.yaml{hint}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise FmbError(f"config file {path} is not UTF-8 text; expected a YAML file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FmbError(f"malformed YAML in {path}{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FmbError(f"config file {path} must hold a mapping of sections (model:, data:, ...), "
                       f"got {type(data).__name__}")
    return OmegaConf.create(data)


def _schema_keys(node, prefix="") -> list[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, DictConfig) and key != "trainer":
            keys.extend(_schema_keys(value, full + "."))
    return keys


def _merge(base: DictConfig, other, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except (ConfigKeyError, ConfigAttributeError) as exc:
        key = exc.full_key or str(getattr(exc, "key", ""))
        valid = _schema_keys(OmegaConf.structured(TrainConfig))
        raise FmbError(f"unknown config key '{key}' in {origin}{nearest(key, valid)}") from None
    except (ValidationError, ConfigTypeError) as exc:
        expected = ""
        if exc.full_key:
            ref = _schema_type(exc.full_key)
            expected = f"; expected {ref}" if ref else ""
        detail = (exc.msg or str(exc) or type(exc).__name__).splitlines()[0]
        raise FmbError(f"wrong type for '{exc.full_key or 'a section'}' in {origin}: {detail}{expected} "
                       "(sections such as model: hold a mapping of keys)") from None
    except OmegaConfBaseException as exc:
        raise FmbError(f"invalid config in {origin}: {str(exc).splitlines()[0]}") from None


def _schema_type(full_key: str) -> str:
    obj: Any = TrainConfig
    for part in full_key.split("."):
        try:
            hints = typing.get_type_hints(obj)
        except TypeError:
            return ""
        if part not in hints:
            return ""
        obj = hints[part]
    return str(obj).replace("typing.", "").replace("<class '", "").replace("'>", "")


def override_to_nested(text: str) -> dict:
    """'a.b.c=value' → {'a': {'b': {'c': value}}}, the value parsed as YAML."""
    return _dotted_to_nested(*_parse_override(text))


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text or text.startswith("="):
        raise FmbError(f"cannot parse override '{text}'; expected key=value, e.g. model.variant=efficientnetv2_m")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _dotted_to_nested(key: str, value) -> dict:
    parts = key.split(".")
    if parts[:2] == ["model", "stage_overrides"] and len(parts) > 2 and parts[2].isdigit():
        parts[2] = int(parts[2])  # same key as YAML's `{4: {...}}`, so the two merge
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    return nested


def load_config(files=(), overrides=(), *, defaults: bool = True) -> DictConfig:
    """Schema ← configs/train.yaml ← each YAML file in order ← each dotted override; validated."""
    cfg = OmegaConf.structured(TrainConfig)
    default_file = CONFIG_DIR / "train.yaml"
    if defaults and default_file.is_file():
        cfg = _merge(cfg, read_yaml(default_file), str(default_file))
    for file in files:
        path = Path(file)
        cfg = _merge(cfg, read_yaml(path), str(path))
    for text in overrides:
        cfg = _merge(cfg, override_to_nested(text), f"override '{text}'")
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    from fmb.models import get_variant
    from fmb.models.factory import build_stages

    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise FmbError(f"invalid {key}='{value}'; expected one of {', '.join(choices)}{nearest(value, choices)}")
    get_variant(cfg.model.variant)
    # Builds no module: checks placement, overrides and multipliers up front.
    build_stages(cfg.model.variant, cfg.model.blocks, _plain(cfg.model.stage_overrides),
                 cfg.model.width_mult, cfg.model.depth_mult)
    _check_trainer(cfg.trainer)
    d = cfg.data
    if not 0 < d.val_fraction < 1:
        raise FmbError(f"invalid data.val_fraction={d.val_fraction}; expected a number in (0, 1), e.g. 0.1")
    if d.batch_size < 1:
        raise FmbError(f"invalid data.batch_size={d.batch_size}; expected a per-device batch >= 1")
    if d.num_workers < 0:
        raise FmbError(f"invalid data.num_workers={d.num_workers}; expected >= 0")
    for key in ("image_size", "eval_image_size"):
        size = d[key]
        if size is not None and size < 16:
            raise FmbError(f"invalid data.{key}={size}; expected >= 16 px (the network downsamples 32x)")
    for key in ("mixup_alpha", "cutmix_alpha", "randaugment_magnitude"):
        if cfg.aug[key] < 0:
            raise FmbError(f"invalid aug.{key}={cfg.aug[key]}; expected >= 0")
    if not 0 <= cfg.aug.label_smoothing < 1:
        raise FmbError(f"invalid aug.label_smoothing={cfg.aug.label_smoothing}; expected a number in [0, 1)")
    if cfg.optim.lr <= 0:
        raise FmbError(f"invalid optim.lr={cfg.optim.lr}; expected a positive learning rate")
    if cfg.progressive.enabled and cfg.progressive.stages < 1:
        raise FmbError(f"invalid progressive.stages={cfg.progressive.stages}; expected >= 1")
    if cfg.progressive.enabled and cfg.trainer.get("max_epochs") in (None, -1):
        raise FmbError("progressive.enabled needs trainer.max_epochs (stages split the epochs); "
                       "set trainer.max_epochs or progressive.enabled=false")
    if cfg.ema.enabled and not 0 < cfg.ema.decay < 1:
        raise FmbError(f"invalid ema.decay={cfg.ema.decay}; expected a number in (0, 1), e.g. 0.9999")


# Lightning checks these only once training is under way; check them while it is cheap.
_INT = (int,)
_TRAINER_TYPES = {
    "max_epochs": (_INT, "an integer number of epochs, e.g. 10 (-1 for no limit)"),
    "min_epochs": (_INT, "an integer"), "max_steps": (_INT, "an integer number of steps (-1 for no limit)"),
    "min_steps": (_INT, "an integer"), "num_nodes": (_INT, "an integer >= 1"),
    "accumulate_grad_batches": (_INT, "an integer >= 1"), "log_every_n_steps": (_INT, "an integer >= 1"),
    "check_val_every_n_epoch": (_INT, "an integer >= 1"), "num_sanity_val_steps": (_INT, "an integer"),
    "limit_train_batches": ((int, float), "a batch count or a fraction, e.g. 10 or 0.25"),
    "limit_val_batches": ((int, float), "a batch count or a fraction, e.g. 10 or 0.25"),
    "limit_test_batches": ((int, float), "a batch count or a fraction, e.g. 10 or 0.25"),
    "val_check_interval": ((int, float), "a batch count or a fraction of an epoch"),
    "gradient_clip_val": ((int, float), "a number"),
    "fast_dev_run": ((bool, int), "true or a number of batches"),
    "devices": ((int, str, list), "a count, a list of ids, or 'auto'"),
    "precision": ((int, str), "one of 32-true, 16-mixed, bf16-mixed, 64-true"),
}


def _is_instance(value, types) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # YAML's true is not an epoch count
    return isinstance(value, tuple(list if t is list else t for t in types)) or (
        list in types and hasattr(value, "__iter__") and not isinstance(value, (str, bytes)))


def _check_trainer(trainer: DictConfig) -> None:
    import lightning

    valid = [p for p in inspect.signature(lightning.Trainer.__init__).parameters if p != "self"]
    for key in trainer:
        if key in _TRAINER_OWNED:
            raise FmbError(f"trainer.{key} is set by fmb, not the config ({_TRAINER_OWNED[key]})")
        if key not in valid:
            raise FmbError(f"unknown config key 'trainer.{key}' (not a lightning.Trainer argument)"
                           f"{nearest(key, valid)}")
    for key, value in trainer.items():
        expected = _TRAINER_TYPES.get(key)
        if expected and value is not None and not _is_instance(value, expected[0]):
            raise FmbError(f"wrong type for 'trainer.{key}': {value!r}; expected {expected[1]}")
    strategy = trainer.get("strategy")
    known = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "deepspeed", "fsdp", "single_device",
             "ddp_find_unused_parameters_true")
    if isinstance(strategy, str) and strategy not in known:
        from lightning.pytorch.strategies import StrategyRegistry
        if strategy not in StrategyRegistry.available_strategies():
            raise FmbError(f"unknown trainer.strategy='{strategy}'; expected one of auto, ddp, ddp_spawn, fsdp, "
                           f"deepspeed{nearest(strategy, list(StrategyRegistry.available_strategies()))}")


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg))
