"""`profile_model`: params, FLOPs, latency, throughput and memory of one model, in total and per stage.

Result keys of `profile_model` (a JSON-serialisable dict):
  model                 the create_model kwargs profiled; variant, blocks (placement string)
  params, macs, flops   totals; MACs/FLOPs per image at `resolution` (FlopCounterMode: convs and
                        linears, FLOPs = 2 x MACs)
  resolution, batch_size (after any OOM halving), device, precision, mode, channels_last,
  compile, fast, warmup, iters, threads, torch
  infer_latency_ms      median ms per batch of an inference forward (None if mode == "train")
  infer_latency_spread_ms {p25_ms, p75_ms, min_ms, max_ms, iters}; the quartiles are None
                        with fewer than 4 timed iterations
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
import os
import re

import torch
from torch import nn

from fmb.errors import FmbError, choice_error
from fmb.models import build_stages, cpu_fast_paths, create_model, folding_pays, fuse_bn
from fmb.profiling import compare
from fmb.profiling.measure import (
    PRECISIONS,
    count_macs,
    count_macs_per_stage,
    count_params,
    infer_step,
    peak_train_memory,
    saved_mb_by_group,
    time_call,
    train_step,
)

MODES = ("infer", "train", "both")
GIB = 2 ** 30


def _check_int(what: str, value, low: int, note: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise FmbError(f"invalid {what} {value!r}: expected an integer >= {low}{f' ({note})' if note else ''}")


def profile_device(name: str) -> str:
    """The device a profile of `name` runs on: `auto` is the GPU when there is one, else the CPU
    (the profiler times CPU and CUDA only, so not MPS as training's auto would)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def check_inputs(model_kwargs: dict, *, resolution, batch_size, device, precision, mode, warmup, iters) -> None:
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
    _check_int("batch size", batch_size, 1)
    _check_int("warmup", warmup, 0, "untimed runs")
    _check_int("iters", iters, 1, "timed runs; the IQR is reported from 4")
    _, stages, _ = build_stages(model_kwargs.get("name"), model_kwargs.get("blocks"),
                                model_kwargs.get("stage_overrides"), model_kwargs.get("width_mult"),
                                model_kwargs.get("depth_mult"))
    total_stride = 2 * math.prod(s.stride for s in stages)
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < total_stride:
        raise FmbError(f"invalid resolution {resolution!r}: this network's total stride is {total_stride}, "
                       f"so expected an integer >= {total_stride} (e.g. {max(total_stride, 224)})")


def model_parts(model: nn.Module) -> list[tuple]:
    """The rows of the per-stage report: (label, block, modules, run) for the stem (label 0),
    stages 1..N and "head": the modules it owns (for params and hooks) and a callable running it."""
    stem = [model.conv_stem, model.bn1, model.act1]
    head = [model.conv_head, model.bn2, model.act2, model.global_pool, model.dropout, model.classifier]
    parts = [(0, "stem", stem, lambda x: model.act1(model.bn1(model.conv_stem(x))))]
    for i, (stage, spec) in enumerate(zip(model.blocks, model.stages_spec, strict=True), start=1):
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


def stage_rows(model: nn.Module, infer_model: nn.Module, x: torch.Tensor, *, precision, warmup, iters) -> list[dict]:
    """One row per part of `model` (params, MACs, activation MB from the training model);
    forward_ms times each part of `infer_model` (maybe BN-folded) alone on its real input."""
    macs = count_macs_per_stage(model, x.shape[-1])  # per image, like the total
    parts = model_parts(model)
    activation = saved_mb_by_group(model, x, {label: modules for label, _, modules, _ in parts}, precision)
    runs = [run for _, _, _, run in model_parts(infer_model)]
    forward_ms = [time_call(infer_step(run, inp, precision), warmup=warmup, iters=iters)["median_ms"]
                  for run, inp in zip(runs, part_inputs(infer_model, x), strict=True)]
    return [{"stage": label, "block": block, "params": sum(count_params(m) for m in modules), "macs": macs[label],
             "forward_ms": ms, "activation_mb": activation[label]}
            for (label, block, modules, _), ms in zip(parts, forward_ms, strict=True)]


def _prepare(model, *, channels_last, compile, fast, fold):
    """(train model, inference model, eager inference model): the fast path folds BN (where
    `fold`: folding_pays) and goes channels_last for inference; training is only ever changed
    by the explicit flags."""
    infer_model = fuse_bn(model) if fast and fold else model
    if channels_last or fast:
        infer_model = infer_model.to(memory_format=torch.channels_last)
    train_model = model.to(memory_format=torch.channels_last) if channels_last else model
    if compile:
        return torch.compile(train_model), torch.compile(infer_model), infer_model
    return train_model, infer_model, infer_model


def measure_model(model_kwargs: dict, batch_size: int, opts: dict, result: dict) -> None:
    """Time and size one model at `batch_size`, filling `result` in place."""
    device, precision, mode, res = opts["device"], opts["precision"], opts["mode"], opts["resolution"]
    timing = {"warmup": opts["warmup"], "iters": opts["iters"]}
    model = cpu_fast_paths(create_model(**model_kwargs)).to(device)  # what fmb train and eval run
    train_model, infer_model, eager_infer = _prepare(model, channels_last=opts["channels_last"],
                                                     compile=opts["compile"], fast=opts["fast"],
                                                     fold=folding_pays(device, precision))
    x = torch.randn(batch_size, model.conv_stem.in_channels, res, res, device=device)
    x_infer = x.to(memory_format=torch.channels_last) if opts["channels_last"] or opts["fast"] else x
    x = x.to(memory_format=torch.channels_last) if opts["channels_last"] else x
    y = torch.randint(0, model.num_classes or model.num_features, (batch_size,), device=device)
    result["batch_size"] = batch_size
    if mode in ("infer", "both"):
        stats = time_call(infer_step(infer_model.eval(), x_infer, precision), **timing)
        result.update(infer_latency_ms=stats.pop("median_ms"), infer_latency_spread_ms=stats)
        result["infer_images_per_sec"] = batch_size / result["infer_latency_ms"] * 1e3
    if mode in ("train", "both"):
        step = train_step(train_model, x, lambda out: nn.functional.cross_entropy(out, y), precision)
        stats = time_call(step, **timing)
        result.update(train_step_ms=stats.pop("median_ms"), train_step_spread_ms=stats)
        result["train_images_per_sec"] = batch_size / result["train_step_ms"] * 1e3
        act = sum(saved_mb_by_group(model, x, {"model": [model]}, precision).values())
        result["peak_train_memory_mb"], result["peak_train_memory_source"] = peak_train_memory(model, step, device, act)
    if opts["per_stage"]:
        result["stages"] = stage_rows(model, eager_infer, x_infer, precision=precision, **timing)


def image_memory_floor(model: nn.Module, resolution: int, precision: str) -> int:
    """Bytes one image needs at the least: its input and the stem's output, alive together.
    Exact, not an estimate, so a size refused for it can never have fitted."""
    stem_bytes = 4 if precision == "fp32" else 2
    return (4 * model.conv_stem.in_channels * resolution ** 2
            + stem_bytes * model.conv_stem.out_channels * math.ceil(resolution / 2) ** 2)


def device_memory(device: str) -> int:
    """Total bytes of the GPU, or of the machine's RAM for the CPU."""
    if str(device).startswith("cuda"):
        return torch.cuda.mem_get_info(device)[1]
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fit_batch(model: nn.Module, *, resolution: int, batch_size: int, device: str, precision: str, notes: list) -> int:
    """The batch to start from: halved (and noted) while even its floor exceeds the device's
    memory, since on the CPU an allocation past RAM can end in the kernel's OOM killer rather
    than an error; a resolution where one image cannot fit is one FmbError line."""
    floor, total = image_memory_floor(model, resolution, precision), device_memory(device)
    if floor > total:
        fits = 32 * int(resolution * math.sqrt(total / floor) / 32)
        raise FmbError(f"resolution {resolution} cannot fit on {device}: one image's input and stem output "
                       f"alone take {floor / GIB:.1f} GiB of its {total / GIB:.1f} GiB (those alone fit up to "
                       f"about {fits} px, the whole network far less); try a much smaller --resolution")
    while batch_size * floor > total:
        notes.append(f"batch {batch_size} cannot fit in {total / GIB:.1f} GiB ({batch_size * floor / GIB:.1f} GiB "
                     f"for inputs and stem outputs alone); halved to {batch_size // 2}")
        batch_size //= 2
    return batch_size


def out_of_memory(exc: BaseException) -> str | None:
    """For an allocator failure (CUDA or CPU), how much it tried to allocate ('' if unsaid); else None."""
    text = str(exc)
    allocator = "out of memory" in text or "can't allocate memory" in text
    if not (isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and allocator)):
        return None
    if match := re.search(r"allocate (\d+) bytes", text):  # CPU: "you tried to allocate N bytes"
        return f"{int(match[1]) / 2 ** 30:.1f} GiB"
    match = re.search(r"[Tt]ried to allocate ([\d.]+ \w+)", text)  # CUDA: "Tried to allocate 2.00 GiB"
    return match[1] if match else ""


def profile_model(model_kwargs: dict, *, resolution: int = 224, batch_size: int = 32, device: str = "cpu",
                  precision: str = "fp32", mode: str = "both", channels_last: bool = False, compile: bool = False,
                  fast: bool = False, warmup: int = 3, iters: int = 10, per_stage: bool = True,
                  compare_blocks: bool = False) -> dict:
    """Profile `create_model(**model_kwargs)`; see the module docstring for the result's keys.

    A batch that cannot fit, or an out-of-memory, halves the batch and retries (noted in the
    result); at batch 1 it is one FmbError line naming the size that failed."""
    model_kwargs = dict(model_kwargs)
    check_inputs(model_kwargs, resolution=resolution, batch_size=batch_size, device=device,
                 precision=precision, mode=mode, warmup=warmup, iters=iters)
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
    opts = {"resolution": resolution, "device": device, "precision": precision, "mode": mode, "fast": fast,
            "channels_last": channels_last, "compile": compile, "warmup": warmup, "iters": iters,
            "per_stage": per_stage}
    batch_size = fit_batch(meta, resolution=resolution, batch_size=batch_size, device=device, precision=precision,
                           notes=result["notes"])
    while True:
        try:
            measure_model(model_kwargs, batch_size, opts, result)
            if compare_blocks:
                result["compare_blocks"] = compare.compare_blocks(
                    model_kwargs, resolution=resolution, batch_size=batch_size, device=device,
                    precision=precision, mode=mode, channels_last=channels_last, fast=fast,
                    warmup=warmup, iters=iters)
            return result
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            tried = out_of_memory(exc)
            if tried is None:
                raise
        torch.cuda.empty_cache()  # outside `except`: the traceback no longer holds the failed tensors
        if batch_size == 1:
            raise FmbError(f"out of memory on {device} profiling {model_kwargs['name']} at {resolution} px, "
                           f"even at batch size 1{f' (tried to allocate {tried})' if tried else ''}; "
                           "try a smaller --resolution", exit_code=1)
        result["notes"].append(f"out of memory at batch {batch_size}; halved to {batch_size // 2} and retried")
        batch_size //= 2
