"""The machine a command runs on: which accelerator, which precision words, what the hardware has.

The bottom floor under training, evaluation, prediction and profiling: every "auto → CUDA,
else MPS, else CPU" goes through `accelerator_type`, every precision word through
`precision_name`, and every hardware fact `auto` decides from is probed here, once
(`machine()`), so the decisions in fmb/training/auto.py are plain functions of these facts.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fmb.compat.torch_cpu import cpu_native_bf16
from fmb.errors import FmbError
from fmb.utils import atomic_write_text, cpu_cores, cpu_model, others_busy_cores

# One precision vocabulary for every command; Lightning's names are accepted as synonyms.
PRECISIONS = ("fp32", "bf16", "fp16")
_SYNONYMS = {"fp32": "fp32", "32": "fp32", "32-true": "fp32", "bf16": "bf16", "bf16-mixed": "bf16",
             "fp16": "fp16", "16": "fp16", "16-mixed": "fp16"}
LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def precision_name(value, key: str = "precision") -> str:
    """fp32 | bf16 | fp16 for any of fmb's or Lightning's precision words."""
    name = _SYNONYMS.get(str(value).strip().lower())
    if name is None:
        raise FmbError(f"{key}={value} is not a precision; expected one of {', '.join(PRECISIONS)} "
                       "(or Lightning's 32-true, bf16-mixed, 16-mixed)")
    return name


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def accelerator_type(name="auto", machine: Machine | None = None) -> str:
    """cuda | mps | cpu (or another Lightning accelerator name as given) for `auto`, `gpu` or a name;
    `machine`'s facts where given (auto decides from them), else this process's torch."""
    name = str(name).lower()
    cuda = machine.cuda if machine is not None else cuda_available()
    mps = machine.mps if machine is not None else mps_available()
    if name == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if name == "gpu":
        return "mps" if mps and not cuda else "cuda"
    return name


@dataclass(frozen=True)
class Machine:
    """What `auto` decides from. Tests build one by hand; `machine()` probes this one."""
    cuda: bool = False
    cuda_bf16: bool = False
    cuda_count: int = 0
    mps: bool = False
    cpu_native_bf16: bool = False  # AVX512-BF16 or AMX: bf16 in hardware, not emulated through fp32
    cores: int = 1
    cpu: str = "cpu"

    def busy_cores(self) -> float | None:
        """Cores other processes keep busy now (a 0.3 s sample; None without /proc)."""
        return others_busy_cores()

    def load_average(self) -> float:
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0


def machine() -> Machine:
    cuda = cuda_available()
    return Machine(cuda=cuda, cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
                   cuda_count=torch.cuda.device_count() if cuda else 0, mps=mps_available(),
                   cpu_native_bf16=cpu_native_bf16(), cores=cpu_cores(), cpu=cpu_model())


# ---- measuring a training step both ways, cached per machine ------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get("FMB_CACHE") or Path.home() / ".cache" / "fmb")


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def step_ms(step, iters: int = 3) -> float:
    """Median ms of `step()` after one untimed call (the first builds kernels)."""
    step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return _median(times) * 1e3


def cached_measurement(key: str, measure) -> dict:
    """`measure()` (a dict of figures) once per key, kept in $FMB_CACHE/measurements.json."""
    path = cache_dir() / "measurements.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        with torch.random.fork_rng():  # a probe must not move the run's random stream
            cache[key] = measure()
        try:
            atomic_write_text(path, json.dumps(cache, indent=1))
        except FmbError:
            pass  # a read-only home only costs the measurement next time
    return cache[key]
