"""Small building pieces shared by the blocks: norm layer, TF-style "same" padding, the convs."""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

# The official code uses eps 1e-3 for V1 and V2; PyTorch-trained ports (timm, torchvision
# B0-B4) use 1e-5. A built model carries its own eps and momentum (EfficientNet.bn_eps,
# .bn_momentum) so imported weights give their source's logits (see weights.py).
DEFAULT_BN_EPS = 1e-3
# PyTorch momentum = 1 - TF decay. The official V2 code (effnetv2 hparams.py) uses decay 0.9,
# i.e. momentum 0.1; the official V1 code (efficientnet_builder.py) uses decay 0.99, i.e. 0.01.
BN_MOMENTUM = {"v1": 0.01, "v2": 0.1}


def norm_layer(eps: float = DEFAULT_BN_EPS, momentum: float = BN_MOMENTUM["v2"]):
    return partial(nn.BatchNorm2d, eps=eps, momentum=momentum)


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding, computed from the input size at run time.

    For stride 2 TF pads more at the bottom/right than the top/left; weights trained that
    way lose about a point of top-1 with symmetric padding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = tf_same_pads(x, self.kernel_size[0], self.stride[0], self.dilation[0])
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _same_pad(size: int, kernel: int, stride: int, dilation: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def tf_same_pads(x: torch.Tensor, kernel: int, stride: int, dilation: int = 1) -> list[int]:
    """TF "same" zero padding of x's map in F.pad's order [left, right, top, bottom] (more at the end)."""
    ph, pw = (_same_pad(size, kernel, stride, dilation) for size in x.shape[-2:])
    return [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]


def conv2d(in_ch, out_ch, kernel_size, stride=1, groups=1, padding="symmetric", bias=False) -> nn.Conv2d:
    """A conv with symmetric padding, or TF "same" padding where it differs (stride > 1)."""
    if kernel_size == 1 and stride == 1 and groups == 1:
        return PointwiseConv2d(in_ch, out_ch, bias=bias)
    if padding == "same" and stride > 1:
        return Conv2dSame(in_ch, out_ch, kernel_size, stride, 0, groups=groups, bias=bias)
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias)


class DepthwiseConv2d(nn.Conv2d):
    """MBConv's depthwise k×k conv, symmetric or TF "same" padded (small_maps.py can opt it into
    a faster path on tiny CPU maps)."""

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, tf_same: bool = False):
        super().__init__(channels, channels, kernel_size, stride, 0 if tf_same else kernel_size // 2,
                         groups=channels, bias=False)
        self.tf_same = tf_same

    def pads(self, x: torch.Tensor) -> list[int]:
        """Zero padding of x in F.pad's order [left, right, top, bottom]."""
        return tf_same_pads(x, self.kernel_size[0], self.stride[0]) if self.tf_same else [self.padding[0]] * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tf_same:
            pads = self.pads(x)
            if any(pads):
                x = F.pad(x, pads)
        return super().forward(x)


class PointwiseConv2d(nn.Conv2d):
    """A 1×1 conv (small_maps.py can opt it into a linear layer on small CPU maps)."""

    def __init__(self, in_ch: int, out_ch: int, bias: bool = False):
        super().__init__(in_ch, out_ch, 1, bias=bias)
