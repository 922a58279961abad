"""BN folding for inference: each BatchNorm becomes a bias on the conv before it.

At inference a BatchNorm is a fixed per-channel scale and shift, so it can be folded into
the preceding conv's weight and bias (torch's `fuse_conv_bn_eval`): one fewer pass over
every feature map.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _fold_children(module: nn.Module) -> None:
    # Every fmb module registers each BN right after the conv that feeds it (stem, blocks,
    # head; see blocks.py), so the nearest earlier Conv2d sibling is the BN's input.
    conv_name = None
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d):
            conv_name = name
        elif isinstance(child, nn.BatchNorm2d):
            conv = getattr(module, conv_name) if conv_name else None
            if conv is None or conv.out_channels != child.num_features:
                raise ValueError(f"cannot fold BatchNorm '{name}' of {type(module).__name__}: no conv feeds it")
            setattr(module, conv_name, fuse_conv_bn_eval(conv, child))
            setattr(module, name, nn.Identity())
            conv_name = None
        else:
            _fold_children(child)


def folding_pays(device: str | torch.device, precision: str) -> bool:
    """Whether the inference fast path should fold BN here. Not on CUDA in bf16/fp16: there
    cuDNN adds a folded conv's bias in a separate elementwise kernel that is slower than BN's own
    channels_last kernel (one H200, 224 px, batch 256, benchmarks/gpu_peers.py: V2-S 23.4 vs
    21.1 ms, B4 32.8 vs 29.9 ms, B0 12.8 vs 12.1 ms folded vs kept; benchmarks/gpu_diag.py)."""
    return not (torch.device(device).type == "cuda" and precision in ("bf16", "fp16"))


def fuse_bn(model: nn.Module) -> nn.Module:
    """An inference copy of `model` (eval mode) with every BatchNorm folded into its conv.

    The original is untouched; the copy's outputs equal the original's in eval mode.
    """
    fused = copy.deepcopy(model).eval()
    with torch.no_grad():
        _fold_children(fused)
    return fused
