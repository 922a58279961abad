"""Device and precision choices shared by `fmb predict`, `fmb export` and `fmb eval`."""
from __future__ import annotations

import contextlib

import torch

from fmb.device import accelerator_type, cuda_available, mps_available
from fmb.errors import FmbError, choice_error

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → the first CUDA GPU, else Apple's MPS, else CPU; 'cuda:1' names a GPU."""
    name = str(device).strip().lower()
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise choice_error("--device", device, list(DEVICES))
    if kind == "auto":
        return torch.device(accelerator_type("auto"))
    if ":" in name and kind != "cuda":  # torch takes 'cpu:0', Lightning then refuses it as a device list
        raise FmbError(f"--device {device}: only CUDA devices take an index; expected --device {kind}")
    if kind == "cuda":
        index_text = name.split(":", 1)[1] if ":" in name else "0"
        if not index_text.isdigit():
            raise FmbError(f"--device {device}: the GPU index must be a whole number; expected e.g. --device cuda:0")
        if not cuda_available():
            raise FmbError(f"--device {device}: no CUDA GPU is visible to torch; expected --device cpu or auto")
        index = int(index_text)
        if index >= torch.cuda.device_count():
            raise FmbError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s); "
                           f"expected cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if kind == "mps" and not mps_available():
        raise FmbError(f"--device {device}: MPS is not available; expected --device cpu or auto")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> str:
    precision = str(precision).strip().lower()
    if precision not in PRECISIONS:
        raise choice_error("--precision", precision, list(PRECISIONS))
    if precision == "fp16" and device.type == "cpu":
        raise FmbError("--precision fp16 needs a GPU (CPU autocast supports bf16); expected --precision bf16 or fp32")
    return precision


def autocast(precision: str, device: torch.device):
    """Autocast for bf16/fp16 (weights stay fp32, as Lightning's mixed precision keeps them)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_devices(devices, target: torch.device) -> None:
    """Refuse a process count the machine cannot give before any process starts: one per GPU
    on CUDA, at most one per usable core on CPU (Lightning would try to start them all)."""
    import os

    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise FmbError(f"--devices {devices}; expected a whole number of devices, 1 or more")
    if target.type == "cuda":
        have, what = torch.cuda.device_count(), "CUDA GPU(s)"
    elif target.type == "cpu":
        have = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        what = "CPU core(s) for CPU processes"
    else:
        have, what = 1, f"{target.type} device"
    if devices > have:
        raise FmbError(f"--devices {devices}: this machine has {have} {what}; expected --devices 1 to {have}")


def run_precision(hparams: dict, device: torch.device) -> tuple[str, str]:
    """(precision, why) a checkpoint was trained in, as fp32/bf16/fp16 for `device`: the
    Trainer precision fmb recorded (auto resolved), else the config's. A precision `device`
    cannot run (fp16 on CPU) falls back to fp32, and `why` says so."""
    from fmb.device import precision_name

    recorded = ((hparams.get("config") or {}).get("trainer") or {}).get("precision")
    try:
        name = precision_name(recorded)
    except FmbError:  # 'auto' from a run that did not record its choice, or a precision eval has no autocast for
        return "fp32", f"the run's precision ({recorded}) is not one eval runs; fp32"
    if name == "fp16" and device.type == "cpu":
        return "fp32", "the run trained in fp16, which CPU autocast does not run; fp32"
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return "fp32", "the run trained in bf16, which this GPU lacks; fp32"
    return name, f"the run's ({recorded})"
