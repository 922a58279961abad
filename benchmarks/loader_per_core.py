"""Images/s one CPU core delivers through fmb's train transform, and how many cores one GPU needs.

One process, one torch thread, no DataLoader workers: the figure is per core, so a loader with
N workers on N free cores delivers about N times as much. Each image is a JPEG (ImageNet-like:
500x375, quality 90, smooth content) decoded and augmented as fmb's train loader does
(RandomResizedCrop bicubic + flip, uint8 out; the collate normalizes whole batches). Contenders,
alternated round by round, median over rounds:
  PIL          PIL decode → transforms on PIL (fmb's path for JPEGs before this benchmark)
  decode_jpeg  fmb's path now (fmb.data.transforms.decode_image): torchvision.io.decode_jpeg →
               the same transforms on the uint8 tensor
  PIL draft    PIL's JPEG DCT scaling (Image.draft) to the smallest scale that still covers the
               largest crop at full resolution, then the same transforms

GPU side: by default published EfficientNetV2-S training
throughput, timm's benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv (huggingface/pytorch-image-models,
results/): 559 img/s at 288 px, batch 128, AMP, channels_last, RTX 3090; scaled to other sizes
by pixel count. Pass --gpu-img-s and --gpu-size to use your own measurement (README's H200
column is benchmarks/gpu_peers.py's figure per size, divided by the per-core rates here).

    .venv/bin/python benchmarks/loader_per_core.py --images 64 --rounds 3
"""
from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmb.data.transforms import build_train_transform, decode_image, to_rgb  # noqa: E402

PUBLISHED = (559.15, 288, "timm results/benchmark-train-amp-nhwc-pt112-cu113-rtx3090.csv, efficientnetv2_s")


def make_jpegs(count: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # smooth content compresses like photos
        image = Image.fromarray(small).resize((500, 375), Image.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (375, 500, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pil_path(transform):
    def run(data):
        image = Image.open(io.BytesIO(data))
        image.load()
        return transform(to_rgb(image))
    return run


def decode_jpeg_path(transform):
    return lambda data: transform(decode_image({"bytes": data}))  # fmb's path: torchvision's decode_jpeg


def draft_path(transform, size: int, crop_scale_min: float):
    # The smallest crop side RandomResizedCrop may take is ~sqrt(scale_min * area / ratio);
    # keep every crop at least `size` pixels: draft to size / sqrt(scale_min) on the short side.
    need = int(math.ceil(size / math.sqrt(crop_scale_min)))

    def run(data):
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (need, need))
        return transform(image.convert("RGB"))
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 224, 300])
    p.add_argument("--crop-scale-min", type=float, default=0.08)
    p.add_argument("--gpu-img-s", type=float, default=PUBLISHED[0], help="GPU training images/s at --gpu-size")
    p.add_argument("--gpu-size", type=int, default=PUBLISHED[1])
    args = p.parse_args()
    torch.set_num_threads(1)
    jpegs = make_jpegs(args.images)
    print(f"torch {torch.__version__}, 1 thread, {args.images} JPEGs 500x375 q90, {args.rounds} rounds; "
          f"load before {os.getloadavg()}")
    source = PUBLISHED[2] if args.gpu_img_s == PUBLISHED[0] else "--gpu-img-s"
    rows = []
    for size in args.sizes:
        transform = build_train_transform(size, normalize=False, crop_scale_min=args.crop_scale_min)
        paths = {"PIL": pil_path(transform), "decode_jpeg": decode_jpeg_path(transform),
                 "PIL draft": draft_path(transform, size, args.crop_scale_min)}
        for fn in paths.values():  # warm-up
            fn(jpegs[0])
        rates = {n: [] for n in paths}
        names = list(paths)
        for r in range(args.rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                for data in jpegs:
                    paths[n](data)
                rates[n].append(len(jpegs) / (time.perf_counter() - start))
        med = {n: statistics.median(v) for n, v in rates.items()}
        gpu = args.gpu_img_s * (args.gpu_size / size) ** 2
        best = max(med, key=med.get)
        rows.append((size, med, gpu, best))
        print(f"{size}px  " + "  ".join(f"{n} {v:7.1f} img/s/core" for n, v in med.items())
              + f"   GPU V2-S ~{gpu:.0f} img/s → {gpu / med['PIL']:.1f} cores (PIL), {gpu / med[best]:.1f} ({best})")
    print(f"load after {os.getloadavg()}; GPU figures: {source}, scaled by pixel count from {args.gpu_size}px")


if __name__ == "__main__":
    main()
