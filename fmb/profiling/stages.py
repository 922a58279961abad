"""Per-stage rows: params, MACs, forward time and activation memory of stem, stages, head."""
from __future__ import annotations

import torch
from torch import nn

from fmb.profiling.flops import count_macs_per_stage
from fmb.profiling.memory import activation_mb_per_part
from fmb.profiling.parts import model_parts, part_inputs
from fmb.profiling.steps import autocast
from fmb.profiling.timing import measure


def stage_rows(model: nn.Module, infer_model: nn.Module, x: torch.Tensor, *, precision: str, device: str,
               warmup: int, iters: int, timed: bool = True) -> list[dict]:
    """One row per part of `model` (params, MACs, activation MB from the training model);
    forward_ms times each part of `infer_model` (maybe BN-folded) alone on its real input."""
    macs = count_macs_per_stage(model, x.shape[-1])  # per image, like the total
    activation = activation_mb_per_part(model, x, autocast(device, precision))
    forward_ms = {}
    if timed:
        parts = model_parts(infer_model)
        for (label, _, _, run), inp in zip(parts, part_inputs(infer_model, x)):
            def call(run=run, inp=inp):
                with torch.inference_mode(), autocast(device, precision):
                    run(inp)
            forward_ms[label] = measure(call, device=device, warmup=warmup, iters=iters)["median_ms"]
    return [
        {"stage": label, "block": block, "params": sum(p.numel() for m in modules for p in m.parameters()),
         "macs": macs[label], "forward_ms": forward_ms.get(label), "activation_mb": activation[label]}
        for label, block, modules, _ in model_parts(model)
    ]
