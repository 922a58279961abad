"""Train-loader throughput (decode + augment + collate), fmb against timm's `hfds/` reader.

Both read the same `datasets` data with the same augmentation (RandomResizedCrop, flip,
optional RandAugment, ImageNet normalization) and the same batch size and worker count.
The contenders alternate, each repeat builds a fresh iterator (worker start-up included
once per repeat, the first batch excluded), and the medians are compared.

    .venv/bin/python benchmarks/data_throughput.py --source digits --image-size 128 --num-workers 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def images_per_second(loader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # worker start-up and first decode: not steady state
    count, start = 0, time.perf_counter()
    for _, (images, _) in zip(range(batches), iterator):
        count += images.shape[0]
    elapsed = time.perf_counter() - start
    return count / elapsed


def fmb_loader(args):
    from fmb.config import AugConfig, DataConfig
    from fmb.data import ImageDataModule

    data = DataConfig(source=args.source, name=args.name, image_size=args.image_size,
                      eval_image_size=args.image_size, batch_size=args.batch_size, num_workers=args.num_workers,
                      cache_dir=args.cache_dir, streaming=args.streaming, persistent_workers=False, pin_memory=False)
    dm = ImageDataModule(data, AugConfig(randaugment_magnitude=args.randaugment))
    dm.setup("fit")
    return dm, dm.train_dataloader()


def timm_loader(args, dm, workdir: str):
    """timm's HF-datasets reader with timm's train transform set to the same augmentation."""
    import torch
    from timm.data import create_dataset, create_transform

    if args.source == "synthetic" or args.streaming:
        return None
    name = args.source
    if args.source == "digits" or os.path.isdir(os.path.expanduser(args.source)):
        # timm's reader calls datasets.load_dataset(name): hand it the same rows as parquet
        hf, indices, _ = dm._splits["train"]
        rows = hf.select(indices) if indices is not None else hf
        out = Path(workdir) / "timm-parquet"
        out.mkdir(exist_ok=True)
        rows.to_parquet(str(out / "train.parquet"))
        name = str(out)
    dataset = create_dataset(f"hfds/{name}", root=os.path.join(workdir, "timm-cache"), split="train",
                             input_key=dm.columns.image, target_key=dm.columns.label)
    magnitude = int(round(args.randaugment))
    dataset.transform = create_transform(
        args.image_size, is_training=True, interpolation="bicubic", color_jitter=0.0, re_prob=0.0,
        auto_augment=f"rand-m{magnitude}-n2" if magnitude else None)
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                       num_workers=args.num_workers)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="digits", help="data.source: digits, synthetic, hub id, local path")
    parser.add_argument("--name", default=None, help="hub config name (data.name)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats; medians are compared")
    parser.add_argument("--randaugment", type=float, default=0.0, help="RandAugment magnitude (0: off)")
    parser.add_argument("--streaming", action="store_true")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--no-timm", action="store_true", help="time fmb only")
    args = parser.parse_args(argv)

    dm, ours = fmb_loader(args)
    with tempfile.TemporaryDirectory() as workdir:
        theirs = None if args.no_timm else timm_loader(args, dm, workdir)
        fmb_rates, timm_rates = [], []
        for _ in range(args.repeats):
            fmb_rates.append(images_per_second(ours, args.batches))
            if theirs is not None:
                timm_rates.append(images_per_second(theirs, args.batches))
    print(f"source={args.source} image_size={args.image_size} batch_size={args.batch_size} "
          f"num_workers={args.num_workers} randaugment={args.randaugment:g} batches={args.batches} "
          f"repeats={args.repeats}")
    print(f"fmb   train loader: {statistics.median(fmb_rates):8.1f} images/s (median; "
          f"runs {', '.join(f'{r:.0f}' for r in fmb_rates)})")
    if timm_rates:
        print(f"timm  hfds loader:  {statistics.median(timm_rates):8.1f} images/s (median; "
              f"runs {', '.join(f'{r:.0f}' for r in timm_rates)})")
        print(f"ratio fmb/timm: {statistics.median(fmb_rates) / statistics.median(timm_rates):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
