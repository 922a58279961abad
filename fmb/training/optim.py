"""Optimizers and per-step learning-rate schedules of the EfficientNetV2 recipe."""
from __future__ import annotations

import math

import torch
from torch import nn

from fmb.errors import choice_error
from fmb.training.rmsprop_tf import RMSpropTF

# "rmsprop" is the paper's (TensorFlow's) RMSProp; "rmsprop_torch" is torch.optim.RMSprop with
# the same numbers, whose steps are far larger (eps outside the sqrt, squared average from 0).
OPTIMIZERS = ("rmsprop", "rmsprop_torch", "sgd", "adamw")
SCHEDULES = ("cosine", "exponential", "constant")


def param_groups(model: nn.Module, weight_decay: float, is_new=None, new_lr_factor: float = 1.0) -> list[dict]:
    """Weight decay on conv/linear weights only: not on BN parameters or biases (all 1-D).

    Fine-tuning: the parameters `is_new(name)` marks (the new classifier, stages that start
    fresh) get groups of their own whose lr is the base lr × `new_lr_factor`; frozen ones
    (requires_grad False) get none."""
    decay, no_decay, new_decay, new_no_decay = [], [], [], []
    split = is_new is not None and new_lr_factor != 1.0
    for name, param in model.named_parameters():
        if param.requires_grad:
            new = split and is_new(name)
            if param.ndim <= 1:
                (new_no_decay if new else no_decay).append(param)
            else:
                (new_decay if new else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if split:
        groups += [{"params": new_decay, "weight_decay": weight_decay, "lr_factor": new_lr_factor},
                   {"params": new_no_decay, "weight_decay": 0.0, "lr_factor": new_lr_factor}]
    return groups


def global_batch_size(per_device: int, trainer) -> int:
    """Images per optimizer step over all devices and nodes, with accumulation."""
    return per_device * trainer.world_size * trainer.accumulate_grad_batches


def effective_lr(lr: float, per_256: bool, global_batch: int) -> float:
    """The paper gives lr per 256 images; the run's lr scales with its global batch."""
    return lr * global_batch / 256 if per_256 else lr


def build_optimizer(name: str, groups, lr: float, momentum: float, fused: bool = False) -> torch.optim.Optimizer:
    """`fused`: torch's one-kernel AdamW/SGD step (the same arithmetic; V2-S's AdamW step took
    20 ms instead of 75 on the 2-core CPU). For parameters on CPU or CUDA only."""
    fused_kw = {"fused": True} if fused else {}
    groups = [{**g, "lr": lr * g["lr_factor"]} if isinstance(g, dict) and "lr_factor" in g else g for g in groups]
    if name == "rmsprop":
        # The paper's RMSProp (TF semantics): decay 0.9, momentum 0.9, eps 1e-3.
        return RMSpropTF(groups, lr=lr, alpha=0.9, momentum=momentum, eps=1e-3)
    if name == "rmsprop_torch":
        return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, momentum=momentum, eps=1e-3)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0, **fused_kw)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **fused_kw)
    raise choice_error("optimizer", name, OPTIMIZERS)


def lr_factor(step: int, *, name: str, total_steps: int, steps_per_epoch: float, warmup_epochs: float,
              decay_rate: float = 0.97, decay_epochs: float = 2.4, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimizer step `step`: linear warmup, then the schedule.

    The exponential schedule counts from step 0, as the official code (effnetv2 utils.py,
    WarmupLearningRateSchedule) does: warmup only replaces its first steps."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if name == "constant":
        return 1.0
    if name == "exponential":
        # Staircase decay as the official code: x decay_rate every decay_epochs, from step 0.
        return max(min_lr_ratio, decay_rate ** math.floor(step / (decay_epochs * steps_per_epoch)))
    if name == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    raise choice_error("schedule", name, SCHEDULES)
