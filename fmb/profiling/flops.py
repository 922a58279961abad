"""FLOP counting with torch's FlopCounterMode, on the meta device when no numbers are needed.

FlopCounterMode counts the matmul-like ops (convs, linear) at 2 FLOPs per MAC; BN, SiLU,
pooling and adds are not counted, as in the papers' FLOP figures.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _counted_forward(model: nn.Module, resolution: int, batch_size: int, in_chans: int) -> FlopCounterMode:
    device = next(model.parameters()).device
    return count_forward(model, torch.zeros(batch_size, in_chans, resolution, resolution, device=device))


def count_forward(model: nn.Module, x: torch.Tensor) -> FlopCounterMode:
    """An eval-mode forward of `x` under FlopCounterMode; the counter holds per-module FLOPs."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return counter


def count_macs(model: nn.Module, resolution: int, batch_size: int = 1, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass (FlopCounterMode counts 2 FLOPs per MAC).

    Works for models on the meta device, so even XL at 512 px costs no compute.
    """
    return _counted_forward(model, resolution, batch_size, in_chans).get_total_flops() // 2


def count_macs_per_stage(model: nn.Module, resolution: int, batch_size: int = 1, in_chans: int = 3) -> dict:
    """MACs of an EfficientNet split as {0: stem, 1: n, ..., N: n, "head": n}; they sum to the total.

    Stage i is `model.blocks[i-1]`; the head (conv_head, pooling, classifier) is the rest.
    """
    counter = _counted_forward(model, resolution, batch_size, in_chans)
    by_module = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    parts = {0: by_module.get(f"{root}.conv_stem", 0)}
    for i in range(len(model.blocks)):
        parts[i + 1] = by_module.get(f"{root}.blocks.{i}", 0)
    parts["head"] = counter.get_total_flops() // 2 - sum(parts.values())
    return parts


def count_module_macs(module: nn.Module, x: torch.Tensor) -> int:
    """MACs of any module (a block, a stage) on the input `x`."""
    return count_forward(module, x).get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
