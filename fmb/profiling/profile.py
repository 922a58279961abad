"""`profile_model`: params, FLOPs, latency, throughput and memory of one model, in total and per stage.

Result keys (a JSON-serialisable dict):
  model                 the create_model kwargs profiled; variant, blocks (placement string)
  params, macs, flops   totals; MACs/FLOPs per image at `resolution` (FlopCounterMode: convs and
                        linears, FLOPs = 2 x MACs)
  resolution, batch_size (after any OOM halving), device, precision, mode, channels_last,
  compile, fast, warmup, iters, threads, torch
  infer_latency_ms      median ms per batch of an inference forward (None if mode == "train")
  infer_latency_spread_ms {p25_ms, p75_ms, min_ms, max_ms, iters}
  infer_images_per_sec  batch_size / median latency
  train_step_ms         median ms of forward + cross-entropy + backward + SGD step (None if "infer")
  train_step_spread_ms, train_images_per_sec   as for inference
  peak_train_memory_mb  CUDA: max allocated during a step; CPU: params + grads + momentum +
                        tensors saved for backward (peak_train_memory_source says which)
  stages                rows {stage, block, params, macs, forward_ms, activation_mb} for stage 0
                        (stem, block "stem"), stages 1..N and "head"; params and macs sum to the
                        totals; forward_ms times that part alone (eager) on its real input;
                        activation_mb is what it saves for backward. [] when per_stage=False.
  compare_blocks        rows from fmb.profiling.compare.compare_blocks, or None
  notes                 what happened on the way (OOM retries, ignored flags)
"""
from __future__ import annotations

import math

import torch

from fmb.errors import FmbError, choice_error
from fmb.models import build_stages, create_model, fuse_bn
from fmb.profiling.compare import compare_blocks as compare_stage_blocks
from fmb.profiling.flops import count_macs, count_params
from fmb.profiling.memory import activation_mb_per_part, peak_train_memory
from fmb.profiling.stages import stage_rows
from fmb.profiling.steps import PRECISIONS, autocast, make_infer_step, make_train_step
from fmb.profiling.timing import measure

MODES = ("infer", "train", "both")


def check_inputs(model_kwargs: dict, *, resolution, batch_size, device, precision, mode) -> None:
    """Raise a one-line FmbError for any input that cannot be profiled, before any work."""
    if mode not in MODES:
        raise choice_error("profile mode", mode, MODES)
    if precision not in PRECISIONS:
        raise choice_error("precision", precision, PRECISIONS)
    if str(device).split(":")[0] not in ("cpu", "cuda"):
        raise choice_error("device", device, ("cpu", "cuda"))
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise FmbError(f"--device {device} requested but no CUDA GPU is available here; use --device cpu")
    if precision == "fp16" and not str(device).startswith("cuda"):
        raise FmbError("fp16 on CPU is not supported (autocast fp16 is a GPU path); use --precision bf16 or fp32")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FmbError(f"invalid batch size {batch_size!r}: expected an integer >= 1")
    _, stages, _ = build_stages(model_kwargs.get("name"), model_kwargs.get("blocks"),
                                model_kwargs.get("stage_overrides"), model_kwargs.get("width_mult"),
                                model_kwargs.get("depth_mult"))
    total_stride = 2 * math.prod(s.stride for s in stages)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < total_stride:
        raise FmbError(f"invalid resolution {resolution!r}: this network's total stride is {total_stride}, "
                       f"so expected an integer >= {total_stride} (e.g. {max(total_stride, 224)})")


def _prepare(model, *, device, channels_last, compile, fast):
    """(train model, inference model, eager inference model): the fast path folds BN and
    goes channels_last for inference; training is only ever changed by the explicit flags."""
    train_model = model.to(device)
    infer_model = fuse_bn(train_model) if fast else train_model
    if channels_last or fast:
        infer_model = infer_model.to(memory_format=torch.channels_last)
    if channels_last:
        train_model = train_model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(train_model), torch.compile(infer_model), infer_model
    return train_model, infer_model, infer_model


def _measure(model_kwargs, batch_size, opts, result) -> None:
    device, precision, mode = opts["device"], opts["precision"], opts["mode"]
    model = create_model(**model_kwargs)
    train_model, infer_model, eager_infer = _prepare(model, device=device, channels_last=opts["channels_last"],
                                                     compile=opts["compile"], fast=opts["fast"])
    res = opts["resolution"]
    x = torch.randn(batch_size, model.conv_stem.in_channels, res, res, device=device)
    x_infer = x.to(memory_format=torch.channels_last) if opts["channels_last"] or opts["fast"] else x
    x = x.to(memory_format=torch.channels_last) if opts["channels_last"] else x
    y = torch.randint(0, model.num_classes or model.num_features, (batch_size,), device=device)
    timing = {"warmup": opts["warmup"], "iters": opts["iters"], "device": device}
    if mode in ("infer", "both"):
        stats = measure(make_infer_step(infer_model, x_infer, precision), **timing)
        result.update(infer_latency_ms=stats["median_ms"], infer_images_per_sec=batch_size / stats["median_ms"] * 1e3,
                      infer_latency_spread_ms={k: v for k, v in stats.items() if k != "median_ms"})
    if mode in ("train", "both"):
        step = make_train_step(train_model, x, y, precision)
        stats = measure(step, **timing)
        result.update(train_step_ms=stats["median_ms"], train_images_per_sec=batch_size / stats["median_ms"] * 1e3,
                      train_step_spread_ms={k: v for k, v in stats.items() if k != "median_ms"})
        act = sum(activation_mb_per_part(model, x, autocast(device, precision)).values())
        mb, source = peak_train_memory(model, step, device, act)
        result.update(peak_train_memory_mb=mb, peak_train_memory_source=source)
    if opts["per_stage"]:
        result["stages"] = stage_rows(model, eager_infer, x_infer, precision=precision, device=device,
                                      warmup=opts["warmup"], iters=opts["iters"])
    result["batch_size"] = batch_size


def profile_model(model_kwargs: dict, *, resolution: int = 224, batch_size: int = 32, device: str = "cpu",
                  precision: str = "fp32", mode: str = "both", channels_last: bool = False, compile: bool = False,
                  fast: bool = False, warmup: int = 3, iters: int = 10, per_stage: bool = True,
                  compare_blocks: bool = False) -> dict:
    """Profile `create_model(**model_kwargs)`; see the module docstring for the result's keys."""
    model_kwargs = dict(model_kwargs)
    check_inputs(model_kwargs, resolution=resolution, batch_size=batch_size, device=device,
                 precision=precision, mode=mode)
    with torch.device("meta"):  # params and FLOPs need shapes only
        meta = create_model(**model_kwargs)
    result = {
        "model": model_kwargs, "variant": model_kwargs["name"], "blocks": meta.placement,
        "params": count_params(meta), "macs": count_macs(meta, resolution), "resolution": resolution,
        "batch_size": batch_size, "device": device, "precision": precision, "mode": mode,
        "channels_last": channels_last, "compile": compile, "fast": fast, "warmup": warmup, "iters": iters,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "infer_latency_ms": None, "infer_latency_spread_ms": None, "infer_images_per_sec": None,
        "train_step_ms": None, "train_step_spread_ms": None, "train_images_per_sec": None,
        "peak_train_memory_mb": None, "peak_train_memory_source": None, "stages": [],
        "compare_blocks": None, "notes": [],
    }
    result["flops"] = 2 * result["macs"]
    if fast and mode == "train":
        result["notes"].append("--fast changes only inference; mode 'train' ignores it")
    opts = dict(resolution=resolution, device=device, precision=precision, mode=mode, channels_last=channels_last,
                compile=compile, fast=fast, warmup=warmup, iters=iters, per_stage=per_stage)
    while True:
        try:
            _measure(model_kwargs, batch_size, opts, result)
            if compare_blocks:
                result["compare_blocks"] = compare_stage_blocks(
                    model_kwargs, resolution=resolution, batch_size=batch_size, device=device,
                    precision=precision, mode=mode, channels_last=channels_last, fast=fast,
                    warmup=warmup, iters=iters)
            return result
        except torch.OutOfMemoryError:
            if batch_size == 1:
                raise FmbError(f"out of memory on {device} even at batch size 1", exit_code=1) from None
            torch.cuda.empty_cache()
            result["notes"].append(f"out of memory at batch {batch_size}; halved to {batch_size // 2} and retried")
            batch_size //= 2
