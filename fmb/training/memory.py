"""Will one training step fit? An estimate of the activations from the model's stage table,
checked before any work so an image size that cannot fit fails in one line, not in the
kernel's OOM killer."""
from __future__ import annotations

import math
import os

from fmb.errors import FmbError

SAFETY = 1.5  # the allocator's slack and what the count leaves out (SE, residuals)


def activation_bytes(cfg, image_size: int, batch_size: int, *, training: bool = True) -> float:
    """Bytes of the activations one training step keeps for backward, or with `training=False`
    the most one inference forward holds at once (an estimate, within ~2x)."""
    precision = str(cfg.trainer.get("precision", "32"))
    return model_activation_bytes(cfg.model.variant, image_size, batch_size, blocks=cfg.model.blocks,
                                  stage_overrides=cfg.model.stage_overrides or None, width_mult=cfg.model.width_mult,
                                  depth_mult=cfg.model.depth_mult, training=training,
                                  bytes_per_value=2 if precision.startswith(("16", "bf16")) else 4)


def model_activation_bytes(variant_name: str, image_size: int, batch_size: int, *, blocks=None, stage_overrides=None,
                           width_mult=None, depth_mult=None, training: bool = True, bytes_per_value: int = 4) -> float:
    """`activation_bytes` from the model's fields (what `fmb profile` and exported files carry).

    Training keeps every block's activations until backward, so they add up; inference frees
    a block's once the next has them, so the largest block (with its input) is the peak."""
    from fmb.models import build_stages

    variant, stages, width = build_stages(variant_name, blocks, stage_overrides, width_mult, depth_mult)
    side = image_size / 2  # the stem's stride-2 conv
    channels = max(8, int(variant.stem_channels * width))
    held = [3 * channels * side * side]
    for stage in stages:
        for i in range(stage.repeats):
            if i == 0:
                side /= stage.stride
            hidden = channels * stage.expand_ratio
            held.append((channels + 3 * hidden + 2 * stage.out_channels) * side * side)
            channels = stage.out_channels
    elements = 3 * image_size * image_size + (sum(held) if training else max(held))
    return elements * bytes_per_value * batch_size * SAFETY


def available_bytes(device_type: str) -> float | None:
    if device_type == "cuda":
        import torch
        return float(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return float(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else None
        return float(pages * os.sysconf("SC_PAGE_SIZE")) if pages else None


def check_fits(cfg, image_size: int, batch_size: int, device_type: str, *, training: bool = True,
               size_key: str = "data.image_size", batch_key: str = "data.batch_size", need: float | None = None) -> None:
    """Refuse a step whose activations alone exceed the device's free memory; say what fits.
    `need` (bytes) replaces the estimate from `cfg` where there is no run config (fmb profile);
    `size_key`/`batch_key` are what the user sets, as the message names them."""
    free = available_bytes(device_type)
    if need is None:
        need = activation_bytes(cfg, image_size, batch_size, training=training)
    if free is None or need <= free:
        return
    sep = "=" if "." in size_key else " "  # config keys take key=value, options --flag value
    fits = int(image_size * math.sqrt(free / need)) // 32 * 32
    if fits >= 32:
        hint = f"{size_key}{sep}{fits} fits, or lower {batch_key}"
    else:
        per_image = need / batch_size
        hint = f"even 32 px is too much at this batch; {batch_key}{sep}{max(1, int(free // per_image))} fits"
    step = "one training step" if training else "one inference batch"
    raise FmbError(f"the activations of {step} at {size_key}{sep}{image_size} with "
                   f"{batch_key}{sep}{batch_size} need about {need / 2**30:,.1f} GiB, more than the "
                   f"{free / 2**30:,.1f} GiB free on {device_type}; {hint}")
