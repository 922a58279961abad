"""EMA of the weights with TensorFlow's warm-up, on Lightning's weight-averaging machinery.

The official code keeps `tf.train.ExponentialMovingAverage(decay, num_updates=global_step)`,
whose decay at update n is min(decay, (1 + n) / (10 + n)): 0.18, 0.25, 0.31, ... reaching
0.9999 only after ~90k steps. A fixed 0.9999 from the start leaves the EMA at its
initialisation for thousands of steps, so EMA validation early in a run means nothing.

Lightning's `EMAWeightAveraging` does the rest (averaged copy, swap in for validation, the
averaged weights in `state_dict` of checkpoints with the raw ones in `current_model_state`,
and the update count `n_averaged` in `averaging_state`, so a resumed run continues the
warm-up where it stopped). We only replace its fixed-decay average.
"""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from fmb.compat.lightning import ema_averaged_module, ema_use_multi_avg_fn


def warmup_decay(decay: float, n):
    """TF's decay for the n-th update (n counts from 1): min(decay, (1 + n) / (10 + n)).
    Works on floats and on tensors (then no host sync is needed)."""
    warm = (1 + n) / (10 + n)
    return torch.clamp(warm, max=decay) if torch.is_tensor(warm) else min(decay, warm)


def warmup_ema_multi_avg_fn(decay: float):
    """`AveragedModel` multi_avg_fn: lerp every tensor towards the model by 1 - decay_n.

    `AveragedModel` copies the model at its first update and passes, at each later update,
    the number of updates already averaged; this update is number num_averaged + 1 (TF's
    global_step after the step). The first update is therefore a copy where TF would take
    0.18 of the initial weights: a difference that is gone after a few dozen steps.
    """

    @torch.no_grad()
    def update(ema_params, model_params, num_averaged):
        d = warmup_decay(decay, num_averaged.to(torch.float32) + 1)
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, model_params, (1 - d).to(ema_params[0].dtype))
        else:  # integer buffers (BN's num_batches_tracked): follow the model
            for ema, current in zip(ema_params, model_params):
                ema.copy_(current)

    return update


class WarmupEMAWeightAveraging(EMAWeightAveraging):
    """Lightning's `EMAWeightAveraging` with the official warm-up (`warmup=False`: fixed decay).

    Takes every argument of `EMAWeightAveraging` (device, use_buffers, update_every_n_steps,
    update_starting_at_step, ...). With `update_every_n_steps > 1`, n counts updates, not steps.
    """

    def __init__(self, decay: float = 0.9999, warmup: bool = True, **kwargs):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        super().__init__(decay=decay, **kwargs)
        self.decay, self.warmup = decay, warmup
        if warmup:
            ema_use_multi_avg_fn(self, warmup_ema_multi_avg_fn(decay))

    def raw_model(self):
        """The raw (un-averaged) model while validation runs on the averaged weights:
        Lightning swaps them, so the averaged copy then holds the raw ones. None before fit."""
        return ema_averaged_module(self)
