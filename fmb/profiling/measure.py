"""How each number is measured: params, MACs, time (of an inference forward or a train
step), memory.

MACs come from torch's FlopCounterMode, which counts the matmul-like ops (convs, linears)
at 2 FLOPs per MAC; BN, SiLU, pooling and adds are not counted, as in the papers' figures.
Times come from torch.utils.benchmark.Timer, memory from autograd's saved-tensor hooks
(CPU) or the CUDA allocator's peak.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fmb.models.small_maps import plain_convs

MB = 2 ** 20
PRECISIONS = ("fp32", "bf16", "fp16")
MIN_IQR_SAMPLES = 4  # quartiles of fewer samples only interpolate between the extremes


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _counted_forward(module: nn.Module, x: torch.Tensor) -> FlopCounterMode:
    """An eval-mode forward of `x` under FlopCounterMode; the counter holds per-module FLOPs."""
    was_training = module.training
    module.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad(), plain_convs(module):
        module(x)
    module.train(was_training)
    return counter


def _image_batch(model: nn.Module, resolution: int, batch_size: int, in_chans: int) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.zeros(batch_size, in_chans, resolution, resolution, device=device)


def count_module_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward of `x` through any module (a block, a stage, a model)."""
    return _counted_forward(module, x).get_total_flops() // 2


def count_macs(model: nn.Module, resolution: int, batch_size: int = 1, in_chans: int = 3) -> int:
    """MACs of one forward pass at `resolution`. Works on the meta device, so even XL at
    512 px costs no compute."""
    return count_module_macs(model, _image_batch(model, resolution, batch_size, in_chans))


def count_macs_per_stage(model: nn.Module, resolution: int, batch_size: int = 1, in_chans: int = 3) -> dict:
    """MACs of an EfficientNet split as {0: stem, 1: n, ..., N: n, "head": n}; they sum to the total.

    Stage i is `model.blocks[i-1]`; the head (conv_head, pooling, classifier) is the rest.
    """
    counter = _counted_forward(model, _image_batch(model, resolution, batch_size, in_chans))
    by_module = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    parts = {0: by_module.get(f"{root}.conv_stem", 0)}
    for i in range(len(model.blocks)):
        parts[i + 1] = by_module.get(f"{root}.blocks.{i}", 0)
    parts["head"] = counter.get_total_flops() // 2 - sum(parts.values())
    return parts


def autocast(device_type: str, precision: str):
    """Mixed precision via autocast (weights stay fp32), or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def infer_step(run, x: torch.Tensor, precision: str):
    """One inference forward of `x` through `run` (a module in eval mode, or a callable)."""
    def step():
        with torch.inference_mode(), autocast(x.device.type, precision):
            return run(x)
    return step


def train_step(model: nn.Module, x: torch.Tensor, loss_fn, precision: str):
    """Forward, `loss_fn(output)`, backward, SGD step; fp16 uses a GradScaler as a real fp16 run would."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(x.device.type, enabled=precision == "fp16")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(x.device.type, precision):
            loss = loss_fn(model(x))
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return step


def _timer_class():
    # torch.utils.benchmark imports cpp_extension, which logs "No CUDA runtime is found" where a
    # CUDA toolkit is installed without a GPU: noise here, as the timer compiles nothing.
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        cpp_log.setLevel(level)
    return Timer


def time_call(fn, *, warmup: int, iters: int) -> dict:
    """Median and spread, in ms, of `iters` timed calls of `fn` after `warmup` untimed ones.

    Each call is one `Timer.timeit(1)`: Timer synchronizes the accelerator around it, keeps
    this process's thread count (its own default is 1) and calls `fn` untimed before each
    timed call (twice in torch 2.14), so a profile makes about warmup + 3 x iters calls.
    """
    for _ in range(warmup):
        fn()
    timer = _timer_class()("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return summarize([timer.timeit(1).times[0] * 1e3 for _ in range(iters)])


def time_alternating(steps: dict, *, warmup: int, rounds: int, calls_per_round: int = 1) -> dict:
    """{label: summarize(...) + spent_s} of `rounds` timed calls of each `steps[label]`, round by round
    (a round's figure is the mean of `calls_per_round` calls). `fmb profile` and benchmarks/ time
    contenders with it.

    Each contender gets its own `warmup` untimed calls first (the first one also pays the
    process's warm-up, untimed); then every round times each contender once, the order
    rotated so that none always goes first while the machine's load drifts. Medians of such
    rounds are what makes contenders comparable on a shared machine, whatever order they
    were listed in. `spent_s` is the wall time a contender's calls took, untimed ones included:
    what measuring it cost.
    """
    spent = dict.fromkeys(steps, 0.0)
    for label, fn in steps.items():
        started = time.perf_counter()
        for _ in range(warmup):
            fn()
        spent[label] += time.perf_counter() - started
    timer_class = _timer_class()
    timers = {label: timer_class("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
              for label, fn in steps.items()}
    labels, times = list(steps), {label: [] for label in steps}
    for r in range(rounds if labels else 0):
        shift = r % len(labels)
        for label in labels[shift:] + labels[:shift]:
            started = time.perf_counter()
            times[label].append(timers[label].timeit(calls_per_round).mean * 1e3)
            spent[label] += time.perf_counter() - started
    return {label: {**summarize(ms), "spent_s": spent[label]} for label, ms in times.items()}


def summarize(times_ms: list[float]) -> dict:
    """{median_ms, p25_ms, p75_ms, min_ms, max_ms, iters}; the quartiles are None below
    MIN_IQR_SAMPLES samples, where they would say nothing the min and max do not."""
    p25 = p75 = None
    if len(times_ms) >= MIN_IQR_SAMPLES:
        p25, _, p75 = statistics.quantiles(times_ms, n=4, method="inclusive")
    return {"median_ms": statistics.median(times_ms), "p25_ms": p25, "p75_ms": p75,
            "min_ms": min(times_ms), "max_ms": max(times_ms), "iters": len(times_ms)}


def saved_mb_by_group(model: nn.Module, x: torch.Tensor, groups: dict, precision: str) -> dict:
    """{label: MB that `groups[label]`'s modules save for backward} in one training forward of `x`.

    What autograd keeps between forward and backward, counted exactly with
    `saved_tensors_hooks`: parameters excluded, a storage shared by several tensors counted once.
    """
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    seen, saved, current = set(), dict.fromkeys(groups, 0), [None]
    handles = [m.register_forward_pre_hook(lambda *_a, label=label: current.__setitem__(0, label))
               for label, modules in groups.items() for m in modules]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if current[0] is not None and ptr not in param_ptrs and ptr not in seen:
            seen.add(ptr)
            saved[current[0]] += t.untyped_storage().nbytes()
        return t

    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(x.device.type, precision):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {label: n / MB for label, n in saved.items()}


def peak_train_memory(model: nn.Module, step, device: str, activation_mb: float) -> tuple[float, str]:
    """(MB, how it was measured). CUDA: max allocated during one step (weights, grads,
    optimizer state, activations). CPU has no allocator statistics, so the same sum estimated:
    params + grads + SGD momentum + tensors saved for backward."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / MB, "cuda max_memory_allocated during one train step"
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / MB
    return 3 * param_mb + activation_mb, "cpu estimate: params + grads + SGD momentum + tensors saved for backward"
