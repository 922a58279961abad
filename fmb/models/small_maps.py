"""CPU fast paths for convs on small feature maps.

On CPU, PyTorch runs convs through oneDNN, which is slow on the tiny maps of the last stages
at 32 px (CIFAR, the built-in digits: 4×4 down to 1×1) and on squeeze-excitation's 1×1 maps.
Measured on the 2-core AVX2 EPYC, batch 32, forward + backward (benchmarks/small_maps.py):
- a depthwise conv's weight gradient is 5-30× slower than its arithmetic warrants once the
  map has no more positions than the kernel has taps: 1536 channels on 1×1, 20 ms vs 0.6 ms
  below; 960 channels on 2×2, 10 ms vs 2 ms. V2-S's 32 px training step spent 40 % there.
- a 1×1 conv on a map of ≤ 16 positions is 1.2-3× slower than the same product as a matmul.
So on such maps each conv is computed as what it is: a depthwise conv as one small
(outputs × inputs) matrix per channel gathered from its kernel, a 1×1 conv as a linear layer.
Same sums up to float rounding, same gradients, same parameters and state_dict. Larger maps
and other devices take the ordinary conv (where these paths measured no faster).

`create_model` builds plain convs, so a model computes exactly what timm and torchvision compute;
`cpu_fast_paths(model)` opts a model into these paths (training, eval, predict and profile do,
like `fuse_bn` for inference), and `plain_convs(model)` takes one model back to plain convs for
a while (FLOP counts: the papers count a conv's MACs, not this matrix's).
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

from fmb.models.layers import DepthwiseConv2d, PointwiseConv2d

POINTWISE_MAX_POSITIONS = 16


def use_depthwise_matrix(x: torch.Tensor, kernel_size: int) -> bool:
    return x.device.type == "cpu" and x.shape[-2] * x.shape[-1] <= kernel_size * kernel_size


def use_pointwise_linear(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.shape[-2] * x.shape[-1] <= POINTWISE_MAX_POSITIONS


class SmallMapDepthwiseConv2d(DepthwiseConv2d):
    """A DepthwiseConv2d that computes tiny CPU maps as a per-channel matrix (no state of its own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        if use_depthwise_matrix(x, k):
            return depthwise_as_matrix(x, self.weight, self.bias, self.stride[0], self.pads(x))
        return super().forward(x)


class SmallMapPointwiseConv2d(PointwiseConv2d):
    """A PointwiseConv2d that computes small CPU maps as a linear layer (no state of its own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_pointwise_linear(x):
            return pointwise_as_linear(x, self.weight, self.bias)
        return super().forward(x)


_FAST = {DepthwiseConv2d: SmallMapDepthwiseConv2d, PointwiseConv2d: SmallMapPointwiseConv2d}
_PLAIN = {fast: plain for plain, fast in _FAST.items()}


def _swap(model: nn.Module, table: dict) -> nn.Module:
    # The class is swapped in place, not the module replaced: the optimizer's parameters, the
    # state_dict keys and any hooks stay exactly as they were (the classes add no state).
    for module in model.modules():
        if type(module) in table:
            module.__class__ = table[type(module)]
    return model


def cpu_fast_paths(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Opt `model` (in place) into the small-map paths (other devices and larger maps are
    unaffected), or with enabled=False back out of them (exports: portable ordinary convs)."""
    return _swap(model, _FAST if enabled else _PLAIN)


@contextlib.contextmanager
def plain_convs(model: nn.Module):
    """`model` with ordinary convs inside the block, its fast paths (if any) back afterwards."""
    swapped = [m for m in model.modules() if type(m) in _PLAIN]
    _swap(model, _PLAIN)
    try:
        yield model
    finally:
        for module in swapped:
            module.__class__ = _FAST[type(module)]


def depthwise_as_matrix(x, weight, bias, stride: int, pads: list[int]) -> torch.Tensor:
    """A depthwise k×k conv with zero padding `pads` (F.pad's [left, right, top, bottom]), as a
    per-channel matmul."""
    n, c, h, w = x.shape
    k = weight.shape[-1]
    left, right, top, bottom = pads
    ho, wo = (h + top + bottom - k) // stride + 1, (w + left + right - k) // stride + 1
    taps = tap_index(h, w, k, stride, top, left, ho, wo, x.device)
    # Each channel's kernel plus a zero for the (output, input) pairs that no tap joins.
    kernel = torch.cat([weight.reshape(c, k * k), weight.new_zeros(c, 1)], dim=1)
    out = torch.einsum("ncp,cop->nco", x.reshape(n, c, h * w), kernel[:, taps]).reshape(n, c, ho, wo)
    return out if bias is None else out + bias.view(1, c, 1, 1)


@functools.lru_cache(maxsize=64)
def tap_index(h: int, w: int, k: int, stride: int, top: int, left: int, ho: int, wo: int,
              device: torch.device) -> torch.Tensor:
    """(ho·wo, h·w): which of the k·k taps joins each output to each input; k·k where none does."""
    # Cached across calls, so never an inference tensor: a first call under inference_mode
    # (Lightning's validation, `fmb eval`) must not break a later training step's backward.
    with torch.inference_mode(False):
        return _tap_index(h, w, k, stride, top, left, ho, wo).to(device)


def _tap_index(h: int, w: int, k: int, stride: int, top: int, left: int, ho: int, wo: int) -> torch.Tensor:
    oy, ox = torch.arange(ho).view(ho, 1, 1, 1), torch.arange(wo).view(1, wo, 1, 1)
    iy, ix = torch.arange(h).view(1, 1, h, 1), torch.arange(w).view(1, 1, 1, w)
    ty, tx = iy - oy * stride + top, ix - ox * stride + left
    inside = (ty >= 0) & (ty < k) & (tx >= 0) & (tx < k)
    return torch.where(inside, ty * k + tx, k * k).reshape(ho * wo, h * w)


def pointwise_as_linear(x, weight, bias) -> torch.Tensor:
    """A 1×1 conv (stride 1, no groups) as a linear layer over the channels, in x's memory format."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
