"""`auto` settings: the fastest correct mode for the machine a run is on, decided once.

`trainer.precision`, `trainer.accelerator`, `model.channels_last` and `model.compile` accept
`auto` (the defaults); torch's CPU thread count is decided too (OMP_NUM_THREADS wins).
`decide(cfg)` turns each into a concrete value with a one-line reason; an explicit value is
kept as given ("explicit"). The run prints the decisions once at start and saves them in
summary.json under `auto`, and config.yaml holds the values that ran.

What decides, and why:
- accelerator: CUDA, else MPS, else CPU (what Lightning's `auto` picks; fmb needs to know it
  to choose the rest).
- precision: bf16-mixed on CUDA GPUs that support bf16 (Ampere and newer), 16-mixed on older
  CUDA GPUs (tensor cores, with Lightning's grad scaler); on a CPU bf16-mixed only when the
  CPU has native bf16 (AVX512-BF16 or AMX) *and* a small training step measures faster in
  bf16 than in fp32 here. Without native bf16 the CPU emulates it and is several times slower,
  so nothing is measured. The measurement is cached per CPU model and torch version under
  $FMB_CACHE (default ~/.cache/fmb).
- channels_last: on CUDA (cuDNN's NHWC kernels under mixed precision) and with bf16 on a CPU
  (oneDNN's bf16 convs are NHWC); off for fp32 on CPU and MPS.
- compile: torch.compile of the training forward on CUDA, for runs long enough to repay it
  (`COMPILE_MIN_STEPS`); off on CPU and MPS, and for short runs. Measured on an H200 (README,
  GPU): compiling V2-S's forward and backward took ~70 s, and on the digits front door (batch
  32, 32 px, launch-bound) the compiled step was 72 ms against 80 ms eager, so the 600-step
  run would have spent far more compiling than it saved. The step count is known once the
  data is loaded, so this decision is made then (`compile_`), after the others. With
  progressive learning the forward is compiled with dynamic shapes, so the image size changes
  at stage boundaries reuse one graph instead of recompiling per stage.
- data.num_workers: on CUDA each device's share of the cores less one (the loader is the bound
  there), on CPU 2 (the workers share the cores with training): fmb/data/workers.py.
- threads (CPU): the cores other processes leave free (see `threads`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fmb.data.workers import auto_workers
from fmb.utils import cpu_cores, cpu_model, others_busy_cores

AUTO = "auto"
# Training steps from which torch.compile pays on CUDA: ~70 s of compile at a saving of ~8 ms
# per step (launch-bound, measured on an H200) breaks even near 9k steps; larger images save more.
COMPILE_MIN_STEPS = 10_000


@dataclass
class Decision:
    value: Any
    reason: str
    requested: Any = AUTO

    def line(self, key: str) -> str:
        if self.requested != AUTO:
            return f"{key}={self.value} (explicit)"
        return f"{key}={self.value} (auto: {self.reason})"


# --- hardware facts (each a function, so tests can monkeypatch them) -------------------
def cuda_available() -> bool:
    return torch.cuda.is_available()


def cuda_bf16() -> bool:
    return cuda_available() and torch.cuda.is_bf16_supported()


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def cpu_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 arithmetic in hardware rather than emulated through fp32."""
    cpu = torch.cpu
    return any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def cache_dir() -> Path:
    return Path(os.environ.get("FMB_CACHE") or Path.home() / ".cache" / "fmb")


def _step_ms(bf16: bool, iters: int = 3) -> float:
    """Median ms of a small conv net's training step (convs, BN, SiLU, depthwise, like a V2 stage)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3, 2, 1), torch.nn.BatchNorm2d(32), torch.nn.SiLU(),
        torch.nn.Conv2d(32, 64, 3, 1, 1), torch.nn.BatchNorm2d(64), torch.nn.SiLU(),
        torch.nn.Conv2d(64, 64, 3, 1, 1, groups=64), torch.nn.BatchNorm2d(64), torch.nn.SiLU(),
        torch.nn.Conv2d(64, 64, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x = torch.randn(16, 3, 64, 64).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (16,))
    times = []
    for i in range(iters + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        if i:  # the first call builds kernels
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1e3


def cpu_bf16_faster() -> tuple[bool, str]:
    """Whether bf16 autocast trains faster than fp32 on this CPU, and why (cached)."""
    if not cpu_native_bf16():
        return False, "CPU has no native bf16 (no AVX512-BF16/AMX): emulated bf16 is slower than fp32"
    key = f"{cpu_model()}|torch {torch.__version__}|threads {torch.get_num_threads()}"
    path = cache_dir() / "cpu_bf16.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key not in cache:
        fp32, bf16 = [], []
        for _ in range(2):  # alternate, so load on a shared machine hits both
            fp32.append(_step_ms(False))
            bf16.append(_step_ms(True))
        cache[key] = {"fp32_ms": round(min(fp32), 2), "bf16_ms": round(min(bf16), 2)}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1))
            tmp.replace(path)
        except OSError:
            pass  # a read-only home only costs the measurement next time
    m = cache[key]
    faster = m["bf16_ms"] < 0.9 * m["fp32_ms"]  # a clear win only: bf16 also costs a little accuracy
    return faster, f"native bf16; measured step bf16 {m['bf16_ms']} ms vs fp32 {m['fp32_ms']} ms"


# --- decisions --------------------------------------------------------------------------
def accelerator(requested) -> Decision:
    if requested not in (None, AUTO):
        return Decision(requested, "explicit", requested)
    if cuda_available():
        return Decision("cuda", "CUDA GPU found")
    if mps_available():
        return Decision("mps", "Apple GPU found")
    return Decision("cpu", "no GPU found")


def device_type(accel) -> str:
    from fmb.training.distributed import _resolve_accelerator
    return _resolve_accelerator(accel)


def precision(requested, device: str) -> Decision:
    if requested not in (None, AUTO):
        return Decision(requested, "explicit", requested)
    if device == "cuda":
        if cuda_bf16():
            return Decision("bf16-mixed", "CUDA GPU with bf16")
        return Decision("16-mixed", "CUDA GPU without bf16: fp16 autocast with grad scaling")
    if device == "cpu":
        faster, why = cpu_bf16_faster()
        return Decision("bf16-mixed" if faster else "32-true", why)
    return Decision("32-true", f"{device}: fp32")


def channels_last(requested, device: str, prec: str) -> Decision:
    if requested != AUTO:
        return Decision(bool(requested), "explicit", requested)
    if device == "cuda":
        return Decision(True, "CUDA: NHWC convolution kernels")
    if device == "cpu" and str(prec).startswith("bf16"):
        return Decision(True, "CPU bf16: oneDNN's bf16 convolutions are NHWC")
    return Decision(False, f"{device} {prec}: NCHW is as fast or faster")


def compile_(requested, device: str, progressive: bool, train_steps: int | None) -> Decision:
    """`train_steps`: optimizer steps the run will take (None: not known, e.g. a stream or a
    module built outside `fmb train`)."""
    if requested != AUTO:
        return Decision(bool(requested), "explicit", requested)
    if device != "cuda":
        return Decision(False, f"{device}: compile time would be a large share of the run")
    if train_steps is None:
        return Decision(False, "CUDA, run length unknown: compile pays only on long runs")
    if train_steps < COMPILE_MIN_STEPS:
        return Decision(False, f"CUDA: {train_steps} training steps would not repay ~1 min of compile "
                               f"(from {COMPILE_MIN_STEPS} steps)")
    shapes = "dynamic shapes across progressive stages" if progressive else "static shapes"
    return Decision(True, f"CUDA: {train_steps} training steps repay the compile time ({shapes})")


def planned_steps(train_images: int | None, global_batch: int, accumulate: int, trainer_cfg) -> int | None:
    """Optimizer steps the run will take (as Lightning counts them; drop_last in training)."""
    max_steps = trainer_cfg.get("max_steps") or -1
    max_epochs = trainer_cfg.get("max_epochs")
    by_epochs = None
    if train_images is not None and max_epochs not in (None, -1):
        batches = max(1, train_images // max(1, global_batch // accumulate))
        by_epochs = max(1, -(-batches // accumulate)) * max_epochs
    if max_steps > 0:
        return max_steps if by_epochs is None else min(max_steps, by_epochs)
    return by_epochs


def cpu_load() -> float:
    """Runnable processes averaged over the last minute (other jobs on a shared machine)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def threads(device: str, devices) -> Decision:
    """torch's intra-op threads on CPU: the cores other processes leave free.

    OpenMP's parallel regions wait at a barrier for every thread; when another process holds
    one of the cores, each of the thousands of small ops in a step waits for a scheduler slice.
    On the shared 2-core machine this project is measured on, one thread trained V2-S 2-7x
    faster than two while other jobs ran (README, Benchmarks). OMP_NUM_THREADS set by the
    user wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return Decision(torch.get_num_threads(), "OMP_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    if not follows_load(device, devices):
        return Decision(torch.get_num_threads(), f"{device} with devices={devices}: torch's default")
    cores, busy = cpu_cores(), others_busy_cores()
    if busy is None:  # no /proc: the 1-minute load average, which counts fmb's own startup as ~0.5
        busy = cpu_load() - 0.5
    free = free_cores(cores, busy)
    return Decision(free, f"{cores} cores, {max(0.0, busy):.1f} busy with other processes: {free} free")


def follows_load(device: str, devices) -> bool:
    """Whether torch's threads are fmb's to choose from the load (one CPU process, no OMP_NUM_THREADS);
    then `FollowLoad` also re-decides them at each epoch."""
    return not os.environ.get("OMP_NUM_THREADS") and device == "cpu" and devices in (1, "1", None, AUTO)


def free_cores(cores: int, others: float) -> int:
    """Cores left when other processes keep `others` of them busy (at least one)."""
    return max(1, min(cores, round(cores - max(0.0, others))))


def _local_devices(device: str, devices) -> int:
    """Training processes on this machine (what `trainer.devices` asks for)."""
    if device != "cuda":
        return 1
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if devices in (None, AUTO, -1, "-1"):
        return max(1, torch.cuda.device_count())
    return max(1, int(devices))


def loader_workers(requested, device: str, devices) -> Decision:
    if requested != AUTO:
        return Decision(requested, "explicit", requested)
    workers, why = auto_workers(device == "cuda", _local_devices(device, devices), cores=cpu_cores())
    return Decision(workers, why)


def decide(cfg) -> dict[str, Decision]:
    """{key: Decision} for the run config `cfg` on this machine; `model.compile` is decided
    once the run's length is known (`compile_`)."""
    trainer = cfg.trainer
    accel = accelerator(trainer.get("accelerator", AUTO))
    device = device_type(accel.value)
    prec = precision(trainer.get("precision", AUTO), device)
    return {
        "trainer.accelerator": accel,
        "trainer.precision": prec,
        "model.channels_last": channels_last(cfg.model.channels_last, device, str(prec.value)),
        "data.num_workers": loader_workers(cfg.data.num_workers, device, trainer.get("devices", AUTO)),
        "torch.threads": threads(device, trainer.get("devices", 1)),
    }


def model_settings(cfg) -> tuple[bool, bool]:
    """(channels_last, compile) for the model section: resolved values pass through; `auto`
    is decided for the accelerator the config names (a module built outside `fmb train`)."""
    if cfg.model.channels_last != AUTO and cfg.model.compile != AUTO:
        return bool(cfg.model.channels_last), bool(cfg.model.compile)
    device = device_type(accelerator(cfg.trainer.get("accelerator", AUTO)).value)
    compiled = compile_(cfg.model.compile, device, bool(cfg.progressive.enabled), None).value
    if cfg.model.channels_last != AUTO:
        return bool(cfg.model.channels_last), compiled
    return decide(cfg)["model.channels_last"].value, compiled


def apply(cfg, decisions: dict[str, Decision]) -> None:
    """Write the decided values into the config, so config.yaml holds what ran."""
    for key, decision in decisions.items():
        section, name = key.split(".")
        if section == "torch":
            torch.set_num_threads(int(decision.value))
        elif section == "trainer":
            if name in cfg.trainer or decision.requested == AUTO:
                cfg.trainer[name] = decision.value
        else:
            setattr(getattr(cfg, section), name, decision.value)


def record(decisions: dict[str, Decision]) -> dict:
    """summary.json's `auto`: {key: {value, requested, reason}}."""
    return {key: asdict(d) for key, d in decisions.items()}


def describe(decisions: dict[str, Decision]) -> str:
    return "  auto: " + "; ".join(d.line(k) for k, d in decisions.items())

