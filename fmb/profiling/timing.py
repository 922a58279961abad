"""Timing the way timm's benchmark does: warm-up, then N individually timed, synchronized runs."""
from __future__ import annotations

import statistics
import time


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def summarize(times_ms: list[float]) -> dict:
    """Median and spread (quartiles, min, max) of per-iteration times in ms."""
    q = statistics.quantiles(times_ms, n=4, method="inclusive") if len(times_ms) > 1 else [times_ms[0]] * 3
    return {"median_ms": statistics.median(times_ms), "p25_ms": q[0], "p75_ms": q[2],
            "min_ms": min(times_ms), "max_ms": max(times_ms), "iters": len(times_ms)}


def measure(fn, *, device: str = "cpu", warmup: int = 3, iters: int = 10) -> dict:
    """Run `fn` `warmup` times untimed, then `iters` times each timed alone; return `summarize`."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(max(1, iters)):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return summarize(times)
