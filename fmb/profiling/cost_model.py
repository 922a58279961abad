"""The cost of every placement from one table of parts: the stem, the head, and each stage
built both as MBConv and as Fused-MBConv at its real input shape.

A placement's network is the stem, then stage i as its letter says, then the head, and a
stage's input shape and parameters do not depend on the blocks of the other stages. So
params and MACs are sums over the parts (exact), and a step's time is predicted as the sum
of the parts' times: forward for inference, forward + backward + SGD step for training.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from fmb.errors import FmbError
from fmb.models import cpu_fast_paths, create_model, folding_pays, fuse_bn, get_variant
from fmb.profiling.compare import stage_input_shapes
from fmb.profiling.in_network import timed_forward
from fmb.profiling.measure import (
    autocast, count_module_macs, count_params, summarize, time_alternating, train_step,
)

LETTERS = ("M", "F")


def letter_models(model_kwargs: dict, overrides_for, device: str) -> dict:
    """{"M": all-MBConv model, "F": all-Fused model}, each with the stage overrides its
    placement gets; refused where a stage's input would depend on another stage's block."""
    kwargs = {k: v for k, v in model_kwargs.items() if k not in ("blocks", "stage_overrides")}
    n = len(get_variant(kwargs["name"]).stages)
    # with the CPU small-map paths, as fmb train, eval and profile run a model
    models = {c: cpu_fast_paths(create_model(**kwargs, blocks=c * n, stage_overrides=overrides_for(c * n))).to(device)
              for c in LETTERS}
    shape = {c: [(s.out_channels, s.stride) for s in m.stages_spec] for c, m in models.items()}
    if shape["M"] != shape["F"]:
        stage = next(i for i, (a, b) in enumerate(zip(shape["M"], shape["F"], strict=True), 1) if a != b)
        raise FmbError(f"stage {stage} gets a different out_channels or stride as MBConv than as Fused-MBConv, so "
                       f"the next stage's cost depends on this one's block; expected overrides of out_channels "
                       f"and stride that hold for both block types (set them per stage, not per block type)")
    return models


def stem_module(model: nn.Module) -> nn.Module:
    return nn.Sequential(model.conv_stem, model.bn1, model.act1)


def head_module(model: nn.Module) -> nn.Module:
    """The head as `forward_head(act2(bn2(conv_head(x))))` runs it."""
    return nn.Sequential(model.conv_head, model.bn2, model.act2, model.global_pool, nn.Flatten(1),
                         model.dropout, model.classifier)


def part_train_step(module: nn.Module, x: torch.Tensor, precision: str, labels: torch.Tensor | None = None):
    """Forward, backward and SGD step of one part alone. Inside a network a stage's input
    needs a gradient and its output receives one from the rest, so the input requires grad
    and the backward starts from a fixed gradient of the output's shape; the head ends in
    the cross-entropy of the real train step instead."""
    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    with torch.no_grad(), autocast(x.device.type, precision):
        grad = torch.randn_like(module(x)) if labels is None else None

    def step():
        opt.zero_grad(set_to_none=True)
        x.grad = None
        with autocast(x.device.type, precision):
            out = module(x)
        if labels is None:
            out.backward(grad)
        else:
            nn.functional.cross_entropy(out.float(), labels).backward()
        opt.step()
    return step


def _parts(model: nn.Module, shapes: list[tuple], image: torch.Tensor, feats: torch.Tensor, letter: str) -> list:
    """(label, module, input) of the stem, the stages and the head of one model; the stem and
    head (the same in every placement) only from the all-MBConv model."""
    parts = [("stem", stem_module(model), image)] if letter == "M" else []
    parts += [(f"{i + 1}{letter}", model.blocks[i], torch.randn(shape, device=image.device))
              for i, shape in enumerate(shapes)]
    return parts + ([("head", head_module(model), feats)] if letter == "M" else [])


def part_contenders(model_kwargs: dict, *, overrides_for, resolution: int, batch_size: int, device: str,
                    precision: str, channels_last: bool = False, fast: bool = False, warmup: int = 3) -> tuple[dict, dict]:
    """(parts, steps): parts["rows"] {label: {params, macs}} of the stem, "1M", "1F", ..., "head";
    steps {"train": factory, "infer": factory}, each factory giving {label: step}: each part alone
    for training, the all-M and all-F networks timed part by part for inference (in_network.py),
    their records in parts["infer_records"]. The steps use the memory format and BN folding that
    `fmb profile` uses for a whole model; a factory sets train/eval mode, so call one only when
    its steps are about to be timed."""
    models = letter_models(model_kwargs, overrides_for, device)
    base = models["M"]
    shapes = stage_input_shapes(base, resolution, batch_size)
    image = torch.randn(batch_size, base.conv_stem.in_channels, resolution, resolution, device=device)
    feat_hw = -(-shapes[-1][2] // base.stages_spec[-1].stride)
    feats = torch.randn(batch_size, base.conv_head.in_channels, feat_hw, feat_hw, device=device)
    labels = torch.randint(0, max(1, base.num_classes or base.num_features), (batch_size,), device=device)
    train_fmt = torch.channels_last if channels_last else torch.contiguous_format
    infer_fmt = torch.channels_last if channels_last or fast else torch.contiguous_format
    fold = fast and folding_pays(device, precision)
    rows = {label: {"params": count_params(module), "macs": count_module_macs(module, x[:1])}
            for c in LETTERS for label, module, x in _parts(models[c], shapes, image, feats, c)}

    def train_steps():
        # the image needs no gradient; every later input does, as inside the network
        steps = {label: part_train_step(module.to(memory_format=train_fmt),
                                        x.to(memory_format=train_fmt).requires_grad_(label != "stem"), precision,
                                        labels if label == "head" else None)
                 for c in LETTERS for label, module, x in _parts(models[c], shapes, image, feats, c)}
        return {**steps, **{f"net:{c * len(shapes)}": train_step(
            models[c].to(memory_format=train_fmt), image.to(memory_format=train_fmt),
            lambda out: nn.functional.cross_entropy(out.float(), labels), precision) for c in LETTERS}}

    records: dict = {}

    def infer_steps():
        # a copy per call: the timing hooks stay off the training modules and off earlier copies
        records.update({label: [] for label in rows})
        return {f"net:{c * len(shapes)}": timed_forward(
                    (fuse_bn(models[c]) if fold else copy.deepcopy(models[c]).eval()).to(memory_format=infer_fmt),
                    image.to(memory_format=infer_fmt), precision,
                    ["stem", *(f"{i + 1}{c}" for i in range(len(shapes))), "head"], records, warmup)
                for c in LETTERS}
    parts = {"rows": rows, "shapes": shapes, "infer_records": records}
    return parts, {"train": train_steps, "infer": infer_steps}


def time_contenders(step_sets: list[dict], *, warmup: int, iters: int) -> dict:
    """{label: {train_ms, infer_ms, train_spread_ms, infer_spread_ms, spent_s}} of every step of
    every set, all timed in the same rounds: training first, then inference."""
    out: dict = {}
    for kind in ("train", "infer"):
        steps = {label: fn for factory in step_sets for label, fn in factory[kind]().items()}
        for label, stats in time_alternating(steps, warmup=warmup, rounds=iters).items():
            row = out.setdefault(label, {"spent_s": 0.0})
            row["spent_s"] += stats.pop("spent_s")
            row[f"{kind}_ms"] = stats.pop("median_ms")
            row[f"{kind}_spread_ms"] = stats
    return out


def part_table(parts: dict, timings: dict) -> dict:
    """The table: {"stem": row, "head": row, "stages": [{"stage", "input_shape", "M": row, "F": row}],
    "scale", "anchors"}, a row being the part's params and macs (per image), its own median times
    (train_part_ms alone, infer_part_ms inside its network) and its share of the network's time
    (train_ms, infer_ms): the part's median times the all-M (or all-F) network's median over the
    sum of its parts' medians. On a loaded machine every step meets a pause somewhere, so a
    network's median is longer than the sum of its parts' medians; the scale puts it back,
    and each anchor network's prediction is then its own measured median."""
    n, rows, scale = len(parts["shapes"]), {}, {}
    raw = {"train": {label: timings[label]["train_ms"] for label in parts["rows"]},
           "infer": {label: summarize(parts["infer_records"][label])["median_ms"] for label in parts["rows"]}}
    anchors = {f"{c * n}": {f"{kind}_ms": timings[f"net:{c * n}"][f"{kind}_ms"] for kind in raw} for c in LETTERS}
    for kind, ms in raw.items():
        scale[kind] = {c: anchors[c * n][f"{kind}_ms"] / sum(ms[label] for label in ("stem", "head", *(
            f"{i + 1}{c}" for i in range(n)))) for c in LETTERS}
    for label, row in parts["rows"].items():
        rows[label] = dict(row)
        for kind, ms in raw.items():
            factor = scale[kind][label[-1]] if label[-1] in LETTERS else sum(scale[kind].values()) / len(LETTERS)
            rows[label].update({f"{kind}_part_ms": ms[label], f"{kind}_ms": ms[label] * factor})
    return {"stem": rows["stem"], "head": rows["head"],
            "stages": [{"stage": i + 1, "input_shape": list(shape), **{c: rows[f"{i + 1}{c}"] for c in LETTERS}}
                       for i, shape in enumerate(parts["shapes"])], "scale": scale, "anchors": anchors}


def predict(table: dict, placement: str, batch_size: int) -> dict:
    """Params and MACs per image (exact) and predicted step times and img/s of one placement."""
    rows = [table["stem"], table["head"], *(stage[c] for stage, c in zip(table["stages"], placement, strict=True))]
    out = {"placement": placement, **{k: sum(r[k] for r in rows) for k in ("params", "macs", "train_ms", "infer_ms")}}
    out["train_images_per_sec"] = batch_size / out["train_ms"] * 1e3
    out["infer_images_per_sec"] = batch_size / out["infer_ms"] * 1e3
    return out
