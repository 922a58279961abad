"""Overhead of `fmb train` against a plain PyTorch loop: same model, optimizer, data, batch.

Both consume the same `synthetic` train loader (random tensors, no decoding), so the only
difference is fmb's LightningModule, callbacks, logging and Lightning's loop. The
contenders alternate; each repeat trains a fresh model; medians are compared.

    .venv/bin/python benchmarks/overhead.py --variant efficientnetv2_b0 --image-size 64 --batch-size 32
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def overrides(args, run_dir: str) -> list[str]:
    return [
        f"model.variant={args.variant}", f"model.width_mult={args.width_mult}", f"model.depth_mult={args.depth_mult}",
        "data.source=synthetic", f"data.image_size={args.image_size}", f"data.eval_image_size={args.image_size}",
        f"data.batch_size={args.batch_size}", f"data.num_workers={args.num_workers}",
        "optim.name=adamw", "optim.lr=0.001", "optim.lr_per_256=false", "aug.label_smoothing=0.1", "ema.enabled=false",
        f"trainer.max_epochs={args.epochs}", f"trainer.limit_train_batches={args.steps}",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", f"run.dir={run_dir}",
    ]


def fmb_rate(args) -> float:
    from fmb.config import load_config
    from fmb.training.run import train

    with tempfile.TemporaryDirectory() as tmp:
        summary = train(load_config([], overrides(args, tmp)))
    return summary["train_images_per_sec"]


def plain_rate(args) -> float:
    """The loop a researcher would write by hand, timed over the same epochs and steps."""
    import torch
    import torch.nn.functional as F

    from fmb.config import load_config
    from fmb.data import ImageDataModule
    from fmb.models import create_model
    from fmb.training.optim import param_groups

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config([], overrides(args, tmp))
    dm = ImageDataModule(cfg.data, cfg.aug, seed=0)
    dm.setup("fit")
    model = create_model(args.variant, num_classes=dm.num_classes, width_mult=args.width_mult,
                         depth_mult=args.depth_mult).train()
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    rates, loader = [], dm.train_dataloader()
    for _ in range(args.epochs):
        iterator = iter(loader)  # as in Lightning, the clock starts after the iterator exists
        count, start = 0, time.perf_counter()
        for step, (images, targets) in enumerate(iterator):
            if step == args.steps:
                break
            loss = F.cross_entropy(model(images), targets, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            count += images.shape[0]
        rates.append(count / (time.perf_counter() - start))
    return sum(rates) / len(rates)  # the same per-epoch average fmb reports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="efficientnetv2_b0")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--depth-mult", type=float, default=1.0)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="train steps per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    fmb, plain = [], []
    for _ in range(args.repeats):  # alternate so drifting machine load hits both alike
        fmb.append(fmb_rate(args))
        plain.append(plain_rate(args))
    f, p = statistics.median(fmb), statistics.median(plain)
    print(f"{args.variant} w{args.width_mult} d{args.depth_mult} {args.image_size}px batch {args.batch_size}, "
          f"{args.epochs} epochs x {args.steps} steps, {args.repeats} repeats, {args.threads} threads")
    print(f"fmb train   {f:8.1f} img/s (median; runs {', '.join(f'{r:.1f}' for r in fmb)})")
    print(f"plain loop  {p:8.1f} img/s (median; runs {', '.join(f'{r:.1f}' for r in plain)})")
    print(f"ratio fmb/plain: {f / p:.3f}x (goal >= 0.95x)")


if __name__ == "__main__":
    main()
