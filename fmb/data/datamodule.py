"""ImageDataModule: any supported source → train/val/test loaders of normalized images.

Map-style sets are shuffled by the loader, so under DDP Lightning swaps in its
DistributedSampler. Streamed sets are shuffled with a seeded buffer (its epoch set when the
train loader is built), split across ranks with `split_dataset_by_node`, and across workers
by `datasets` itself. The train loader is rebuilt when its values change: a progressive
stage (`set_train_stage`) or, for streams, a new epoch — with Lightning's
`reload_dataloaders_every_n_epochs=1` (fmb's train() sets it when either applies).
"""
from __future__ import annotations

import functools
from dataclasses import astuple, dataclass, replace

import lightning as L
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from fmb.config.schema import AugConfig, DataConfig
from fmb.data.columns import Columns
from fmb.data.image_sets import MapImageSet, SkipCounter, StreamImageSet, SyntheticImageSet
from fmb.data.sizes import resolve_image_sizes
from fmb.data.sources import load_source
from fmb.data.splits import Splits, resolve_splits
from fmb.data.transforms import (
    Collate, build_eval_transform, build_train_transform, decode_image, image_sides, preprocessing_kwargs,
)
from fmb.data.workers import auto_workers
from fmb.errors import FmbError


@dataclass(frozen=True)
class TrainStage:
    """The train loader's values that progressive learning changes per stage."""
    image_size: int | None
    randaugment_magnitude: float
    mixup_alpha: float
    cutmix_alpha: float
    autoaugment: bool = False  # the official AutoAugment policy instead of RandAugment (V2-B0..B3, V1)


class ImageDataModule(L.LightningDataModule):
    """Image classification data as `data` and `aug` say (see fmb/config/schema.py).

    `seed` (the run's) orders the training data; the carved validation split follows
    `data.split_seed`, so runs with different seeds are judged on the same images.
    `variant_sizes` are the model's (train, eval) sizes, used where data.image_size is null.
    """

    def __init__(self, data: DataConfig, aug: AugConfig, seed: int = 0,
                 variant_sizes: tuple[int, int] | None = None):
        super().__init__()
        self.data, self.aug, self.seed, self.variant_sizes = data, aug, int(seed), variant_sizes
        self.skipped = SkipCounter()
        self.splits: Splits | None = None  # role → (dataset, split name, rows): fmb/data/splits.py
        self._loaded: dict | None = None  # what prepare_data loaded, for setup to split
        self.image_size = self.eval_image_size = None  # resolved by setup()
        self.stage = TrainStage(None, aug.randaugment_magnitude, aug.mixup_alpha, aug.cutmix_alpha)
        self._train_loader: tuple | None = None  # (stage values, loader), reused while they hold

    # ---- metadata -------------------------------------------------------------------------
    @property
    def columns(self) -> Columns:
        return self._load()

    @property
    def num_classes(self) -> int:
        return self._load().num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self._load().class_names)

    @property
    def skipped_images(self) -> int:
        """Bad images dropped so far (`on_bad_image=skip`), over all loaders and workers."""
        return self.skipped.total

    @functools.cached_property
    def native_image_size(self) -> int | None:
        """Typical short side of the train images (8 for digits, 32 for CIFAR), or None."""
        if self.data.source == "synthetic":
            return None
        self._load()
        hf, _, rows = self.splits["train"]
        image = self.columns.image
        try:
            if self.data.streaming:
                values = [row[image] for _, row in zip(range(8), hf.select_columns([image]))]
            else:
                picks = np.asarray(rows if rows is not None else np.arange(len(hf)))
                picks = picks[np.linspace(0, len(picks) - 1, num=min(16, len(picks))).astype(int)]
                values = [hf[int(i)][image] for i in picks]
            sides = [min(image_sides(decode_image(value))) for value in values]
        except Exception:  # a hint only: unreadable samples surface later with a proper error
            return None
        return int(np.median(sides)) if sides else None

    # ---- loading --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download / cache once per node (hub sets, the digits cache, local Arrow caches). Once per
        process too: fmb prepares before the Trainer exists and Lightning prepares again in fit(),
        and `datasets` resolves a local folder's files anew on each load."""
        if self.data.source != "synthetic" and self.splits is None and self._loaded is None:
            self._loaded = load_source(self.data.source, self.data.name, cache_dir=self.data.cache_dir,
                                       streaming=self.data.streaming)

    def setup(self, stage: str | None = None) -> None:
        self._load()
        if self.image_size is None:
            self.image_size, self.eval_image_size = resolve_image_sizes(
                self.data.image_size, self.data.eval_image_size, self.variant_sizes, lambda: self.native_image_size)
            self.stage = replace(self.stage, image_size=self.image_size)

    def _load(self) -> Columns:
        if self.splits is None:
            self.splits, self._loaded = resolve_splits(self.data, self._loaded), None
        return self.splits.columns

    def split_sizes(self) -> dict[str, int | None]:
        """Examples per role ('train', 'val', 'test'); None where a stream's size is unknown."""
        self._load()
        if self.data.source == "synthetic":
            n_val = max(1, int(round(self.data.synthetic_size * self.data.val_fraction)))
            return {"train": self.data.synthetic_size, "val": n_val, "test": n_val}
        return self.splits.sizes(self.data.streaming)

    def has_split(self, role: str) -> bool:
        self._load()
        return self.data.source == "synthetic" or role in self.splits

    # ---- progressive learning -------------------------------------------------------------
    def set_train_stage(self, image_size: int | None = None, randaugment_magnitude: float | None = None,
                        mixup_alpha: float | None = None, cutmix_alpha: float | None = None,
                        autoaugment: bool | None = None) -> None:
        """Train-time values for the next train loader Lightning asks for (None keeps a value)."""
        given = {"image_size": image_size, "randaugment_magnitude": randaugment_magnitude,
                 "mixup_alpha": mixup_alpha, "cutmix_alpha": cutmix_alpha, "autoaugment": autoaugment}
        self.stage = replace(self.stage, **{k: v for k, v in given.items() if v is not None})

    # ---- loaders --------------------------------------------------------------------------
    def _rank_and_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def _dataset(self, role: str):
        self.setup()
        d, train = self.data, role == "train"
        if d.source == "synthetic":
            pixels = self.stage.image_size if train else self.eval_image_size
            return SyntheticImageSet(self.split_sizes()[role], d.synthetic_classes, pixels,
                                     seed=self.seed + {"train": 0, "val": 1, "test": 2}[role])
        if role not in self.splits:
            raise FmbError(f"data.source '{d.source}' has no {role} split (splits: "
                           f"{', '.join(s for _, s, _ in self.splits.roles.values())}); expected data.{role}_split=NAME")
        hf, split, rows = self.splits[role]
        where = f"split '{split}' of data.source '{d.source}'"
        if role == "val" and split == d.train_split:
            where += f" (its held-out {d.val_fraction:g} for validation)"
        if role == "holdout":
            where += f" (its held-out {d.holdout_fraction:g} for checkpoint selection)"
        pre = preprocessing_kwargs(d)
        if train:
            transform = build_train_transform(self.stage.image_size, self.stage.randaugment_magnitude,
                                              normalize=False, crop_scale_min=d.crop_scale_min, hflip=d.hflip,
                                              autoaugment=self.stage.autoaugment, **pre)
        else:
            transform = build_eval_transform(self.eval_image_size, d.crop_ratio, normalize=False, **pre)
        if not d.streaming:
            return MapImageSet(hf, self.columns, transform, self.skipped, d.on_bad_image, where, rows)
        rank, world = self._rank_and_world()
        if train:
            hf = hf.shuffle(seed=self.seed, buffer_size=d.shuffle_buffer)
        hf = split_dataset_by_node(hf, rank=rank, world_size=world)
        steps = self._stream_steps(world) if train else None
        dataset = StreamImageSet(hf, self.columns, transform, self.skipped, d.on_bad_image, where,
                                 batches_per_epoch=steps, batch_size=d.batch_size, rank=rank)
        if train:  # the shuffle buffer's order changes with the epoch (the loader is rebuilt for each)
            dataset.stream.set_epoch(self.trainer.current_epoch if self.trainer is not None else 0)
        return dataset

    def _stream_steps(self, world: int) -> int:
        """Batches every rank runs per epoch: the smallest rank's share, in full batches."""
        hf, split, _ = self.splits["train"]
        info_splits = getattr(hf.info, "splits", None) or {}
        if split in info_splits and info_splits[split].num_examples:
            total = info_splits[split].num_examples
            if self.data.val_split is None and "val" in self.splits and self.splits["val"].name == split:
                total = int(total * (1 - self.data.val_fraction))  # the hash carve keeps about this many
        else:  # count once (label column only)
            if not hasattr(self, "_stream_total"):
                self._stream_total = sum(1 for _ in hf.select_columns([self.columns.label]))
            total = self._stream_total
        steps = (total // world) // self.data.batch_size
        if steps == 0:
            raise FmbError(f"split '{split}' has {total} examples, fewer than one batch of {self.data.batch_size} "
                           f"per rank over {world} rank(s); expected a smaller data.batch_size")
        return steps

    def loader(self, role: str) -> DataLoader:
        """A loader of one split: train, val, test or holdout."""
        d, train = self.data, role == "train"
        dataset = self._dataset(role)
        workers = d.num_workers if d.num_workers != "auto" else auto_workers(torch.cuda.is_available())[0]
        if isinstance(dataset, StreamImageSet):
            workers = min(workers, max(1, dataset.stream.num_shards))  # datasets gives workers whole shards
        elif train and len(dataset) < d.batch_size:
            raise FmbError(f"the training set has {len(dataset)} examples, fewer than one batch of "
                           f"{d.batch_size}; expected a smaller data.batch_size")
        persistent = workers > 0 if d.persistent_workers is None else (d.persistent_workers and workers > 0)
        pin = torch.cuda.is_available() if d.pin_memory is None else d.pin_memory
        # Prefetch: 2 batches per worker suffice on CPU, where the model is the bottleneck; with
        # a GPU 4 absorb the jitter of decode times so the GPU does not wait on one slow batch.
        prefetch = {"prefetch_factor": 4 if torch.cuda.is_available() else 2} if workers > 0 else {}
        sampler = None
        rank, world = self._rank_and_world()
        if not train and world > 1 and not isinstance(dataset, StreamImageSet):
            # Lightning would give evaluation loaders a DistributedSampler, which repeats a few
            # examples to even out the ranks and so counts them twice in the synced metrics.
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        size = self.stage.image_size if train else self.eval_image_size
        collate = Collate(self.num_classes, size, self.stage.mixup_alpha if train else 0.0,
                          self.stage.cutmix_alpha if train else 0.0, **preprocessing_kwargs(d))
        return DataLoader(dataset, batch_size=d.batch_size, shuffle=train and not isinstance(dataset, StreamImageSet),
                          sampler=sampler, drop_last=train, num_workers=workers, pin_memory=bool(pin),
                          persistent_workers=persistent, collate_fn=collate, **prefetch)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        key = (astuple(self.stage), self.trainer.current_epoch if self.data.streaming and self.trainer else 0)
        if self._train_loader is None or self._train_loader[0] != key:
            self._train_loader = (key, self.loader("train"))
        return self._train_loader[1]

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The validation split; with data.holdout_fraction, [validation, held-out selection set]."""
        if self.data.holdout_fraction and self.data.source != "synthetic":
            return [self.loader("val"), self.loader("holdout")]
        return self.loader("val")

    def test_dataloader(self) -> DataLoader:
        return self.loader("test")
