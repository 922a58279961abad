"""The EfficientNet network: stem, stages of MBConv / Fused-MBConv blocks, head, classifier."""
from __future__ import annotations

import math

import torch
from torch import nn

from fmb.models.blocks import BLOCK_TYPES
from fmb.models.layers import BN_MOMENTUM, DEFAULT_BN_EPS, conv2d, norm_layer
from fmb.models.specs import StageSpec, placement_of


class EfficientNet(nn.Module):
    """An EfficientNet built from already-scaled stage specs.

    `blocks[i]` is stage i+1 of the paper's table. `feature_info` lists, per stage end,
    its channels and stride, as timm's feature extraction does.
    """

    def __init__(
        self,
        stages: tuple[StageSpec, ...],
        *,
        stem_channels: int,
        head_channels: int,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.2,
        bn_eps: float = DEFAULT_BN_EPS,
        bn_momentum: float = BN_MOMENTUM["v2"],
        padding: str = "symmetric",
    ):
        super().__init__()
        norm = norm_layer(bn_eps, bn_momentum)
        self.stages_spec = tuple(stages)
        self.bn_eps = bn_eps
        self.bn_momentum = bn_momentum
        self.padding = padding
        self.num_classes = num_classes
        self.num_features = head_channels

        self.conv_stem = conv2d(in_chans, stem_channels, 3, 2, padding=padding)
        self.bn1 = norm(stem_channels)
        self.act1 = nn.SiLU(inplace=True)

        total_blocks = sum(s.repeats for s in stages)
        block_index, in_ch, stride = 0, stem_channels, 2
        stage_modules, self.feature_info = [], []
        for number, spec in enumerate(stages, start=1):
            layers = []
            for i in range(spec.repeats):
                # Stochastic depth grows linearly with the block's index over the whole network.
                layers.append(BLOCK_TYPES[spec.block](
                    in_ch, spec.out_channels, expand_ratio=spec.expand_ratio,
                    kernel_size=spec.kernel_size, stride=spec.stride if i == 0 else 1,
                    se_ratio=spec.se_ratio, drop_path=drop_path_rate * block_index / total_blocks,
                    bn_eps=bn_eps, bn_momentum=bn_momentum, padding=padding,
                ))
                in_ch = spec.out_channels
                block_index += 1
            stride *= spec.stride
            stage_modules.append(nn.Sequential(*layers))
            self.feature_info.append({"stage": number, "num_chs": in_ch, "reduction": stride,
                                      "module": f"blocks.{number - 1}"})
        self.blocks = nn.Sequential(*stage_modules)

        self.conv_head = conv2d(in_ch, head_channels, 1)
        self.bn2 = norm(head_channels)
        self.act2 = nn.SiLU(inplace=True)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(head_channels, num_classes) if num_classes > 0 else nn.Identity()
        if self.conv_stem.weight.device.type != "meta":  # meta tensors hold shapes only: nothing to draw
            self._init_weights()

    @property
    def placement(self) -> str:
        return placement_of(self.stages_spec)

    @property
    def drop_rate(self) -> float:
        return self.dropout.p

    def set_drop_rate(self, p: float) -> None:
        """Change the head dropout in place (progressive learning raises it stage by stage)."""
        self.dropout.p = float(p)

    def _init_weights(self) -> None:
        # As the official code: conv ~ N(0, sqrt(2 / fan_out)), fan_out per group; dense uniform.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv_stem(x)))
        x = self.blocks(x)
        return self.act2(self.bn2(self.conv_head(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.global_pool(x).flatten(1))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class EfficientNetFeatures(nn.Module):
    """Backbone returning one feature map per requested stage end (timm's `features_only`)."""

    def __init__(self, net: EfficientNet, out_indices: tuple[int, ...]):
        super().__init__()
        last = max(out_indices)
        self.conv_stem, self.bn1, self.act1 = net.conv_stem, net.bn1, net.act1
        self.blocks = nn.Sequential(*list(net.blocks)[:last])
        self.out_indices = tuple(out_indices)
        self.feature_info = [net.feature_info[i - 1] for i in self.out_indices]
        self.stages_spec = net.stages_spec
        self.bn_eps = net.bn_eps
        self.bn_momentum = net.bn_momentum

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act1(self.bn1(self.conv_stem(x)))
        features = []
        for number, stage in enumerate(self.blocks, start=1):
            x = stage(x)
            if number in self.out_indices:
                features.append(x)
        return features
