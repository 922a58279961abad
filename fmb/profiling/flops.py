"""FLOP counting with torch's FlopCounterMode, on the meta device when no numbers are needed."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, resolution: int, batch_size: int = 1, in_chans: int = 3) -> int:
    """Multiply-accumulates of one forward pass (FlopCounterMode counts 2 FLOPs per MAC).

    Works for models on the meta device, so even XL at 512 px costs no compute.
    """
    device = next(model.parameters()).device
    x = torch.zeros(batch_size, in_chans, resolution, resolution, device=device)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
