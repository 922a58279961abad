"""Freeze the first stages for fine-tuning: their weights fixed and their BatchNorm statistics kept.

A frozen stage must also stop updating its BN running statistics, or the pretrained features
drift with the new data while their weights cannot follow; so its modules stay in eval mode
(the training loop's `train()` calls have to put them back, see ImageClassifier.train).
"""
from __future__ import annotations

from torch import nn


def freeze_stages(model: nn.Module, n: int) -> list[nn.Module]:
    """Freeze the stem and stages 1..n of an EfficientNet in place; returns the frozen modules."""
    if n <= 0:
        return []
    modules = [model.conv_stem, model.bn1, *list(model.blocks)[:n]]
    for module in modules:
        module.requires_grad_(False)
        module.eval()
    return modules
