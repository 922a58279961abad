"""BN folding for inference: each BatchNorm becomes a bias on the conv before it.

At inference a BatchNorm is a fixed per-channel scale and shift, so it can be folded into
the preceding conv's weight and bias: one fewer pass over every feature map.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold `bn`'s running statistics and affine into `conv` in place (float64 for exactness)."""
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter((w * scale.reshape(-1, 1, 1, 1)).to(dtype))
    conv.bias = nn.Parameter((bn.bias.detach().double() + (bias - bn.running_mean.double()) * scale).to(dtype))


def _fold_children(module: nn.Module) -> None:
    # Every fmb module registers each BN right after the conv that feeds it (stem, blocks,
    # head; see blocks.py), so the nearest earlier Conv2d sibling is the BN's input.
    last_conv = None
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Conv2d):
            last_conv = child
        elif isinstance(child, nn.BatchNorm2d):
            if last_conv is None or last_conv.out_channels != child.num_features:
                raise ValueError(f"cannot fold BatchNorm '{name}' of {type(module).__name__}: no conv feeds it")
            fold_conv_bn(last_conv, child)
            setattr(module, name, nn.Identity())
            last_conv = None
        else:
            _fold_children(child)


def fuse_bn(model: nn.Module) -> nn.Module:
    """An inference copy of `model` (eval mode) with every BatchNorm folded into its conv.

    The original is untouched; the copy's outputs equal the original's in eval mode.
    """
    fused = copy.deepcopy(model).eval()
    with torch.no_grad():
        _fold_children(fused)
    return fused
