"""fmb vs timm vs torchvision on a CUDA GPU: training images/s and fast inference, one process.

The GPU counterpart of peers.py (same alternating race: every round times each contender once
with torch.utils.benchmark's Timer, which synchronizes the GPU around each timing; a figure is
the median over rounds). Rows:
  train fp32                 timm eager fp32: the baseline of every ratio
  train bf16 cl              each library eager, bf16 autocast + channels_last (same mode)
  train bf16 cl compiled     fmb and timm under torch.compile (what `fmb train` runs on CUDA for
                             runs of >= 10,000 steps: bf16-mixed, channels_last, compile); with --compile
  infer fast                 fmb BN folded + channels_last + bf16 vs timm eager fp32 and timm
                             bf16 channels_last; and fmb bf16 channels_last with BN kept
Prints images/s and ratios (> 1: fmb is faster).

    python benchmarks/gpu_peers.py --resolutions 128 300 --batch-size 128 --compile
"""
from __future__ import annotations

import argparse
import json
import time

import timm
import torch
import torchvision
from peers import FAMILIES, infer_fn, race, train_fn

from fmb.models import create_model, fuse_bn


def bf16():
    return torch.autocast("cuda", dtype=torch.bfloat16)


def on_gpu(model, channels_last: bool):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return model.cuda().to(memory_format=fmt)


def train_race(fmb_name, x, y, args) -> dict:
    timm_name, tv_name = FAMILIES[fmb_name]
    xcl = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    contenders = {
        "timm fp32": train_fn(on_gpu(timm.create_model(timm_name), False), x, y),
        "fmb bf16 cl": train_fn(on_gpu(create_model(fmb_name), True), xcl, y, bf16),
        "timm bf16 cl": train_fn(on_gpu(timm.create_model(timm_name), True), xcl, y, bf16),
        "torchvision bf16 cl": train_fn(on_gpu(getattr(torchvision.models, tv_name)(), True), xcl, y, bf16),
    }
    compile_s = {}
    if args.compile:
        for name, build in (("fmb", lambda: create_model(fmb_name)), ("timm", lambda: timm.create_model(timm_name))):
            fn = train_fn(torch.compile(on_gpu(build(), True)), xcl, y, bf16)
            start = time.perf_counter()
            fn()  # compile outside the race; the time is reported
            torch.cuda.synchronize()
            compile_s[name] = round(time.perf_counter() - start, 1)
            print(f"  compiled {name}'s training step in {compile_s[name]} s", flush=True)  # a cut run keeps this
            contenders[f"{name} bf16 cl compiled"] = fn
    rows = race(contenders, args)
    return {"rows": rows, "compile_s": compile_s}


def infer_race(fmb_name, x, args) -> dict:
    timm_name, _ = FAMILIES[fmb_name]
    xcl = x.contiguous(memory_format=torch.channels_last)
    torch.manual_seed(0)
    fast = fuse_bn(create_model(fmb_name)).cuda().to(memory_format=torch.channels_last)
    contenders = {
        "timm fp32": infer_fn(on_gpu(timm.create_model(timm_name), False), x),
        "timm bf16 cl": infer_fn(on_gpu(timm.create_model(timm_name), True), xcl, bf16),
        "fmb fast bf16": infer_fn(fast, xcl, bf16),
        # BN kept: under bf16 autocast cuDNN adds a folded conv's bias in a separate kernel
        # slower than BN's own channels_last kernel (benchmarks/gpu_diag.py, H200).
        "fmb bf16 cl BN kept": infer_fn(on_gpu(create_model(fmb_name), True).eval(), xcl, bf16),
    }
    return race(contenders, args)


def show(title: str, rows: dict, batch: int) -> None:
    print(f"\n== {title}")
    base = rows["timm fp32"]["median_ms"]
    same = rows.get("timm bf16 cl", rows["timm fp32"])["median_ms"]
    for name, r in rows.items():
        line = f"  {name:26s} {r['median_ms']:8.2f} ms  {batch / r['median_ms'] * 1e3:9.0f} img/s"
        if name.startswith("fmb"):
            line += f"   x{base / r['median_ms']:.2f} vs timm fp32, x{same / r['median_ms']:.2f} vs timm bf16 cl"
            if "compiled" in name and "timm bf16 cl compiled" in rows:
                line += f", x{rows['timm bf16 cl compiled']['median_ms'] / r['median_ms']:.2f} vs timm compiled"
        print(line)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["efficientnetv2_s"], choices=list(FAMILIES))
    p.add_argument("--resolutions", type=int, nargs="+", default=[128, 300])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--infer-models", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--infer-resolution", type=int, default=224)
    p.add_argument("--infer-batch-size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also race fmb and timm under torch.compile")
    p.add_argument("--json", help="write all numbers here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_peers.py needs a CUDA GPU; benchmarks/peers.py is the CPU race")
    torch.backends.cudnn.benchmark = True  # what Lightning's Trainer sets for fixed-size batches
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, timm {timm.__version__}, "
          f"torchvision {torchvision.__version__}, {args.rounds} rounds x {args.iters} calls")
    results = {"device": torch.cuda.get_device_name(), "train": {}, "infer": {}}
    for name in args.models:
        for res in args.resolutions:
            x = torch.randn(args.batch_size, 3, res, res, device="cuda")
            y = torch.randint(0, 1000, (args.batch_size,), device="cuda")
            out = train_race(name, x, y, args)
            results["train"][f"{name}@{res}"] = out
            show(f"train {name} {res}px batch {args.batch_size} (compile s: {out['compile_s']})",
                 out["rows"], args.batch_size)
            torch.compiler.reset()
    x = torch.randn(args.infer_batch_size, 3, args.infer_resolution, args.infer_resolution, device="cuda")
    for name in args.infer_models:
        rows = infer_race(name, x, args)
        results["infer"][name] = rows
        show(f"infer {name} {args.infer_resolution}px batch {args.infer_batch_size}", rows, args.infer_batch_size)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **results}, f, indent=2)


if __name__ == "__main__":
    main()
