"""One-off: where fmb's fast inference path (fuse_bn + cl + bf16) differs from timm's bf16 + cl
on a CUDA GPU. Prints torch profiler's top ops and kernels by CUDA time for fmb folded, timm,
and timm folded (3 forwards of V2-S, 224 px, batch 256 each)."""
import timm
import torch
from torch.profiler import ProfilerActivity, profile

from fmb.models import create_model, fuse_bn

torch.backends.cudnn.benchmark = True
x = torch.randn(256, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last)
models = {
    "fmb fast": fuse_bn(create_model("efficientnetv2_s")).cuda().to(memory_format=torch.channels_last),
    "timm bf16 cl": timm.create_model("efficientnetv2_s").cuda().eval().to(memory_format=torch.channels_last),
    "timm fused": fuse_bn(timm.create_model("efficientnetv2_s")).cuda().to(memory_format=torch.channels_last),
}
for name, m in models.items():
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(5):
            m(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
            for _ in range(3):
                m(x)
            torch.cuda.synchronize()
    print(f"\n==== {name}")
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70))
