"""fmb's CPU small-map convs (fmb/models/small_maps.py) vs torch's nn.Conv2d, layer by layer.

For each shape (V2-S's late stages at 32 px, squeeze-excitation, B0/B4's 5×5 depthwise convs,
and larger maps where the ordinary conv is kept), times forward + backward of the same
weights as nn.Conv2d (what timm and torchvision run) and as fmb's layer, alternating rounds
(peers.py's race), and prints medians and the ratio (> 1: fmb's layer is faster).
The whole-network effect is peers.py at the front door's shape:
    .venv/bin/python benchmarks/peers.py --resolution 32 --batch-size 32 --no-bf16 --models efficientnetv2_s

    .venv/bin/python benchmarks/small_maps.py --threads 2
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from fmb.models.layers import DepthwiseConv2d, PointwiseConv2d
from fmb.profiling.measure import time_alternating
from fmb.models.small_maps import cpu_fast_paths, use_depthwise_matrix, use_pointwise_linear

# (kind, channels in, channels out or kernel size, map side, batch)
SHAPES = [
    ("depthwise", 1536, 3, 1, 32), ("depthwise", 960, 3, 2, 32), ("depthwise", 512, 3, 2, 32),
    ("depthwise", 1152, 5, 2, 32), ("depthwise", 672, 5, 4, 32), ("depthwise", 256, 3, 4, 32),
    ("depthwise", 960, 3, 7, 16),
    ("pointwise", 256, 1536, 1, 32), ("pointwise", 1536, 256, 1, 32), ("pointwise", 1536, 64, 1, 32),
    ("pointwise", 160, 960, 2, 32), ("pointwise", 64, 256, 4, 32), ("pointwise", 128, 512, 14, 16),
]


def layer_pair(kind: str, a: int, b: int) -> tuple[nn.Module, nn.Module]:
    fmb_layer = cpu_fast_paths(DepthwiseConv2d(a, b) if kind == "depthwise" else PointwiseConv2d(a, b))
    torch_layer = (nn.Conv2d(a, a, b, 1, b // 2, groups=a, bias=False) if kind == "depthwise"
                   else nn.Conv2d(a, b, 1, bias=False))
    torch_layer.load_state_dict(fmb_layer.state_dict())
    return fmb_layer, torch_layer


def step_fn(layer: nn.Module, x: torch.Tensor):
    grad = torch.ones_like(layer(x))

    def run():
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, forward + backward, median of {args.rounds} rounds")
    print(f"{'layer':44s} {'nn.Conv2d ms':>12s} {'fmb ms':>8s} {'ratio':>6s}  path")
    for kind, a, b, side, batch in SHAPES:
        fmb_layer, torch_layer = layer_pair(kind, a, b)
        x = torch.randn(batch, a, side, side, requires_grad=True)
        fast = use_depthwise_matrix(x, b) if kind == "depthwise" else use_pointwise_linear(x)
        rows = time_alternating({"torch": step_fn(torch_layer, x), "fmb": step_fn(fmb_layer, x)}, warmup=2,
                                rounds=args.rounds, calls_per_round=args.iters)
        label = (f"{kind} {a} ch {b}x{b}" if kind == "depthwise" else f"pointwise {a}->{b}") + f", {side}x{side}, batch {batch}"
        t, f = rows["torch"]["median_ms"], rows["fmb"]["median_ms"]
        print(f"{label:44s} {t:12.2f} {f:8.2f} {t / f:5.2f}x  {'small-map' if fast else 'conv'}")


if __name__ == "__main__":
    main()
