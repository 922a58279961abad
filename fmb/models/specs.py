"""EfficientNet V1/V2 as data: one record per stage, readable against the papers' tables.

Stages are numbered from 1 as in the papers (stage 0 is the stem). Channel counts and
repeats are the *base* values; `scale_stages` applies a variant's width/depth multipliers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from fmb.errors import FmbError, choice_error

BLOCK_LETTERS = {"F": "fused", "M": "mbconv"}
STAGE_FIELDS = ("block", "repeats", "kernel_size", "stride", "expand_ratio", "out_channels", "se_ratio")


@dataclass(frozen=True)
class StageSpec:
    block: str  # "fused" | "mbconv"
    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: float
    out_channels: int
    se_ratio: float


@dataclass(frozen=True)
class VariantSpec:
    name: str
    family: str  # "v1" | "v2"
    stages: tuple[StageSpec, ...]
    stem_channels: int
    head_channels: int
    width_mult: float
    depth_mult: float
    train_size: int
    eval_size: int
    drop_rate: float
    drop_path_rate: float = 0.2
    notes: str = field(default="", compare=False)

    @property
    def placement(self) -> str:
        return placement_of(self.stages)


def _s(block, repeats, k, s, e, out, se):
    return StageSpec({"f": "fused", "m": "mbconv"}[block], repeats, k, s, e, out, se)


# EfficientNetV2 (Tan & Le 2021, Table 4 and the official effnetv2_configs.py).
V2_S = (
    _s("f", 2, 3, 1, 1, 24, 0.0),
    _s("f", 4, 3, 2, 4, 48, 0.0),
    _s("f", 4, 3, 2, 4, 64, 0.0),
    _s("m", 6, 3, 2, 4, 128, 0.25),
    _s("m", 9, 3, 1, 6, 160, 0.25),
    _s("m", 15, 3, 2, 6, 256, 0.25),
)
V2_M = (
    _s("f", 3, 3, 1, 1, 24, 0.0),
    _s("f", 5, 3, 2, 4, 48, 0.0),
    _s("f", 5, 3, 2, 4, 80, 0.0),
    _s("m", 7, 3, 2, 4, 160, 0.25),
    _s("m", 14, 3, 1, 6, 176, 0.25),
    _s("m", 18, 3, 2, 6, 304, 0.25),
    _s("m", 5, 3, 1, 6, 512, 0.25),
)
V2_L = (
    _s("f", 4, 3, 1, 1, 32, 0.0),
    _s("f", 7, 3, 2, 4, 64, 0.0),
    _s("f", 7, 3, 2, 4, 96, 0.0),
    _s("m", 10, 3, 2, 4, 192, 0.25),
    _s("m", 19, 3, 1, 6, 224, 0.25),
    _s("m", 25, 3, 2, 6, 384, 0.25),
    _s("m", 7, 3, 1, 6, 640, 0.25),
)
V2_XL = (
    _s("f", 4, 3, 1, 1, 32, 0.0),
    _s("f", 8, 3, 2, 4, 64, 0.0),
    _s("f", 8, 3, 2, 4, 96, 0.0),
    _s("m", 16, 3, 2, 4, 192, 0.25),
    _s("m", 24, 3, 1, 6, 256, 0.25),
    _s("m", 32, 3, 2, 6, 512, 0.25),
    _s("m", 8, 3, 1, 6, 640, 0.25),
)
# The B-series base network ("efficientnetv2-base" in the official code), scaled like V1.
V2_BASE = (
    _s("f", 1, 3, 1, 1, 16, 0.0),
    _s("f", 2, 3, 2, 4, 32, 0.0),
    _s("f", 2, 3, 2, 4, 48, 0.0),
    _s("m", 3, 3, 2, 4, 96, 0.25),
    _s("m", 5, 3, 1, 6, 112, 0.25),
    _s("m", 8, 3, 2, 6, 192, 0.25),
)
# EfficientNet-B0 (Tan & Le 2019, Table 1); B1-B7 scale it.
V1_BASE = (
    _s("m", 1, 3, 1, 1, 16, 0.25),
    _s("m", 2, 3, 2, 6, 24, 0.25),
    _s("m", 2, 5, 2, 6, 40, 0.25),
    _s("m", 3, 3, 2, 6, 80, 0.25),
    _s("m", 3, 5, 1, 6, 112, 0.25),
    _s("m", 4, 5, 2, 6, 192, 0.25),
    _s("m", 1, 3, 1, 6, 320, 0.25),
)


def _v2(name, stages, stem, width, depth, train, eval_, drop):
    return VariantSpec(f"efficientnetv2_{name}", "v2", stages, stem, 1280, width, depth, train, eval_, drop)


def _v1(name, width, depth, size, drop):
    return VariantSpec(f"efficientnet_{name}", "v1", V1_BASE, 32, 1280, width, depth, size, size, drop)


# (train size, eval size, dropout) from the official configs; V1 trains and evaluates at one size.
VARIANTS: dict[str, VariantSpec] = {
    v.name: v
    for v in (
        _v2("s", V2_S, 24, 1.0, 1.0, 300, 384, 0.2),
        _v2("m", V2_M, 24, 1.0, 1.0, 384, 480, 0.3),
        _v2("l", V2_L, 32, 1.0, 1.0, 384, 480, 0.4),
        _v2("xl", V2_XL, 32, 1.0, 1.0, 384, 512, 0.4),
        _v2("b0", V2_BASE, 32, 1.0, 1.0, 192, 224, 0.2),
        _v2("b1", V2_BASE, 32, 1.0, 1.1, 192, 240, 0.2),
        _v2("b2", V2_BASE, 32, 1.1, 1.2, 208, 260, 0.3),
        _v2("b3", V2_BASE, 32, 1.2, 1.4, 240, 300, 0.3),
        _v1("b0", 1.0, 1.0, 224, 0.2),
        _v1("b1", 1.0, 1.1, 240, 0.2),
        _v1("b2", 1.1, 1.2, 260, 0.3),
        _v1("b3", 1.2, 1.4, 300, 0.3),
        _v1("b4", 1.4, 1.8, 380, 0.4),
        _v1("b5", 1.6, 2.2, 456, 0.4),
        _v1("b6", 1.8, 2.6, 528, 0.5),
        _v1("b7", 2.0, 3.1, 600, 0.5),
    )
}


def get_variant(name: str) -> VariantSpec:
    if name not in VARIANTS:
        raise choice_error("model variant", name, VARIANTS)
    return VARIANTS[name]


def round_channels(channels: float, multiplier: float, family: str = "v1", divisor: int = 8) -> int:
    """Official rounding: nearest multiple of `divisor`. V1 also never goes more than 10%
    below the target; the official V2 code dropped that rule (it shows in V2-B3's stage 1)."""
    target = channels * multiplier
    rounded = max(divisor, int(target + divisor / 2) // divisor * divisor)
    if family == "v1" and rounded < 0.9 * target:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, multiplier: float) -> int:
    return int(math.ceil(repeats * multiplier))


def placement_of(stages) -> str:
    return "".join("F" if s.block == "fused" else "M" for s in stages)


def apply_placement(stages: tuple[StageSpec, ...], blocks: str | None) -> tuple[StageSpec, ...]:
    """Swap each stage's block type per the placement string, keeping its other fields."""
    if blocks is None:
        return stages
    text = str(blocks).strip().upper()
    n = len(stages)
    if len(text) != n or any(c not in BLOCK_LETTERS for c in text):
        raise FmbError(
            f"invalid block placement '{blocks}': expected {n} letters, one per stage, each F "
            f"(Fused-MBConv) or M (MBConv), e.g. '{placement_of(stages)}'"
        )
    return tuple(replace(s, block=BLOCK_LETTERS[c]) for s, c in zip(stages, text))


def _check_value(stage: int, key: str, value):
    def bad(expected):
        return FmbError(f"invalid stage {stage} override {key}={value!r}: expected {expected}")

    if key == "block":
        aliases = {"f": "fused", "fused": "fused", "m": "mbconv", "mbconv": "mbconv"}
        if str(value).lower() not in aliases:
            raise bad("'fused' or 'mbconv'")
        return aliases[str(value).lower()]
    if key in ("repeats", "kernel_size", "stride", "out_channels"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise bad("an integer")
        value = int(value)
        if key == "repeats" and value < 1:
            raise bad("repeats >= 1")
        if key == "kernel_size" and (value < 1 or value % 2 == 0):
            raise bad("an odd kernel size such as 3 or 5")
        if key == "stride" and value not in (1, 2):
            raise bad("stride 1 or 2")
        if key == "out_channels" and value < 1:
            raise bad("out_channels >= 1")
        return value
    if key == "expand_ratio":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1:
            raise bad("a number >= 1")
        return value
    if key == "se_ratio":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise bad("a number in [0, 1)")
        return float(value)
    raise AssertionError(key)


def apply_overrides(stages: tuple[StageSpec, ...], overrides) -> tuple[StageSpec, ...]:
    """Apply `{stage_number: {field: value}}` (stages numbered from 1) on top of the specs."""
    if not overrides:
        return stages
    stages = list(stages)
    for stage_key, changes in dict(overrides).items():
        try:
            number = int(str(stage_key).removeprefix("stage").strip("._"))
        except ValueError:
            number = -1
        if not 1 <= number <= len(stages):
            raise FmbError(
                f"stage override names stage '{stage_key}', but this model has stages "
                f"1..{len(stages)} (stage 0 is the stem and cannot be overridden)"
            )
        if not hasattr(changes, "items"):
            raise FmbError(f"stage {number} override must be a mapping of field: value, got {changes!r}")
        updates = {}
        for key, value in changes.items():
            if key not in STAGE_FIELDS:
                raise choice_error(f"stage field in override of stage {number}", key, STAGE_FIELDS)
            updates[key] = _check_value(number, key, value)
        stages[number - 1] = replace(stages[number - 1], **updates)
    return tuple(stages)


def scale_stages(stages, width: float, depth: float, family: str) -> tuple[StageSpec, ...]:
    return tuple(
        replace(s, out_channels=round_channels(s.out_channels, width, family),
                repeats=round_repeats(s.repeats, depth))
        for s in stages
    )


def _check_mult(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 16:
        raise FmbError(f"invalid {name}={value!r}: expected a positive number such as 0.25 or 1.0")
    return float(value)


def build_stages(name: str, blocks=None, stage_overrides=None, width_mult=None, depth_mult=None):
    """The variant's scaled stage specs after placement and overrides (no module built)."""
    variant = get_variant(name)
    width = variant.width_mult * (_check_mult("width_mult", width_mult) if width_mult is not None else 1.0)
    depth = variant.depth_mult * (_check_mult("depth_mult", depth_mult) if depth_mult is not None else 1.0)
    stages = apply_overrides(apply_placement(variant.stages, blocks), stage_overrides)
    return variant, scale_stages(stages, width, depth, variant.family), width
