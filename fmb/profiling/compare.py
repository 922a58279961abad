"""`--compare-blocks`: every stage built as MBConv and as Fused-MBConv at its real input, timed both ways.

The two versions of stage i are `blocks[i-1]` of the model built with all-M and all-F
placements, so their params equal those of any model with that placement at that stage.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fmb.models import cpu_fast_paths, create_model, folding_pays, fuse_bn, get_variant
from fmb.profiling.measure import count_module_macs, count_params, infer_step, time_call, train_step

EVEN = 1.05  # speedups within 5% either way are called even: the machine's noise is larger


def stage_input_shapes(model: nn.Module, resolution: int, batch_size: int) -> list[tuple]:
    """(B, C, H, W) entering each stage: every stride-2 conv (symmetric or TF-same) gives ceil(H/2)."""
    size, channels, shapes = math.ceil(resolution / 2), model.conv_stem.out_channels, []
    for spec in model.stages_spec:
        shapes.append((batch_size, channels, size, size))
        size, channels = math.ceil(size / spec.stride), spec.out_channels
    return shapes


def verdict(speedups: list[float]) -> str:
    """'fused' / 'mbconv' where every timed mode agrees beyond noise, else 'even' or 'mixed'."""
    if all(s >= EVEN for s in speedups):
        return "fused"
    if all(s <= 1 / EVEN for s in speedups):
        return "mbconv"
    return "even" if all(1 / EVEN < s < EVEN for s in speedups) else "mixed"


def _stage_loss(out: torch.Tensor) -> torch.Tensor:
    return out.float().square().mean()


def compare_blocks(model_kwargs: dict, *, resolution: int, batch_size: int, device: str = "cpu",
                   precision: str = "fp32", mode: str = "both", channels_last: bool = False,
                   fast: bool = False, warmup: int = 3, iters: int = 10) -> list[dict]:
    """One row per stage; `fused_speedup_*` is MBConv time / Fused time (> 1: fusing wins)."""
    kwargs = {k: v for k, v in model_kwargs.items() if k != "blocks"}
    if kwargs.get("stage_overrides"):  # a `block` override would undo the placement compared here
        kwargs["stage_overrides"] = {s: {f: v for f, v in d.items() if f != "block"}
                                     for s, d in kwargs["stage_overrides"].items()}
    n = len(get_variant(kwargs["name"]).stages)
    fold = folding_pays(device, precision)
    builds = {block: cpu_fast_paths(create_model(**kwargs, blocks=letter * n)).to(device)
              for block, letter in (("mbconv", "M"), ("fused", "F"))}
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    modes = [m for m in ("infer", "train") if mode in (m, "both")]
    rows = []
    for i, shape in enumerate(stage_input_shapes(builds["mbconv"], resolution, batch_size)):
        spec = builds["mbconv"].stages_spec[i]
        x = torch.randn(shape, device=device).to(memory_format=memory_format)
        row = {"stage": i + 1, "repeats": spec.repeats, "in_channels": shape[1], "out_channels": spec.out_channels,
               "stride": spec.stride, "expand_ratio": spec.expand_ratio, "input_hw": shape[2]}
        for block, model in builds.items():
            stage = model.blocks[i].to(memory_format=memory_format)
            row.update({f"{block}_params": count_params(stage), f"{block}_macs": count_module_macs(stage, x[:1]),
                        f"{block}_infer_ms": None, f"{block}_train_ms": None})
            for m in modes:
                step = (infer_step(fuse_bn(stage) if fast and fold else stage.eval(), x, precision) if m == "infer"
                        else train_step(stage, x, _stage_loss, precision))
                row[f"{block}_{m}_ms"] = time_call(step, warmup=warmup, iters=iters)["median_ms"]
        for m in ("infer", "train"):
            row[f"fused_speedup_{m}"] = row[f"mbconv_{m}_ms"] / row[f"fused_{m}_ms"] if m in modes else None
        row["verdict"] = verdict([row[f"fused_speedup_{m}"] for m in modes])
        rows.append(row)
    return rows
