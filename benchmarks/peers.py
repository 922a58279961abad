"""fmb vs timm vs torchvision EfficientNets, side by side in one process.

Same inputs, same thread count, contenders alternated round by round (so drift on a shared
machine hits all of them). Each round times every contender once with torch.utils.benchmark's
Timer (`--iters` calls after its own two untimed ones); a contender's figure is the median
over rounds of those per-call means.
Prints ms per batch and the ratio fmb/peer as a speed ratio (peer ms / fmb ms: > 1 means fmb
is faster) for:
  eager fp32 infer / train          fmb vs both peers
  fast infer                        fmb fuse_bn + channels_last (+ bf16 autocast, + torch.compile
                                    with --compile) vs timm eager fp32
  train bf16 autocast + channels_last   fmb vs timm eager fp32
  train auto                        the mode `fmb train` picks here (fmb/training/auto.py: bf16 +
                                    channels_last only where the CPU has native bf16 and this model's
                                    step measures faster, else the fp32 row); where it is bf16, timm
                                    is timed in that mode too
  infer fast auto                   fuse_bn + channels_last, bf16 where auto picks it, compiled with
                                    --compile
  auto vs the faster mode           (without --no-bf16) auto's training pick and the fast path in the
                                    same precision against the faster of fmb fp32 and fmb bf16
The load average is printed before and after: other jobs on a shared machine slow every figure.

    .venv/bin/python benchmarks/peers.py --resolution 128 --batch-size 16 --threads 2
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform

import timm
import torch
import torchvision
from torch import nn

from fmb.models import cpu_fast_paths, create_model, fuse_bn
from fmb.profiling.measure import time_alternating

FAMILIES = {  # fmb name: (timm name, torchvision name)
    "efficientnetv2_s": ("efficientnetv2_s", "efficientnet_v2_s"),
    "efficientnet_b0": ("efficientnet_b0", "efficientnet_b0"),
    "efficientnet_b4": ("efficientnet_b4", "efficientnet_b4"),
}


def fmb_model(name):
    """The network as `fmb train`, `fmb eval` and `fmb profile` run it (small-map paths opted in)."""
    return cpu_fast_paths(create_model(name))


def bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def infer_fn(model, x, ctx=contextlib.nullcontext):
    model.eval()

    def run():
        with torch.inference_mode(), ctx():
            model(x)
    return run


def train_fn(model, x, y, ctx=contextlib.nullcontext):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run():
        opt.zero_grad(set_to_none=True)
        with ctx():
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return run


def race(contenders: dict, args) -> dict:
    """{name: {median_ms, min_ms, max_ms, ...}}: fmb's alternating timer, the one `fmb profile` uses."""
    return time_alternating(contenders, warmup=args.warmup, rounds=args.rounds, calls_per_round=args.iters)


def auto_mode(fmb_name, resolution, batch_size):
    """(bf16, why): whether fmb's `auto` trains this model in bf16 (with channels_last, which it
    turns on with bf16) on this CPU; it measures the model's own step where the CPU has native bf16."""
    from fmb.device import machine
    from fmb.training import auto
    from fmb.training.precision_probe import measure_model_precision

    decision = auto.precision("auto", "cpu", machine(),
                              lambda: measure_model_precision({"name": fmb_name}, resolution, batch_size))
    return decision.value == "bf16-mixed", decision.reason


def bench_family(fmb_name, args, x, y):
    timm_name, tv_name = FAMILIES[fmb_name]
    torch.manual_seed(0)
    fmb = fmb_model(fmb_name)
    peers = {"timm": timm.create_model(timm_name), "torchvision": getattr(torchvision.models, tv_name)()}
    xcl = x.contiguous(memory_format=torch.channels_last)
    fast = fuse_bn(fmb).to(memory_format=torch.channels_last)
    infer = {"fmb": infer_fn(fmb, x), **{k: infer_fn(m, x) for k, m in peers.items()},
             "fmb fast fp32": infer_fn(fast, xcl)}
    if not args.no_bf16:
        infer["fmb fast bf16"] = infer_fn(fast, xcl, bf16)
    use_bf16, why = auto_mode(fmb_name, args.resolution, args.batch_size)
    print(f"{fmb_name}: auto trains {'bf16 channels_last' if use_bf16 else 'fp32 NCHW'} ({why})")
    auto_ctx = bf16 if use_bf16 else contextlib.nullcontext
    if args.compile:
        compiled = torch.compile(fast)
        infer["fmb fast auto compiled"] = infer_fn(compiled, xcl, auto_ctx)
        infer["fmb fast auto compiled"]()  # compile outside the race
    res = {"infer": race(infer, args)}
    fmb_cl = fmb_model(fmb_name).to(memory_format=torch.channels_last)
    train = {"fmb": train_fn(fmb, x, y), **{k: train_fn(m, x, y) for k, m in peers.items()}}
    if not args.no_bf16 or use_bf16:  # where auto picks bf16 this row is auto's own mode
        train["fmb bf16 channels_last"] = train_fn(fmb_cl, xcl, y, bf16)
    if use_bf16:
        timm_cl = timm.create_model(timm_name).to(memory_format=torch.channels_last)
        train["timm bf16 channels_last"] = train_fn(timm_cl, xcl, y, bf16)
    res["train"] = race(train, args)
    if not args.no_bf16:
        res["auto_vs_faster_mode"] = auto_vs_faster_mode(res, use_bf16, why)
    return res


def auto_vs_faster_mode(res, use_bf16, why) -> dict:
    """auto's pick against the faster of fmb's two modes, each timed in the same race (> 1: auto
    is faster; 1.0: auto picked the faster one)."""
    train, infer = res["train"], res["infer"]
    auto_train = train["fmb bf16 channels_last" if use_bf16 else "fmb"]["median_ms"]
    auto_infer = infer["fmb fast bf16" if use_bf16 else "fmb fast fp32"]["median_ms"]
    best_train = min(train["fmb"]["median_ms"], train["fmb bf16 channels_last"]["median_ms"])
    best_infer = min(infer["fmb fast fp32"]["median_ms"], infer["fmb fast bf16"]["median_ms"])
    return {"auto": "bf16-mixed channels_last" if use_bf16 else "32-true NCHW", "why": why,
            "train": round(best_train / auto_train, 3), "infer": round(best_infer / auto_infer, 3)}


def report(fmb_name, res):
    print(f"\n== {fmb_name}")
    for kind in ("infer", "train"):
        rows = res[kind]
        peer_best = min(rows["timm"]["median_ms"], rows["torchvision"]["median_ms"])
        for name, r in rows.items():
            line = f"  {kind:5s} {name:26s} {r['median_ms']:8.1f} ms  (min {r['min_ms']:.1f}, max {r['max_ms']:.1f})"
            if name.startswith("fmb"):
                line += (f"   x{rows['timm']['median_ms'] / r['median_ms']:.2f} vs timm eager fp32,"
                         f" x{peer_best / r['median_ms']:.2f} vs faster peer")
            if name == "fmb bf16 channels_last" and "timm bf16 channels_last" in rows:
                line += f", x{rows['timm bf16 channels_last']['median_ms'] / r['median_ms']:.2f} vs timm in the same mode"
            print(line)
    if "auto_vs_faster_mode" in res:
        a = res["auto_vs_faster_mode"]
        print(f"  auto ({a['auto']}) vs the faster of fmb fp32 and bf16: train x{a['train']:.2f}, "
              f"fast infer x{a['infer']:.2f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2, help="untimed calls of each contender before round 0")
    p.add_argument("--iters", type=int, default=5, help="timed calls per contender per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--models", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--compile", action="store_true", help="also time torch.compile on the fast path")
    p.add_argument("--no-bf16", action="store_true",
                   help="leave out the fixed bf16 contenders (slow where the CPU emulates bf16; 'auto' rows remain)")
    p.add_argument("--json", help="write all numbers here")
    args = p.parse_args()
    print(f"load before: {os.getloadavg()}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.resolution, args.resolution)
    y = torch.randint(0, 1000, (args.batch_size,))
    print(f"torch {torch.__version__}, timm {timm.__version__}, torchvision {torchvision.__version__}, "
          f"{platform.processor() or platform.machine()}, threads {torch.get_num_threads()}, "
          f"{args.resolution}px batch {args.batch_size}, {args.rounds} rounds x {args.iters} calls")
    results = {}
    for name in args.models:
        results[name] = bench_family(name, args, x, y)
        report(name, results[name])
    print(f"load after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**run_record(), "args": vars(args), "results": results}, f, indent=2)


def run_record() -> dict:
    """Where and when the figures were taken: the date, the machine and the command."""
    import sys
    import time

    from fmb.compat.torch_cpu import cpu_native_bf16
    from fmb.utils import cpu_cores, cpu_model

    flags = set()
    try:
        flags = {f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split(":")[1].split()}
    except OSError:
        pass
    return {"date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]),
            "machine": {"cpu": cpu_model(), "cores": cpu_cores(), "native_bf16": cpu_native_bf16(),
                        "flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}),
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                        "load_average": os.getloadavg()},
            "versions": {"torch": torch.__version__, "timm": timm.__version__, "torchvision": torchvision.__version__}}


if __name__ == "__main__":
    main()
