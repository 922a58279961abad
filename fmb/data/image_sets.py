"""The torch datasets the loaders read: map-style over a `datasets.Dataset`, iterable over
a streamed `datasets.IterableDataset`, and random tensors for benchmarks.

Images stay encoded until a loader worker asks for one: the `datasets` transform
(`with_transform`) decodes the requested rows only, and a bad image becomes an error that
names its index, or a None that the collate drops and counts (`on_bad_image=skip`).
"""
from __future__ import annotations

import zlib

import torch
import torch.utils.data

from fmb.data.columns import Columns
from fmb.data.transforms import decode_image
from fmb.errors import FmbError

MAX_SKIP_SLOTS = 65  # slot 0: the main process, slot 1 + k: loader worker k


class SkipCounter:
    """Bad images skipped (`on_bad_image=skip`), counted in shared memory with one slot per
    process, so loader workers (forked or spawned) never race on one counter."""

    def __init__(self):
        self.slots = torch.zeros(MAX_SKIP_SLOTS, dtype=torch.int64).share_memory_()

    def add(self) -> None:
        info = torch.utils.data.get_worker_info()
        self.slots[0 if info is None else 1 + info.id % (MAX_SKIP_SLOTS - 1)] += 1

    @property
    def total(self) -> int:
        return int(self.slots.sum())


class HashSplit:
    """Filter for a streamed carve: a seeded CRC of the image bytes (or path) decides
    whether an example is held out, identically on every rank and every rerun (a stream
    cannot be stratified without reading it whole)."""

    def __init__(self, image_column: str, fraction: float, seed: int):
        self.image_column, self.fraction, self.seed = image_column, fraction, seed

    def __call__(self, example: dict, want_val: bool) -> bool:
        value = example[self.image_column]
        if isinstance(value, dict):
            data = value.get("bytes") or (value.get("path") or "").encode()
        else:
            data = str(value).encode()
        bucket = zlib.crc32(data, self.seed & 0xFFFFFFFF) % 10_000
        return (bucket < self.fraction * 10_000) == want_val


class DecodeRows:
    """`datasets` on-access transform: decode the image column of the requested rows to RGB
    images (PIL, or uint8 tensors for JPEGs: `decode_image`), returning the exception instead
    of raising so the caller knows the index."""

    def __init__(self, image_column: str):
        self.image_column = image_column

    def __call__(self, batch: dict) -> dict:
        decoded = []
        for value in batch[self.image_column]:
            try:
                decoded.append(decode_image(value))
            except Exception as exc:  # any decoder failure is a bad image, handled by the caller
                exc.fmb_path = _image_path(value)  # so the error names the file, not only the row
                decoded.append(exc)
        batch[self.image_column] = decoded
        return batch


def _image_path(value) -> str | None:
    """The file an undecoded image came from, where `datasets` kept it (image folders do)."""
    if isinstance(value, dict):
        return value.get("path") or None
    return value if isinstance(value, str) else None


class _BadImages:
    def __init__(self, skipped: SkipCounter, on_bad_image: str, where: str):
        self.skipped, self.on_bad_image, self.where = skipped, on_bad_image, where

    def __call__(self, position: str, exc: BaseException):
        if self.on_bad_image == "skip":
            self.skipped.add()
            return None
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        path = getattr(exc, "fmb_path", None)
        what = f"{path} (at {position} of {self.where})" if path else f"at {position} of {self.where}"
        raise FmbError(f"corrupt image {what} ({reason}); expected a readable image: "
                       f"fix or remove it, or set data.on_bad_image=skip to drop bad images")


class MapImageSet(torch.utils.data.Dataset):
    """(image tensor, int label) for rows ``indices`` (default: all) of a `datasets.Dataset`."""

    def __init__(self, hf_dataset, columns: Columns, transform, skipped: SkipCounter,
                 on_bad_image: str = "error", where: str = "split 'train'", indices=None):
        hf_dataset = hf_dataset.select_columns([columns.image, columns.label])
        self.rows = hf_dataset.with_transform(DecodeRows(columns.image))
        self.columns, self.transform, self.indices = columns, transform, indices
        self.bad = _BadImages(skipped, on_bad_image, where)

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.rows)

    def __getitem__(self, i: int):
        index = int(self.indices[i]) if self.indices is not None else int(i)
        row = self.rows[index]
        image = row[self.columns.image]
        if isinstance(image, BaseException):
            return self.bad(f"index {index}", image)
        return self.transform(image), self.columns.encode(row[self.columns.label])


class StreamImageSet(torch.utils.data.IterableDataset):
    """Examples of a streamed split for one rank, divided between the loader's workers.

    ``hf_stream`` is already shuffled (seeded buffer) and split for this rank with
    `split_dataset_by_node`; `datasets` hands each worker its own shards. With
    ``batches_per_epoch`` set (training), the rank yields exactly that many full batches:
    workers stop at their share, and a worker whose shards run short starts them again, so
    every rank runs the same number of steps and DDP never waits on a rank that ran dry.
    """

    def __init__(self, hf_stream, columns: Columns, transform, skipped: SkipCounter,
                 on_bad_image: str = "error", where: str = "split 'train'", batches_per_epoch: int | None = None,
                 batch_size: int = 1, rank: int = 0):
        self.stream = hf_stream.select_columns([columns.image, columns.label])
        self.columns, self.transform = columns, transform
        self.batches_per_epoch, self.batch_size, self.rank = batches_per_epoch, batch_size, rank
        self.bad = _BadImages(skipped, on_bad_image, where)

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("length of an evaluation stream is not known in advance")
        return self.batches_per_epoch * self.batch_size

    def _quota(self, worker: int, workers: int) -> int | None:
        if self.batches_per_epoch is None:
            return None
        share, extra = divmod(self.batches_per_epoch, workers)
        return (share + (worker < extra)) * self.batch_size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        quota = self._quota(worker, workers)
        produced, position = 0, 0
        while quota is None or produced < quota:
            seen = 0
            for row in self.stream:
                if quota is not None and produced >= quota:
                    return
                seen += 1
                yield self._item(row, position, worker)
                produced, position = produced + 1, position + 1
            if quota is None or seen == 0:
                return  # evaluation: one pass; or nothing to repeat

    def _item(self, row: dict, position: int, worker: int):
        try:
            image = decode_image(row[self.columns.image])
        except Exception as exc:
            exc.fmb_path = _image_path(row[self.columns.image])
            return self.bad(f"stream position {position} (rank {self.rank}, worker {worker})", exc)
        return self.transform(image), self.columns.encode(row[self.columns.label])


class SyntheticImageSet(torch.utils.data.Dataset):
    """Random normalized-looking tensors of one size: no decoding, no augmentation,
    deterministic per index. For timing the model, not for learning."""

    def __init__(self, size: int, num_classes: int, pixels: int, seed: int = 0):
        self.size, self.num_classes, self.pixels, self.seed = size, num_classes, pixels, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int):
        pixels = self.pixels
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        return torch.randn(3, pixels, pixels, generator=generator), int(i) % self.num_classes
