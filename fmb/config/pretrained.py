"""`model.pretrained`: what the weights need, written into the run's config.

Published weights come with their padding (TF "same" for TensorFlow-trained ones), BatchNorm
eps/momentum, mean/std, interpolation, eval crop and image sizes (fmb/models/pretrained.py
reads them from the Hub repo's config.json, torchvision's weights enum or fmb's table). Each
fills its config key unless the user set that key (in a YAML file or an override): then the
user's value stays, with a warning where it contradicts the weights. The sizes come as a
pair, and only when neither data.image_size nor data.eval_image_size was set. `true` is
written as the weights it stands for, so config.yaml says what was loaded. A local file says
nothing of its preprocessing: its BatchNorm origin is still told by its keys at load.
"""
from __future__ import annotations

import warnings

from omegaconf import DictConfig, OmegaConf

from fmb.errors import FmbError

SIZES = ("data.image_size", "data.eval_image_size")


def set_keys(node, prefix: str = "") -> set[str]:
    """Dotted keys a YAML file or overrides set (a section swapped in by `data=NAME` counts)."""
    keys = set()
    items = node.items() if isinstance(node, (dict, DictConfig)) else ()
    for key, value in items:
        dotted = f"{prefix}{key}"
        keys.add(dotted)
        if isinstance(value, (dict, DictConfig)) and key != "stage_overrides":
            keys |= set_keys(value, dotted + ".")
    return keys


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(abs(float(x) - float(y)) < 1e-9 for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) < 1e-9
    return a == b


def weights_needs(pretrained, variant: str, variant_is_set: bool) -> tuple[object, dict]:
    """(the source, {dotted key: the value the weights need}) for `model.pretrained`."""
    from fmb.models.pretrained import resolve
    from fmb.models.specs import get_variant
    from fmb.models.weights import Origin

    source = resolve(pretrained, variant)
    if source.kind == "file":
        return source, {}
    if variant_is_set and source.variant != variant:
        raise FmbError(f"model.pretrained={source.spec} holds {source.variant} weights, but model.variant={variant}; "
                       f"expected model.variant={source.variant} (or leave it unset), or weights for {variant} "
                       "(`fmb models --pretrained`)")
    origin = Origin(source.origin, get_variant(source.variant).family, source.variant)
    needs = {"model.variant": source.variant, "model.padding": source.padding, "model.bn_eps": origin.bn_eps,
             "model.bn_momentum": origin.bn_momentum}
    needs.update({f"data.{key}": value for key, value in source.preprocessing.items()})
    return source, needs


def apply_pretrained(cfg: DictConfig, explicit: set[str]) -> DictConfig:
    """Fill the keys the weights decide into `cfg` (merged, not yet typed); `explicit` = keys the user set."""
    pretrained = cfg.model.pretrained
    if pretrained is None or pretrained is False or (isinstance(pretrained, str) and not pretrained.strip()):
        return cfg
    source, needs = weights_needs(pretrained, cfg.model.variant,
                                  "model.variant" in explicit and pretrained is not True)
    cfg.model.pretrained = source.spec
    sizes_set = [k for k in SIZES if k in explicit]
    for key, value in needs.items():
        section, name = key.split(".")
        current = cfg[section][name]
        current = OmegaConf.to_container(current) if OmegaConf.is_list(current) else current
        if key in SIZES and sizes_set:
            if key in explicit and not _same(current, value):
                _warn(key, current, value, source.spec)
            continue
        if key in explicit:
            if not _same(current, value):
                _warn(key, current, value, source.spec)
            continue
        cfg[section][name] = value
    return cfg


def _warn(key: str, current, value, spec: str) -> None:
    warnings.warn(f"{key}={current} kept as set, but {spec} was trained with {value}", UserWarning, stacklevel=4)
