"""The numbers `fmb models` prints, without building sixteen networks: params and GMACs of each
variant as built by `create_model(name)` (1000 classes, GMACs at its eval size, counted by
fmb/profiling/measure.py). tests/test_models_pretrained.py rebuilds every variant and checks
both columns against a fresh count, so a change to the architecture cannot leave them stale.
Plain data and the stage specs only: no torch import, the command prints at once.
"""
from __future__ import annotations

from fmb.models.specs import VARIANTS

# name: (parameters, GMACs at the variant's eval size), num_classes=1000
SIZES: dict[str, tuple[int, float]] = {
    "efficientnetv2_s": (21458488, 8.366),
    "efficientnetv2_m": (54139356, 24.582),
    "efficientnetv2_l": (118515272, 56.08),
    "efficientnetv2_xl": (208119808, 93.353),
    "efficientnetv2_b0": (7139704, 0.718),
    "efficientnetv2_b1": (8141052, 1.197),
    "efficientnetv2_b2": (10096086, 1.698),
    "efficientnetv2_b3": (14358406, 3.011),
    "efficientnet_b0": (5288548, 0.386),
    "efficientnet_b1": (7794184, 0.687),
    "efficientnet_b2": (9109994, 0.994),
    "efficientnet_b3": (12233232, 1.827),
    "efficientnet_b4": (19341616, 4.394),
    "efficientnet_b5": (30389784, 10.266),
    "efficientnet_b6": (43040704, 19.068),
    "efficientnet_b7": (66347960, 37.746),
}


def describe_variants(names=None) -> list[dict]:
    """One row per variant (all by default): the `fmb models` table and its JSON."""
    rows = []
    for name in names or list(VARIANTS):
        variant = VARIANTS[name]
        params, gmacs = SIZES[name]
        rows.append({"name": name, "family": variant.family, "params": params, "gmacs": gmacs,
                     "placement": variant.placement, "train_size": variant.train_size,
                     "eval_size": variant.eval_size, "drop_rate": variant.drop_rate})
    return rows


def describe_pretrained(names=None) -> list[dict]:
    """One row per published weights file fmb knows (fmb/models/published.py), each variant's default first."""
    from fmb.models.published import PUBLISHED

    rows = []
    for name in names or list(VARIANTS):
        for i, p in enumerate(PUBLISHED[name]):
            rows.append({"variant": name, "spec": p.spec, "default": i == 0, "trained_on": p.trained_on,
                         "padding": p.padding, "train_size": p.train_size, "eval_size": p.eval_size,
                         "crop_ratio": round(p.crop_ratio, 4), "interpolation": p.interpolation,
                         "mean": list(p.mean), "std": list(p.std)})
    return rows
