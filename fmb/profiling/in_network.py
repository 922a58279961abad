"""Inference time of each part measured inside the whole network, by timestamps at its edges.

A part timed alone runs with its weights and input hot in the caches (and the timer's own
untimed calls just before); inside a network the other stages have pushed them out. On this
CPU that made the sum of isolated parts 10-30% faster than the network for inference, while a
training step is long enough (backward, optimizer) for the difference to vanish. So the
inference column of the cost table comes from the all-MBConv and all-Fused networks
themselves: the time between entering one part and entering the next.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from fmb.profiling.measure import autocast


def edges(model: nn.Module) -> list[nn.Module]:
    """The module entered at the start of each part: the stem, every stage, the head."""
    return [model.conv_stem, *model.blocks, model.conv_head]


def timed_forward(model: nn.Module, x: torch.Tensor, precision: str, labels: list[str], records: dict,
                  skip: int):
    """An inference step of `model` (eval mode) that appends each part's ms to records[label]
    (labels in `edges` order), except for its first `skip` calls (its warm-up)."""
    cuda = x.device.type == "cuda"
    marks: list = []
    calls = [0]

    def mark(*_):
        if cuda:  # events, not synchronisation: the GPU keeps its queue full between parts
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            marks.append(event)
        else:
            marks.append(time.perf_counter())

    for module in edges(model):
        module.register_forward_pre_hook(mark)
    model.register_forward_hook(mark)

    def step():
        marks.clear()
        with torch.inference_mode(), autocast(x.device.type, precision):
            model(x)
        calls[0] += 1
        if calls[0] <= skip:
            return
        if cuda:
            torch.cuda.synchronize()
            ms = [a.elapsed_time(b) for a, b in zip(marks, marks[1:])]
        else:
            ms = [(b - a) * 1e3 for a, b in zip(marks, marks[1:])]
        for label, value in zip(labels, ms, strict=True):
            records[label].append(value)
    return step
