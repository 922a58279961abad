"""Device and precision choices shared by `fmb predict`, `fmb export` and `fmb eval`."""
from __future__ import annotations

import contextlib

import torch

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
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise FmbError(f"--device {device}: no CUDA GPU is visible to torch; expected --device cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise FmbError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s); "
                           f"expected cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
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
