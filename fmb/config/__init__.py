"""Load a run configuration: schema defaults ← YAML files in order ← `key=value` overrides.

The schema (fmb/config/schema.py) holds every default and check. Files patch it;
`data=NAME` replaces the whole `data` section with configs/data/NAME.yaml. A file is a
path or a preset name (`-c digits_v2s` finds configs/experiment/digits_v2s.yaml). With no
file at all, `fmb train` runs the front door, configs/experiment/digits_v2s.yaml.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError, ConfigKeyError, ConfigTypeError, OmegaConfBaseException, ValidationError,
)

from fmb.config.schema import (
    AugConfig, DataConfig, EmaConfig, ModelConfig, OptimConfig, ProgressiveConfig, RunConfig, SchedConfig,
    TrainConfig,
)
from fmb.config.checks import check_file_size, check_no_env_lookup, check_yaml_size
from fmb.errors import FmbError, choice_error, nearest

__all__ = ["TrainConfig", "ModelConfig", "DataConfig", "AugConfig", "OptimConfig", "SchedConfig",
           "ProgressiveConfig", "EmaConfig", "RunConfig", "load_config", "from_dict", "to_dict", "to_yaml",
           "read_yaml", "find_preset", "parse_overrides", "CONFIG_DIR", "FRONT_DOOR"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # fmb/configs, shipped in the wheel
FRONT_DOOR = "experiment/digits_v2s"
GROUPS = ("data",)  # `data=NAME` on the command line swaps the whole section
SECTIONS = {"model": "model.variant=efficientnetv2_m", "aug": "aug.mixup_alpha=0.2", "optim": "optim.lr=0.01",
            "sched": "sched.name=cosine", "progressive": "progressive.enabled=true", "ema": "ema.enabled=true",
            "trainer": "trainer.max_epochs=10", "run": "run.seed=1"}
MOVED = {("aug", "hflip"): "data", ("aug", "crop_scale_min"): "data"}  # where older run configs kept these keys


def find_preset(name: str | Path) -> Path:
    """A YAML path as given, or a preset under configs/: `digits_v2s`, `experiment/digits_v2s`,
    or `configs/experiment/digits_v2s.yaml` from any directory."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    stem = str(name).removeprefix("configs/").removesuffix(".yaml")
    hits = [p for p in (CONFIG_DIR / f"{stem}.yaml", *CONFIG_DIR.glob(f"*/{stem}.yaml")) if p.is_file()]
    if hits:
        return hits[0]
    presets = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.glob("*/*.yaml"))
    beside = [p.name for p in path.parent.glob("*.yaml")] if path.parent.is_dir() else []
    hint = nearest(path.name, beside) or nearest(stem, presets + [Path(p).name for p in presets])
    raise FmbError(f"config file not found: {name}; expected a YAML path or a preset name such as "
                   f"{FRONT_DOOR}{hint}")


def read_yaml(path: str | Path) -> DictConfig:
    """A YAML mapping as a DictConfig, with one-line errors naming the file (and line)."""
    path = find_preset(path)
    if path.is_dir():
        raise FmbError(f"config path {path} is a directory; expected a YAML file such as "
                       f"configs/{FRONT_DOOR}.yaml")
    try:
        check_file_size(path.stat().st_size, str(path))
        text = path.read_text(encoding="utf-8")
        loader = yaml.SafeLoader(text)
        try:  # compose first: an alias is then one shared node, so its expanded size can be counted
            node = loader.get_single_node()
            check_yaml_size(node, f"config file {path}")
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except RecursionError:
        raise FmbError(f"config file {path} is nested too deeply; expected a YAML config of plain sections") from None
    except UnicodeDecodeError:
        raise FmbError(f"config file {path} is not UTF-8 text; expected a YAML file") from None
    except OSError as exc:
        raise FmbError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FmbError(f"malformed YAML in {path}{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FmbError(f"config file {path} must hold a mapping of sections (model:, data:, ...), "
                       f"got {type(data).__name__}")
    check_no_env_lookup(data, str(path))
    return OmegaConf.create(_migrate(data))


def _migrate(data: dict) -> dict:
    """Move keys that older run configs kept in another section, so those run directories still resume."""
    for (section, key), target in MOVED.items():
        old = data.get(section)
        if isinstance(old, dict) and key in old:
            data.setdefault(target, {}).setdefault(key, old.pop(key))
    return data


def parse_overrides(items) -> tuple[list[tuple[str, str]], DictConfig]:
    """`key=value` items → (group selections such as ('data', 'cifar10'), nested overrides)."""
    groups, dotted = [], []
    for text in items:
        key, sep, value = str(text).partition("=")
        if not sep or not key.strip():
            raise FmbError(f"cannot parse override '{text}'; expected key=value, e.g. model.variant=efficientnetv2_m")
        if not value.strip():
            raise FmbError(f"override '{text}' has no value; expected {key.strip()}=VALUE, or {key.strip()}=null "
                           "for the default")
        check_no_env_lookup(value, f"override '{text}'", key.strip())
        try:  # OmegaConf reads the value as YAML: one flow value can hold an alias bomb too
            node = yaml.compose(value, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            node = None  # OmegaConf says what is malformed
        check_yaml_size(node, f"override '{key.strip()}=...'")
        if key.strip() in GROUPS:
            groups.append((key.strip(), value.strip()))
        else:
            dotted.append(f"{key.strip()}={value}")
    try:
        nested = OmegaConf.to_container(OmegaConf.from_dotlist(dotted))
    except OmegaConfBaseException as exc:
        raise FmbError(f"cannot parse overrides {' '.join(dotted)}: {str(exc).splitlines()[0]}") from None
    for section, value in nested.items():  # `model=5`: a section is a mapping of keys, not one value
        if section in SECTIONS and not isinstance(value, dict):
            raise FmbError(f"override {section}={value} sets a whole section to one value; expected "
                           f"{section}.KEY=VALUE, e.g. {SECTIONS[section]}")
    stages = (nested.get("model") or {}).get("stage_overrides")
    if isinstance(stages, dict):  # `model.stage_overrides.4.k=v` names stage 4, as YAML's {4: ...} does
        nested["model"]["stage_overrides"] = {int(k) if str(k).isdigit() else k: v for k, v in stages.items()}
    return groups, OmegaConf.create(_migrate(nested))


def _schema_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, DictConfig) and key != "trainer":
            keys.extend(_schema_keys(value, f"{prefix}{key}."))
    return keys


def _schema_type(full_key: str) -> str:
    obj: Any = TrainConfig
    for part in full_key.split("."):
        hints = typing.get_type_hints(obj) if isinstance(obj, type) else {}
        if part not in hints:
            return ""
        obj = hints[part]
    return str(obj).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _literal_choices(full_key: str) -> list[str] | None:
    obj: Any = TrainConfig
    for part in full_key.split("."):
        hints = typing.get_type_hints(obj) if isinstance(obj, type) else {}
        if part not in hints:
            return None
        obj = hints[part]
    return [str(a) for a in typing.get_args(obj)] if typing.get_origin(obj) is typing.Literal else None


@functools.cache
def _schema_built_once() -> DictConfig:
    return OmegaConf.structured(TrainConfig)


def schema() -> DictConfig:
    """The schema's defaults as a DictConfig of one's own. Building one reads every section's type
    hints (~20 ms); a copy of the one built per process costs a fifth of that, and a command
    builds several (each file, each saved config it reads)."""
    return copy.deepcopy(_schema_built_once())


def _merge(base: DictConfig, other, origin: str) -> DictConfig:
    """`other` merged into `base`; both are spent (OmegaConf.unsafe_merge: no copies, which a
    command's several merges would otherwise spend most of their time on). Callers pass a base of
    their own (`schema()`) and read nothing from `other` afterwards."""
    try:
        return OmegaConf.unsafe_merge(base, other)
    except (ConfigKeyError, ConfigAttributeError) as exc:
        key = exc.full_key or str(getattr(exc, "key", ""))
        valid = _schema_keys(schema())
        raise FmbError(f"unknown config key '{key}' in {origin}{nearest(key, valid)}") from None
    except (ValidationError, ConfigTypeError) as exc:
        choices = _literal_choices(exc.full_key) if exc.full_key else None
        if choices:
            raise choice_error(exc.full_key, getattr(exc, "value", "?"), choices) from None
        expected = _schema_type(exc.full_key) if exc.full_key else ""
        detail = (exc.msg or str(exc) or type(exc).__name__).splitlines()[0]
        raise FmbError(f"wrong type for '{exc.full_key or 'a section'}' in {origin}: {detail}"
                       f"{'; expected ' + expected if expected else ''}"
                       " (sections such as model: hold a mapping of keys)") from None
    except OmegaConfBaseException as exc:
        raise FmbError(f"invalid config in {origin}: {str(exc).splitlines()[0]}") from None
    except TypeError as exc:  # e.g. a list where the schema holds a mapping (model.stage_overrides=[1,2])
        raise FmbError(f"wrong kind of value in {origin}: {str(exc).splitlines()[0]}; expected a mapping where "
                       "the schema has one, e.g. model.stage_overrides={4: {se_ratio: 0.0}}") from None


def _select_group(cfg: DictConfig, group: str, name: str) -> DictConfig:
    """Replace section `group` with the schema's defaults and configs/<group>/<name>.yaml."""
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        raise FmbError(f"unknown {group} preset '{name}'; expected one of {', '.join(names)}{nearest(name, names)}")
    preset = read_yaml(path)
    if set(preset) - {group}:
        raise FmbError(f"{path} is a {group} preset and may only hold a {group}: section")
    fresh = schema()[group]
    cfg[group] = _merge(fresh, preset.get(group) or {}, str(path))
    return cfg


def load_config(files=(), overrides=(), *, front_door: bool = False) -> TrainConfig:
    """Schema ← each YAML file in order (the front door when `front_door` and none) ← overrides."""
    from fmb.config.pretrained import apply_pretrained, set_keys

    cfg = schema()
    files = list(files) or ([FRONT_DOOR] if front_door else [])
    explicit = set()  # keys the user set: pretrained weights fill only the others
    for file in files:
        text = read_yaml(file)
        explicit |= set_keys(OmegaConf.to_container(text, resolve=False))  # ${a.b} may name a key set later
        cfg = _merge(cfg, text, str(find_preset(file)))
    groups, nested = parse_overrides(overrides)
    for group, name in groups:
        cfg = _select_group(cfg, group, name)
        explicit |= set_keys(read_yaml(CONFIG_DIR / group / f"{name}.yaml"))
    explicit |= set_keys(OmegaConf.to_container(nested, resolve=False))
    cfg = _merge(cfg, nested, "overrides " + " ".join(map(str, overrides)))
    return OmegaConf.to_object(apply_pretrained(cfg, explicit))  # runs every section's checks


def from_dict(values: dict) -> TrainConfig:
    """A config saved as plain data (a checkpoint's hyperparameters, a run's config.yaml) → typed."""
    return OmegaConf.to_object(_merge(schema(), _migrate(dict(values)), "saved config"))


def to_dict(cfg) -> dict:
    """A config (a dataclass such as TrainConfig, or a DictConfig) as plain dicts and lists."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        # what OmegaConf.to_container(OmegaConf.structured(cfg)) gives, without building a DictConfig
        return _plain(dataclasses.asdict(cfg))
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def to_yaml(cfg) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
