"""ImageDataModule: any supported source → train/val/test loaders of normalized images.

Map-style sets are shuffled by the loader, so under DDP Lightning swaps in its
DistributedSampler. Streamed sets are shuffled with a seeded buffer, re-seeded every epoch
(`set_epoch`), split across ranks with `split_dataset_by_node` when the train loader is
built (so the rank is known), and across workers by `datasets` itself.
"""
from __future__ import annotations

import logging
import math

import lightning as L
import numpy as np
import torch
import torch.distributed
from datasets.distributed import split_dataset_by_node
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

from fmb.data.columns import Columns, as_image_column, resolve_columns
from fmb.data.image_sets import MapImageSet, StreamImageSet, SyntheticImageSet
from fmb.data.loader import FmbDataLoader, LoaderHooks
from fmb.data.sources import load_source
from fmb.data.transforms import AugmentState, Collate, StateTransform, check_augmentation, decode_image
from fmb.errors import FmbError, choice_error

log = logging.getLogger(__name__)

VAL_NAMES = ("validation", "valid", "val", "dev")
TEST_NAMES = ("test",)
BAD_IMAGE_CHOICES = ("error", "skip")


def stratified_split(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices) with round(fraction * N) held out, spread over the classes
    in proportion (largest remainders get the leftovers), seeded: every rank and every rerun
    with the same seed carves the same validation set."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    wanted = int(round(len(labels) * fraction))
    share = counts * fraction
    quota = np.floor(share).astype(int)
    leftover = wanted - quota.sum()
    if leftover > 0:  # largest remainders first, ties in seeded random order
        order = np.lexsort((rng.random(len(classes)), -(share - quota)))
        quota[order[:leftover]] += 1
    val = []
    for cls, take in zip(classes, quota):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        val.append(members[:take])
    val = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(len(labels)), val), val


def _rank_and_world(trainer) -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if trainer is not None:
        return trainer.global_rank, trainer.world_size
    return 0, 1


class ImageDataModule(L.LightningDataModule):
    """Image classification data from a hub id, a local folder/files, a save_to_disk
    directory, the built-in ``digits``, or ``synthetic`` tensors. See docs in README."""

    def __init__(self, source: str = "digits", name: str | None = None, train_split: str = "train",
                 val_split: str | None = None, test_split: str | None = None, val_fraction: float = 0.1,
                 image_column: str | None = None, label_column: str | None = None, image_size: int = 224,
                 eval_image_size: int | None = None, crop_ratio: float = 0.875, batch_size: int = 32,
                 num_workers: int = 2, streaming: bool = False, randaugment_magnitude: float = 0.0,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, seed: int = 0, cache_dir: str | None = None,
                 on_bad_image: str = "error", synthetic_size: int = 512, synthetic_classes: int = 10,
                 pin_memory: bool | None = None, persistent_workers: bool | None = None,
                 shuffle_buffer: int = 1000, crop_scale_min: float = 0.08, hflip: bool = True):
        super().__init__()
        if not 0 < val_fraction < 1:
            raise FmbError(f"data.val_fraction={val_fraction} is outside (0, 1); expected e.g. 0.1")
        if on_bad_image not in BAD_IMAGE_CHOICES:
            raise choice_error("data.on_bad_image", on_bad_image, BAD_IMAGE_CHOICES)
        for key, value, low in (("data.batch_size", batch_size, 1), ("data.num_workers", num_workers, 0),
                                ("data.synthetic_size", synthetic_size, 1),
                                ("data.synthetic_classes", synthetic_classes, 1),
                                ("data.shuffle_buffer", shuffle_buffer, 1)):
            if int(value) != value or value < low:
                raise FmbError(f"{key}={value} is not a whole number >= {low}; expected e.g. {max(low, 2)}")
        check_augmentation(image_size, eval_image_size, randaugment_magnitude, mixup_alpha, cutmix_alpha, crop_ratio)
        self.save_hyperparameters()
        self.source, self.name, self.streaming = source, name, bool(streaming)
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.val_fraction, self.seed, self.cache_dir = float(val_fraction), int(seed), cache_dir
        self.image_column, self.label_column = image_column, label_column
        self.crop_ratio, self.batch_size, self.num_workers = float(crop_ratio), int(batch_size), int(num_workers)
        if not 0 < crop_scale_min <= 1:
            raise FmbError(f"aug.crop_scale_min={crop_scale_min} is outside (0, 1]; expected e.g. 0.08 (ImageNet)")
        self.crop_scale_min, self.hflip = float(crop_scale_min), bool(hflip)
        self.on_bad_image, self.shuffle_buffer = on_bad_image, int(shuffle_buffer)
        self.synthetic_size, self.synthetic_classes = int(synthetic_size), int(synthetic_classes)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.persistent_workers = persistent_workers
        self.state = AugmentState(image_size, eval_image_size or image_size, randaugment_magnitude,
                                  mixup_alpha, cutmix_alpha)
        self.columns: Columns | None = None
        self._splits: dict | None = None  # role ('train'/'val'/'test') → (hf dataset, indices, split name)
        self._native_size: int | None | bool = False  # False: not measured yet
        self._next_epoch = 0
        self._stream_carved = False
        self._stream_total: int | None = None

    # ---- metadata -------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self._load().num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self._load().class_names)

    @property
    def image_size(self) -> int:
        return self.state.image_size

    @property
    def eval_image_size(self) -> int:
        return self.state.eval_image_size

    @property
    def skipped_images(self) -> int:
        """Bad images dropped so far (``on_bad_image=skip``), over all loaders and workers."""
        return self.state.total_skipped()

    @property
    def native_image_size(self) -> int | None:
        """Typical short side of the source images (8 for digits, 32 for CIFAR), or None."""
        if self._native_size is False:
            self._native_size = self._measure_native_size()
        return self._native_size

    def _measure_native_size(self) -> int | None:
        if self.source == "synthetic":
            return None
        self._load()
        hf, indices, _ = self._splits["train"]
        image = self.columns.image
        try:
            if self.streaming:
                rows = [row[image] for _, row in zip(range(8), hf.select_columns([image]))]
            else:
                picks = np.asarray(indices if indices is not None else np.arange(len(hf)))
                picks = picks[np.linspace(0, len(picks) - 1, num=min(16, len(picks))).astype(int)]
                rows = [hf[int(i)][image] for i in picks]
            sides = [min(decode_image(value).size) for value in rows]
        except Exception:  # a hint only: unreadable samples surface later with a proper error
            return None
        return int(np.median(sides)) if sides else None

    # ---- loading --------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download / cache once per node (hub sets, the digits cache, local Arrow caches)."""
        if self.source != "synthetic":
            load_source(self.source, self.name, cache_dir=self.cache_dir, streaming=self.streaming)

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def _load(self) -> Columns:
        if self.columns is not None:
            return self.columns
        if self.source == "synthetic":
            self._splits = {}
            self.columns = Columns("image", "label", [str(i) for i in range(self.synthetic_classes)])
            return self.columns
        raw = load_source(self.source, self.name, cache_dir=self.cache_dir, streaming=self.streaming)
        available = list(raw)
        if self.train_split not in raw:
            raise choice_error("data.train_split", self.train_split, available)
        train = raw[self.train_split]
        columns = resolve_columns(train.features, self.image_column, self.label_column,
                                  lambda col: self._label_values(train, col))
        splits = {"train": (train, None, self.train_split)}
        val_name = self._pick_split(self.val_split, VAL_NAMES, available, "data.val_split")
        test_name = self._pick_split(self.test_split, TEST_NAMES, available, "data.test_split")
        if val_name is not None:
            splits["val"] = (raw[val_name], None, val_name)
        if test_name is not None:
            splits["test"] = (raw[test_name], None, test_name)
        for role, (hf, _, split) in list(splits.items()):
            if columns.image not in (hf.features or {}) or columns.label not in (hf.features or {}):
                raise FmbError(f"split '{split}' lacks column '{columns.image}' or '{columns.label}' "
                               f"(columns: {', '.join(hf.features or [])}); expected the train split's columns")
            splits[role] = (as_image_column(hf, columns.image), None, split)
            if not self.streaming and len(hf) == 0:
                raise FmbError(f"split '{split}' of data.source '{self.source}' is empty; expected examples "
                               f"(splits: {', '.join(f'{k}={len(v)}' for k, v in raw.items())})")
        if val_name is None:
            splits.update(self._carve(splits["train"][0], columns))
            self._stream_carved = self.streaming
        self.columns, self._splits = columns, splits
        return columns

    def _label_values(self, hf, column: str):
        if self.streaming:  # one pass over the label column only
            return [row[column] for row in hf.select_columns([column])]
        return hf[column]

    @staticmethod
    def _pick_split(requested, usual, available, key) -> str | None:
        if requested is not None:
            if requested not in available:
                raise choice_error(key, requested, available)
            return requested
        return next((name for name in usual if name in available), None)

    def _carve(self, train, columns: Columns) -> dict:
        """A validation set from train when the source has none."""
        if self.streaming:
            # a seeded hash of each example's bytes: the same on every rank, no pass needed
            keep = _HashSplit(columns.image, self.val_fraction, self.seed)
            return {"train": (train.filter(keep, fn_kwargs={"want_val": False}), None, self.train_split),
                    "val": (train.filter(keep, fn_kwargs={"want_val": True}), None, self.train_split)}
        labels = [columns.encode(v) for v in train[columns.label]]
        train_idx, val_idx = stratified_split(labels, self.val_fraction, self.seed)
        if len(val_idx) == 0 or len(train_idx) == 0:
            raise FmbError(f"data.val_fraction={self.val_fraction} of {len(labels)} examples leaves an empty "
                           f"{'validation' if len(val_idx) == 0 else 'training'} set; expected a fraction that "
                           f"keeps both non-empty, or name a split with data.val_split")
        return {"train": (train, train_idx, self.train_split),
                "val": (train, val_idx, self.train_split)}

    def split_sizes(self) -> dict[str, int | None]:
        """Examples per role ('train', 'val', 'test'); None where a stream's size is unknown."""
        self._load()
        if self.source == "synthetic":
            n_val = max(1, int(round(self.synthetic_size * self.val_fraction)))
            return {"train": self.synthetic_size, "val": n_val, "test": n_val}
        sizes = {}
        for role, (hf, indices, _) in self._splits.items():
            sizes[role] = len(indices) if indices is not None else (None if self.streaming else len(hf))
        return sizes

    # ---- augmentation, epochs -------------------------------------------------------------
    def set_augmentation(self, image_size: int | None = None, randaugment_magnitude: float | None = None,
                         mixup_alpha: float | None = None, cutmix_alpha: float | None = None) -> None:
        """Change train augmentation in place; loader workers (persistent or not) pick the new
        values up for the next image they produce. Call between epochs (e.g. in
        ``on_train_epoch_start``): Lightning starts the epoch's loader iterator after it."""
        self.state.update(image_size=image_size, randaugment_magnitude=randaugment_magnitude,
                          mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)

    def set_epoch(self, epoch: int) -> None:
        """Epoch the next train-loader pass reshuffles streams for (Lightning sets it itself)."""
        self._next_epoch = int(epoch)

    def _start_train_epoch(self) -> int:
        epoch = self.trainer.current_epoch if self.trainer is not None else self._next_epoch
        self._next_epoch = epoch + 1
        self.state.update(epoch=epoch)
        return epoch

    # ---- loaders --------------------------------------------------------------------------
    def _dataset(self, role: str):
        self._load()
        train = role == "train"
        if self.source == "synthetic":
            size = self.split_sizes()[role]
            return SyntheticImageSet(size, self.synthetic_classes, self.state, train,
                                     seed=self.seed + {"train": 0, "val": 1, "test": 2}[role])
        if role == "test" and "test" not in self._splits:
            log.warning("data.source '%s' has no test split; testing on the validation split", self.source)
            role = "val"
        hf, indices, split = self._splits[role]
        where = f"split '{split}' of data.source '{self.source}'"
        if role == "val" and split == self.train_split:
            where += f" (its held-out {self.val_fraction:g} for validation)"
        transform = StateTransform(self.state, train=train, crop_ratio=self.crop_ratio,
                                   crop_scale_min=self.crop_scale_min, hflip=self.hflip)
        if not self.streaming:
            return MapImageSet(hf, self.columns, transform, self.state, self.on_bad_image, where, indices)
        rank, world = _rank_and_world(self.trainer)
        if train:
            hf = hf.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        hf = split_dataset_by_node(hf, rank=rank, world_size=world)
        steps = self._stream_steps(world) if train else None
        return StreamImageSet(hf, self.columns, transform, self.state, self.on_bad_image, where,
                              batches_per_epoch=steps, batch_size=self.batch_size, rank=rank)

    def _stream_steps(self, world: int) -> int:
        """Batches every rank runs per epoch: the smallest rank's share, in full batches."""
        hf, _, split = self._splits["train"]
        total = None
        info_splits = getattr(hf.info, "splits", None) or {}
        if split in info_splits and info_splits[split].num_examples:
            total = info_splits[split].num_examples
            if self._stream_carved:  # the hash carve keeps about (1 - val_fraction); short ranks wrap
                total = int(total * (1 - self.val_fraction))
        if total is None:  # count once (label column only); cached for later epochs
            if self._stream_total is None:
                self._stream_total = sum(1 for _ in hf.select_columns([self.columns.label]))
            total = self._stream_total
        steps = (total // world) // self.batch_size
        if steps == 0:
            raise FmbError(f"split '{split}' has {total} examples, fewer than one batch of {self.batch_size} per "
                           f"rank over {world} rank(s); expected a smaller data.batch_size")
        return steps

    def _loader(self, role: str) -> FmbDataLoader:
        dataset = self._dataset(role)
        train = role == "train"
        workers = self.num_workers
        if isinstance(dataset, StreamImageSet):
            workers = min(workers, max(1, dataset.stream.num_shards))  # datasets gives workers whole shards
        elif train and len(dataset) < self.batch_size:
            raise FmbError(f"the training set has {len(dataset)} examples, fewer than one batch of "
                           f"{self.batch_size}; expected a smaller data.batch_size")
        persistent = workers > 0 if self.persistent_workers is None else (self.persistent_workers and workers > 0)
        sampler = None
        rank, world = _rank_and_world(self.trainer)
        if not train and world > 1 and not isinstance(dataset, StreamImageSet):
            # Lightning would give evaluation loaders a DistributedSampler, which repeats a few
            # examples to even out the ranks and so counts them twice in the synced metrics.
            sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return FmbDataLoader(
            dataset, batch_size=self.batch_size, shuffle=train and not isinstance(dataset, StreamImageSet),
            sampler=sampler, drop_last=train, num_workers=workers, pin_memory=self.pin_memory,
            persistent_workers=persistent,
            collate_fn=Collate(self.state, self.num_classes, mix=train),
            fmb_hooks=LoaderHooks(self, train=train))

    def train_dataloader(self) -> FmbDataLoader:
        return self._loader("train")

    def val_dataloader(self) -> FmbDataLoader:
        return self._loader("val")

    def test_dataloader(self) -> FmbDataLoader:
        return self._loader("test")


class _HashSplit:
    """Filter for a streamed carve: a seeded CRC of the image bytes (or path) decides
    whether an example is held out, identically on every rank and every rerun."""

    def __init__(self, image_column: str, fraction: float, seed: int):
        self.image_column, self.fraction, self.seed = image_column, fraction, seed

    def __call__(self, example: dict, want_val: bool) -> bool:
        import zlib

        value = example[self.image_column]
        data = (value.get("bytes") or (value.get("path") or "").encode()) if isinstance(value, dict) else bytes(str(value), "utf8")
        bucket = zlib.crc32(data, self.seed & 0xFFFFFFFF) % 10_000
        return (bucket < self.fraction * 10_000) == want_val


_DATA_KEYS = ("source", "name", "train_split", "val_split", "test_split", "val_fraction", "image_column",
              "label_column", "image_size", "eval_image_size", "crop_ratio", "batch_size", "num_workers",
              "streaming", "seed", "cache_dir", "on_bad_image", "synthetic_size", "synthetic_classes",
              "pin_memory", "persistent_workers", "shuffle_buffer")
_AUG_KEYS = ("randaugment_magnitude", "mixup_alpha", "cutmix_alpha", "crop_scale_min", "hflip")
_AUG_IGNORED = ("label_smoothing",)  # the loss's, not the data's


def _as_dict(cfg) -> dict:
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # omegaconf is a dependency; plain dicts work without it
        pass
    return dict(cfg)


def build_datamodule(data_cfg, aug_cfg=None, seed: int = 0) -> ImageDataModule:
    """An ImageDataModule from the `data` and `aug` config sections (dicts or OmegaConf).
    ``data.seed``, when set, wins over ``seed`` (the run's seed)."""
    data, aug = _as_dict(data_cfg), _as_dict(aug_cfg)
    for key in data:
        if key not in _DATA_KEYS:
            raise choice_error("config key", f"data.{key}", [f"data.{k}" for k in _DATA_KEYS])
    for key in aug:
        if key not in _AUG_KEYS + _AUG_IGNORED:
            raise choice_error("config key", f"aug.{key}", [f"aug.{k}" for k in _AUG_KEYS + _AUG_IGNORED])
    kwargs = {k: v for k, v in data.items() if v is not None or k in ("val_split", "test_split", "name")}
    if kwargs.get("seed") is None:
        kwargs["seed"] = seed
    kwargs.update({k: aug[k] for k in _AUG_KEYS if aug.get(k) is not None})
    return ImageDataModule(**kwargs)
