"""Will one training step fit? An estimate of the activations from the model's stage table,
checked before any work so an image size that cannot fit fails in one line, not in the
kernel's OOM killer."""
from __future__ import annotations

import math
import os

from fmb.errors import FmbError

SAFETY = 1.5  # the allocator's slack and what the count leaves out (SE, residuals)


def activation_bytes(cfg, image_size: int, batch_size: int) -> float:
    """Bytes of the activations one training step keeps for backward (an estimate, within ~2x)."""
    from fmb.models import build_stages

    variant, stages, width = build_stages(cfg.model.variant, cfg.model.blocks, cfg.model.stage_overrides or None,
                                          cfg.model.width_mult, cfg.model.depth_mult)
    side = image_size / 2  # the stem's stride-2 conv
    channels = max(8, int(variant.stem_channels * width))
    elements = 3 * channels * side * side
    for stage in stages:
        for i in range(stage.repeats):
            if i == 0:
                side /= stage.stride
            hidden = channels * stage.expand_ratio
            elements += (3 * hidden + 2 * stage.out_channels) * side * side
            channels = stage.out_channels
    precision = str(cfg.trainer.get("precision", "32"))
    per_element = 2 if precision.startswith(("16", "bf16")) else 4
    return elements * per_element * batch_size * SAFETY


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


def check_fits(cfg, image_size: int, batch_size: int, device_type: str) -> None:
    """Refuse a step whose activations alone exceed the device's free memory; say what fits."""
    free = available_bytes(device_type)
    need = activation_bytes(cfg, image_size, batch_size)
    if free is None or need <= free:
        return
    fits = int(image_size * math.sqrt(free / need)) // 32 * 32
    if fits >= 32:
        hint = f"data.image_size={fits} fits, or lower data.batch_size"
    else:
        per_image = need / batch_size
        hint = f"even 32 px is too much at this batch; data.batch_size={max(1, int(free // per_image))} fits"
    raise FmbError(f"the activations of one training step at data.image_size={image_size} with "
                   f"data.batch_size={batch_size} need about {need / 2**30:,.1f} GiB, more than the "
                   f"{free / 2**30:,.1f} GiB free on {device_type}; {hint}")
