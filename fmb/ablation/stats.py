"""Is a placement's top-1 difference from the baseline larger than seed noise?

Paired over seeds: trial p-sN and the baseline's trial with the same seed share the
initialisation seed, data order and (data.split_seed) the validation images, so the
per-seed differences d_s remove what the seeds have in common. The 95 % interval is
mean(d) ± t(0.975, n-1) · sd(d) / sqrt(n) (Student's t); a placement differs significantly
when that interval excludes 0.

t quantiles without scipy: for integer degrees of freedom the two-sided probability
P(|T| < t) has a closed form (Abramowitz & Stegun 26.7.3/26.7.4), inverted here by bisection.
"""
from __future__ import annotations

import math
import statistics


def t_two_sided_probability(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df >= 1."""
    if df < 1 or int(df) != df:
        raise ValueError(f"degrees of freedom must be a positive integer, got {df}")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        total, term = 0.0, math.cos(theta)  # cosθ + (2/3)cos³θ + (2·4)/(3·5)cos⁵θ + ...
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c2 * (2 * k) / (2 * k + 1)
        return min(1.0, 2 / math.pi * (theta + s * total)) if df > 1 else 2 * theta / math.pi
    total, term = 0.0, 1.0  # 1 + (1/2)cos²θ + (1·3)/(2·4)cos⁴θ + ...
    for k in range(1, df // 2 + 1):
        total += term
        term *= c2 * (2 * k - 1) / (2 * k)
    return min(1.0, s * total)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t, e.g. t_quantile(0.975, 4) = 2.776."""
    if not 0.5 < p < 1:
        raise ValueError(f"p must be in (0.5, 1), got {p}")
    target, lo, hi = 2 * p - 1, 0.0, 1.0
    while t_two_sided_probability(hi, df) < target:
        hi *= 2
    for _ in range(200):  # bisection: monotone, and 200 halvings reach float precision
        mid = (lo + hi) / 2
        if t_two_sided_probability(mid, df) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def paired_difference(values: dict, baseline: dict, level: float = 0.95) -> dict:
    """values, baseline: seed → top-1. Mean difference over the seeds both have, its CI and verdict."""
    seeds = sorted(set(values) & set(baseline))
    diffs = [values[s] - baseline[s] for s in seeds]
    out = {"n_pairs": len(diffs), "diff_mean": statistics.fmean(diffs) if diffs else None,
           "diff_ci_low": None, "diff_ci_high": None, "significant": None}
    if len(diffs) >= 2:
        sd = statistics.stdev(diffs)
        half = t_quantile(0.5 + level / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
        out.update(diff_ci_low=out["diff_mean"] - half, diff_ci_high=out["diff_mean"] + half)
        out["significant"] = out["diff_ci_low"] > 0 or out["diff_ci_high"] < 0
    return out
