"""How many DataLoader worker processes `data.num_workers=auto` starts.

On CUDA the loader is the bound (docs/benchmarks.md: one H200 training V2-S wants 20–43 cores of
JPEG decoding), so each GPU's workers get that GPU's share of the cores, less one for its
training process. On CPU the workers compete with the training threads for the same cores,
so two (the setting fmb's CPU figures were measured with) and never more than the cores.
"""
from __future__ import annotations

from fmb.utils import cpu_cores

MAX_WORKERS = 32  # each holds prefetched batches; past this, memory grows for little gain


def auto_workers(cuda: bool, devices_per_node: int = 1, cores: int | None = None) -> tuple[int, str]:
    """(workers per training process, why)."""
    cores = cores or cpu_cores()
    if cuda:
        share = cores // max(1, devices_per_node)
        workers = max(1, min(MAX_WORKERS, share - 1))
        return workers, f"CUDA: {cores} cores / {devices_per_node} device(s), one left to the training process"
    workers = min(2, cores)
    return workers, f"CPU: workers share the {cores} cores with training"
