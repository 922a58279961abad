"""The two things timed: an inference forward, and a train step (forward, loss, backward, SGD step)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "fp16")


def autocast(device: str, precision: str):
    """Mixed precision via autocast (weights stay fp32), or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=str(device).split(":")[0], dtype=dtype)


def make_infer_step(model: nn.Module, x: torch.Tensor, precision: str):
    model.eval()

    def step():
        with torch.inference_mode(), autocast(x.device.type, precision):
            return model(x)
    return step


def make_train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, lr: float = 0.01):
    """One optimizer step; fp16 uses a GradScaler as a real fp16 run would."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scaler = torch.amp.GradScaler(x.device.type, enabled=precision == "fp16")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(x.device.type, precision):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss
    return step
