"""How fast this model trains in fp32 and in bf16 on this CPU: the measurement `auto` decides
precision from on CPUs with native bf16 (a generic small net picked bf16 for models where
it was slower, e.g. EfficientNet-B0). A few steps each way, alternated, cached per machine,
model, image size, batch, threads and torch version (fmb/device.py's cache)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fmb.device import cached_measurement, step_ms
from fmb.models import cpu_fast_paths, create_model
from fmb.utils import cpu_model

PROBE_BATCH_MAX = 16  # enough to show which kernels win; small enough to take seconds


def _train_step(model, x, y, bf16: bool):
    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    return step


def measure_model_precision(model_kwargs: dict, image_size: int, batch_size: int) -> dict:
    """{"fp32_ms", "bf16_ms"}: the model's training step in fp32 NCHW and in bf16 channels_last."""
    batch = max(2, min(batch_size, PROBE_BATCH_MAX))
    key = "|".join(str(v) for v in ("train-step", cpu_model(), f"torch {torch.__version__}",
                                    f"threads {torch.get_num_threads()}", sorted(model_kwargs.items()),
                                    image_size, batch))

    def measure() -> dict:
        torch.manual_seed(0)
        model = cpu_fast_paths(create_model(**model_kwargs, num_classes=10)).train()
        x, y = torch.randn(batch, 3, image_size, image_size), torch.randint(0, 10, (batch,))
        cl = model.to(memory_format=torch.channels_last)
        fp32, bf16 = [], []
        for _ in range(2):  # alternate, so load on a shared machine hits both
            model.to(memory_format=torch.contiguous_format)
            fp32.append(step_ms(_train_step(model, x, y, False)))
            cl.to(memory_format=torch.channels_last)
            bf16.append(step_ms(_train_step(cl, x.contiguous(memory_format=torch.channels_last), y, True)))
        return {"fp32_ms": round(min(fp32), 2), "bf16_ms": round(min(bf16), 2)}
    return cached_measurement(key, measure)
