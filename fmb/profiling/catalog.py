"""The variant table behind `fmb models`: params, GMACs at eval size, placement, sizes."""
from __future__ import annotations

import torch

from fmb.models import VARIANTS, create_model, get_variant
from fmb.profiling.flops import count_macs, count_params


def describe_variant(name: str, num_classes: int = 1000) -> dict:
    variant = get_variant(name)
    with torch.device("meta"):  # shapes only: the whole table costs about a second
        model = create_model(name, num_classes=num_classes)
    return {
        "name": name,
        "family": variant.family,
        "params": count_params(model),
        "gmacs": round(count_macs(model, variant.eval_size) / 1e9, 3),
        "placement": variant.placement,
        "train_size": variant.train_size,
        "eval_size": variant.eval_size,
        "drop_rate": variant.drop_rate,
    }


def describe_variants(names=None) -> list[dict]:
    return [describe_variant(n) for n in (names or list(VARIANTS))]
