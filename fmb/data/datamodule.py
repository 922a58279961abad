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
import logging

import datasets
import lightning as L
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from fmb.config.schema import AugConfig, DataConfig
from fmb.data.columns import Columns, as_image_column, resolve_columns
from fmb.data.image_sets import HashSplit, MapImageSet, SkipCounter, StreamImageSet, SyntheticImageSet
from fmb.data.sizes import resolve_image_sizes
from fmb.data.sources import load_source
from fmb.data.transforms import Collate, build_eval_transform, build_train_transform, decode_image, image_sides
from fmb.data.workers import auto_workers
from fmb.errors import FmbError, choice_error

log = logging.getLogger(__name__)

VAL_NAMES = ("validation", "valid", "val", "dev")
TEST_NAMES = ("test",)


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
        self.columns: Columns | None = None
        self._splits: dict | None = None  # role → (hf dataset, split name, row indices or None for all)
        self.image_size = self.eval_image_size = None  # resolved by setup()
        self.stage = {"image_size": None, "randaugment_magnitude": aug.randaugment_magnitude,
                      "mixup_alpha": aug.mixup_alpha, "cutmix_alpha": aug.cutmix_alpha}
        self._train_loader: tuple | None = None  # (stage values, loader), reused while they hold

    # ---- metadata -------------------------------------------------------------------------
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
        hf, _, rows = self._splits["train"]
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
        """Download / cache once per node (hub sets, the digits cache, local Arrow caches)."""
        if self.data.source != "synthetic":
            load_source(self.data.source, self.data.name, cache_dir=self.data.cache_dir, streaming=self.data.streaming)

    def setup(self, stage: str | None = None) -> None:
        self._load()
        if self.image_size is None:
            self.image_size, self.eval_image_size = resolve_image_sizes(
                self.data.image_size, self.data.eval_image_size, self.variant_sizes, lambda: self.native_image_size)
            self.stage["image_size"] = self.image_size

    def _load(self) -> Columns:
        if self.columns is not None:
            return self.columns
        d = self.data
        if d.source == "synthetic":
            self._splits = {}
            self.columns = Columns("image", "label", [str(i) for i in range(d.synthetic_classes)])
            return self.columns
        raw = load_source(d.source, d.name, cache_dir=d.cache_dir, streaming=d.streaming)
        available = list(raw)
        if d.train_split not in raw:
            raise choice_error("data.train_split", d.train_split, available)
        train = raw[d.train_split]
        columns = resolve_columns(train.features, d.image_column, d.label_column,
                                  lambda col: self._label_values(train, col))
        if columns.num_classes < 2:
            raise FmbError(f"split '{d.train_split}' of data.source '{d.source}' has {columns.num_classes} class "
                           f"({', '.join(columns.class_names)}); expected at least 2 classes to tell apart")
        splits = {"train": (train, d.train_split, None)}
        for role, requested, usual in (("val", d.val_split, VAL_NAMES), ("test", d.test_split, TEST_NAMES)):
            name = _pick_split(requested, usual, available, f"data.{role}_split")
            if name is not None:
                splits[role] = (raw[name], name, None)
        for role, (hf, split, _) in list(splits.items()):
            if columns.image not in (hf.features or {}) or columns.label not in (hf.features or {}):
                raise FmbError(f"split '{split}' lacks column '{columns.image}' or '{columns.label}' "
                               f"(columns: {', '.join(hf.features or [])}); expected the train split's columns")
            if not d.streaming and len(hf) == 0:
                raise FmbError(f"split '{split}' of data.source '{d.source}' is empty; expected examples "
                               f"(splits: {', '.join(f'{k}={len(v)}' for k, v in raw.items())})")
            splits[role] = (as_image_column(hf, columns.image), split, None)
        if not d.streaming and not isinstance(train.features[columns.label], datasets.ClassLabel):
            splits, columns = _as_class_labels(splits, columns)
        if not d.streaming:
            _check_classes_in_use(train, columns, d)
        if "val" not in splits:
            splits.update(self._carve(splits["train"][0], columns))
        if d.holdout_fraction:  # for choosing checkpoints, so the reported split never chooses
            hf, split, rows = splits["train"]
            kept, held = self._hold_out(hf, rows if rows is not None else np.arange(len(hf)), columns,
                                        d.holdout_fraction, "data.holdout_fraction")
            splits["train"], splits["holdout"] = (hf, split, kept), (hf, split, held)
        self.columns, self._splits = columns, splits
        return columns

    def _label_values(self, hf, column: str):
        if self.data.streaming:  # one pass over the label column only
            return [row[column] for row in hf.select_columns([column])]
        return hf[column]

    def _carve(self, train, columns: Columns) -> dict:
        """A validation set from train when the source has none: stratified, seeded by data.split_seed."""
        d = self.data
        if d.streaming:
            keep = HashSplit(columns.image, d.val_fraction, d.split_seed)
            return {"train": (train.filter(keep, fn_kwargs={"want_val": False}), d.train_split, None),
                    "val": (train.filter(keep, fn_kwargs={"want_val": True}), d.train_split, None)}
        kept, held = self._hold_out(train, np.arange(len(train)), columns, d.val_fraction, "data.val_fraction")
        return {"train": (train, d.train_split, kept), "val": (train, d.train_split, held)}

    def _hold_out(self, hf, rows, columns: Columns, fraction: float, key: str) -> tuple[list, list]:
        """(kept rows, held-out rows) of `rows`: stratified by label, seeded by data.split_seed.

        Only the label column is split (cheap), with each row's position, so the image sets
        read the original rows and name them by it."""
        d = self.data
        labels = hf.select_columns([columns.label]).select(rows).add_column("row", np.asarray(rows))
        try:
            parts = labels.train_test_split(test_size=fraction, stratify_by_column=columns.label, seed=d.split_seed)
        except ValueError:  # a class too small to appear in both parts: hold out without stratifying
            log.warning("%s=%g of %d examples cannot hold out every class; carved without stratification",
                        key, fraction, len(labels))
            try:
                parts = labels.train_test_split(test_size=fraction, seed=d.split_seed)
            except ValueError:
                raise FmbError(f"{key}={fraction:g} of the {len(labels)} examples of split '{d.train_split}' leaves "
                               "an empty training or held-out set; expected a fraction that keeps both non-empty"
                               + (", or name a split with data.val_split" if key == "data.val_fraction" else "")
                               ) from None
        return parts["train"]["row"], parts["test"]["row"]

    def split_sizes(self) -> dict[str, int | None]:
        """Examples per role ('train', 'val', 'test'); None where a stream's size is unknown."""
        self._load()
        if self.data.source == "synthetic":
            n_val = max(1, int(round(self.data.synthetic_size * self.data.val_fraction)))
            return {"train": self.data.synthetic_size, "val": n_val, "test": n_val}
        return {role: None if self.data.streaming else len(rows if rows is not None else hf)
                for role, (hf, _, rows) in self._splits.items()}

    def has_split(self, role: str) -> bool:
        self._load()
        return self.data.source == "synthetic" or role in self._splits

    # ---- progressive learning -------------------------------------------------------------
    def set_train_stage(self, image_size: int | None = None, randaugment_magnitude: float | None = None,
                        mixup_alpha: float | None = None, cutmix_alpha: float | None = None) -> None:
        """Train-time values for the next train loader Lightning asks for (None keeps a value)."""
        for key, value in (("image_size", image_size), ("randaugment_magnitude", randaugment_magnitude),
                           ("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if value is not None:
                self.stage[key] = value

    # ---- loaders --------------------------------------------------------------------------
    def _rank_and_world(self) -> tuple[int, int]:
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)

    def _dataset(self, role: str):
        self.setup()
        d, train = self.data, role == "train"
        if d.source == "synthetic":
            pixels = self.stage["image_size"] if train else self.eval_image_size
            return SyntheticImageSet(self.split_sizes()[role], d.synthetic_classes, pixels,
                                     seed=self.seed + {"train": 0, "val": 1, "test": 2}[role])
        if role not in self._splits:
            raise FmbError(f"data.source '{d.source}' has no {role} split (splits: "
                           f"{', '.join(s for _, s, _ in self._splits.values())}); expected data.{role}_split=NAME")
        hf, split, rows = self._splits[role]
        where = f"split '{split}' of data.source '{d.source}'"
        if role == "val" and split == d.train_split:
            where += f" (its held-out {d.val_fraction:g} for validation)"
        if role == "holdout":
            where += f" (its held-out {d.holdout_fraction:g} for checkpoint selection)"
        if train:
            transform = build_train_transform(self.stage["image_size"], self.stage["randaugment_magnitude"],
                                              normalize=False, crop_scale_min=d.crop_scale_min, hflip=d.hflip)
        else:
            transform = build_eval_transform(self.eval_image_size, d.crop_ratio, normalize=False)
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
        hf, split, _ = self._splits["train"]
        info_splits = getattr(hf.info, "splits", None) or {}
        if split in info_splits and info_splits[split].num_examples:
            total = info_splits[split].num_examples
            if self.data.val_split is None and "val" in self._splits and self._splits["val"][1] == split:
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
        size = self.stage["image_size"] if train else self.eval_image_size
        collate = Collate(self.num_classes, size, self.stage["mixup_alpha"] if train else 0.0,
                          self.stage["cutmix_alpha"] if train else 0.0)
        return DataLoader(dataset, batch_size=d.batch_size, shuffle=train and not isinstance(dataset, StreamImageSet),
                          sampler=sampler, drop_last=train, num_workers=workers, pin_memory=bool(pin),
                          persistent_workers=persistent, collate_fn=collate, **prefetch)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        key = (tuple(self.stage.values()), self.trainer.current_epoch if self.data.streaming and self.trainer else 0)
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


def _check_classes_in_use(train, columns: Columns, d: DataConfig) -> None:
    """A ClassLabel may name ten classes while every row holds one: nothing to tell apart."""
    used = np.unique(np.asarray(train.select_columns([columns.label])[columns.label]))
    if len(used) < 2:
        name = columns.class_names[int(used[0])] if len(used) else "none"
        raise FmbError(f"every example of split '{d.train_split}' of data.source '{d.source}' has the same label "
                       f"({name}); expected at least 2 classes in use")


def _pick_split(requested, usual, available, key) -> str | None:
    if requested is not None:
        if requested not in available:
            raise choice_error(key, requested, available)
        return requested
    return next((name for name in usual if name in available), None)


def _as_class_labels(splits: dict, columns: Columns) -> tuple[dict, Columns]:
    """Integer or string labels as a ClassLabel column, as `datasets` stratifies and encodes them."""
    feature = datasets.ClassLabel(names=columns.class_names)
    out = {}
    for role, (hf, split, rows) in splits.items():
        try:
            out[role] = (hf.cast_column(columns.label, feature), split, rows)
        except (ValueError, KeyError) as exc:
            raise FmbError(f"labels of split '{split}' do not match the train split's classes "
                           f"({str(exc).splitlines()[0][:120]}); expected the same class names in every split") from None
    return out, Columns(columns.image, columns.label, columns.class_names)
