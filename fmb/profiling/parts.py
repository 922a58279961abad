"""An EfficientNet cut into the rows of the per-stage report: stem, stage 1..N, head.

Each part is (label, block, modules, run): its label (0 = stem, 1..N, "head"), block type,
the modules it owns (for params and hooks) and a callable running it on its input.
"""
from __future__ import annotations

import torch
from torch import nn


def model_parts(model: nn.Module) -> list[tuple]:
    stem = [model.conv_stem, model.bn1, model.act1]
    head = [model.conv_head, model.bn2, model.act2, model.global_pool, model.dropout, model.classifier]
    parts = [(0, "stem", stem, lambda x: model.act1(model.bn1(model.conv_stem(x))))]
    for i, (stage, spec) in enumerate(zip(model.blocks, model.stages_spec), start=1):
        parts.append((i, spec.block, [stage], stage))
    parts.append(("head", "head", head, lambda x: model.forward_head(model.act2(model.bn2(model.conv_head(x))))))
    return parts


def part_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The input each part sees in one eval forward of `x`, in `model_parts` order."""
    inputs = []
    firsts = [mods[0] for _, _, mods, _ in model_parts(model)]
    handles = [m.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach())) for m in firsts]
    try:
        with torch.inference_mode():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return inputs
