"""The two blocks the study is about: MBConv and Fused-MBConv (official EfficientNetV2 semantics).

Submodule names follow timm (`conv_exp`, `bn1`, `se`, `conv_pwl`, ...) so state-dict keys
say what each tensor is, and timm checkpoints load without renaming blocks.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import SqueezeExcitation, StochasticDepth

from fmb.models.layers import BN_MOMENTUM, DEFAULT_BN_EPS, DepthwiseConv2d, PointwiseConv2d, conv2d, norm_layer


def squeeze_excitation(in_ch: int, channels: int, se_ratio: float) -> nn.Module | None:
    """SE gating `channels` maps; its reduced width comes from the block's *input* channels."""
    if not se_ratio:
        return None
    se = SqueezeExcitation(channels, max(1, int(in_ch * se_ratio)), activation=nn.SiLU)
    squeezed = se.fc1.out_channels
    se.fc1, se.fc2 = PointwiseConv2d(channels, squeezed, bias=True), PointwiseConv2d(squeezed, channels, bias=True)
    return se


class _Block(nn.Module):
    """Residual plumbing shared by both blocks: skip only at stride 1 with equal widths."""

    def _init_residual(self, in_ch, out_ch, stride, drop_path):
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_path = StochasticDepth(drop_path, "row") if self.has_skip and drop_path > 0 else nn.Identity()

    def residual(self, shortcut: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(x) + shortcut if self.has_skip else x


class FusedMBConv(_Block):
    """k×k conv (expands) + BN + SiLU, optional SE, 1×1 projection + BN.

    With expand_ratio 1 the official block is a single k×k conv + BN + SiLU; its SE, if any,
    gates the block *input* before that conv (official effnetv2_model.py FusedMBConvBlock:
    SE sits between the skipped expansion and the projection). Neither timm (ConvBnAct,
    no SE) nor torchvision (no SE in FusedMBConv) has this case, so it follows the official code.
    """

    def __init__(self, in_ch, out_ch, *, expand_ratio, kernel_size=3, stride=1, se_ratio=0.0,
                 drop_path=0.0, bn_eps=DEFAULT_BN_EPS, bn_momentum=BN_MOMENTUM["v2"], padding="symmetric"):
        super().__init__()
        norm = norm_layer(bn_eps, bn_momentum)
        self.single_conv = expand_ratio == 1
        if self.single_conv:
            self.se = squeeze_excitation(in_ch, in_ch, se_ratio)
            self.conv = conv2d(in_ch, out_ch, kernel_size, stride, padding=padding)
            self.bn1 = norm(out_ch)
            self.act1 = nn.SiLU(inplace=True)
        else:
            mid = int(round(in_ch * expand_ratio))
            self.conv_exp = conv2d(in_ch, mid, kernel_size, stride, padding=padding)
            self.bn1 = norm(mid)
            self.act1 = nn.SiLU(inplace=True)
            self.se = squeeze_excitation(in_ch, mid, se_ratio)
            self.conv_pwl = conv2d(mid, out_ch, 1)
            self.bn2 = norm(out_ch)
        self._init_residual(in_ch, out_ch, stride, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.single_conv:
            if self.se is not None:
                x = self.se(x)
            x = self.act1(self.bn1(self.conv(x)))
        else:
            x = self.act1(self.bn1(self.conv_exp(x)))
            if self.se is not None:
                x = self.se(x)
            x = self.bn2(self.conv_pwl(x))
        return self.residual(shortcut, x)


class MBConv(_Block):
    """1×1 expand + BN + SiLU (skipped at expand_ratio 1), depthwise k×k + BN + SiLU, SE, 1×1 project + BN."""

    def __init__(self, in_ch, out_ch, *, expand_ratio, kernel_size=3, stride=1, se_ratio=0.0,
                 drop_path=0.0, bn_eps=DEFAULT_BN_EPS, bn_momentum=BN_MOMENTUM["v2"], padding="symmetric"):
        super().__init__()
        norm = norm_layer(bn_eps, bn_momentum)
        mid = int(round(in_ch * expand_ratio))
        self.has_expand = mid != in_ch
        # Names match timm's InvertedResidual (with expansion) and DepthwiseSeparableConv (without).
        if self.has_expand:
            self.conv_pw = conv2d(in_ch, mid, 1)
            self.bn1 = norm(mid)
            self.act1 = nn.SiLU(inplace=True)
            self.conv_dw = DepthwiseConv2d(mid, kernel_size, stride, tf_same=padding == "same" and stride > 1)
            self.bn2 = norm(mid)
            self.act2 = nn.SiLU(inplace=True)
            self.se = squeeze_excitation(in_ch, mid, se_ratio)
            self.conv_pwl = conv2d(mid, out_ch, 1)
            self.bn3 = norm(out_ch)
        else:
            self.conv_dw = DepthwiseConv2d(mid, kernel_size, stride, tf_same=padding == "same" and stride > 1)
            self.bn1 = norm(mid)
            self.act1 = nn.SiLU(inplace=True)
            self.se = squeeze_excitation(in_ch, mid, se_ratio)
            self.conv_pw = conv2d(mid, out_ch, 1)
            self.bn2 = norm(out_ch)
        self._init_residual(in_ch, out_ch, stride, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.has_expand:
            x = self.act1(self.bn1(self.conv_pw(x)))
            x = self.act2(self.bn2(self.conv_dw(x)))
        else:
            x = self.act1(self.bn1(self.conv_dw(x)))
        if self.se is not None:
            x = self.se(x)
        x = self.bn3(self.conv_pwl(x)) if self.has_expand else self.bn2(self.conv_pw(x))
        return self.residual(shortcut, x)


BLOCK_TYPES = {"fused": FusedMBConv, "mbconv": MBConv}
