"""Train-step memory: tensors saved for backward per part, and the step's peak.

Activation memory is what autograd keeps between forward and backward, counted exactly
with `saved_tensors_hooks` (parameters excluded, shared storages counted once).
"""
from __future__ import annotations

import torch
from torch import nn

from fmb.profiling.parts import model_parts

MB = 2 ** 20


def activation_mb_per_part(model: nn.Module, x: torch.Tensor, autocast_ctx) -> dict:
    """{part label: MB saved for backward by that part} for one training forward of `x`."""
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    seen, saved, current = set(), {}, [None]
    handles = []
    for label, _, modules, _ in model_parts(model):
        for m in modules:
            handles.append(m.register_forward_pre_hook(lambda *_a, label=label: current.__setitem__(0, label)))
        saved[label] = 0

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if current[0] is not None and ptr not in param_ptrs and ptr not in seen:
            seen.add(ptr)
            saved[current[0]] += t.untyped_storage().nbytes()
        return t

    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_ctx:
            out = model(x)
        del out
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
