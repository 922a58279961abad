"""Which examples play which role — train, val, test, holdout — resolved from the data config.

Lightning-free: `resolve_splits(data)` loads the source (fmb/data/sources.py), detects the
image and label columns, picks the validation and test splits by name, carves a stratified
validation set from train when the source has none (seeded by `data.split_seed`, so runs with
different seeds are judged on the same images) and holds out a checkpoint-selection set when
asked. The datamodule builds its loaders from the result.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import datasets
import numpy as np

from fmb.config.schema import DataConfig
from fmb.data.columns import Columns, as_image_column, resolve_columns
from fmb.data.image_sets import HashSplit
from fmb.data.sources import load_source
from fmb.errors import FmbError, choice_error

log = logging.getLogger(__name__)

VAL_NAMES = ("validation", "valid", "val", "dev")
TEST_NAMES = ("test",)


@dataclass(frozen=True)
class Split:
    dataset: object  # a datasets.Dataset or IterableDataset
    name: str  # the source's split name
    rows: object = None  # row indices into `dataset`, or None for all of it

    def __iter__(self):  # (dataset, name, rows), as callers unpack it
        return iter((self.dataset, self.name, self.rows))


@dataclass
class Splits:
    columns: Columns
    roles: dict = field(default_factory=dict)  # role → Split

    def __getitem__(self, role: str) -> Split:
        return self.roles[role]

    def __contains__(self, role: str) -> bool:
        return role in self.roles

    def sizes(self, streaming: bool) -> dict:
        """Examples per role; None where a stream's size is unknown."""
        return {role: None if streaming else len(s.rows if s.rows is not None else s.dataset)
                for role, s in self.roles.items()}


def resolve_splits(d: DataConfig, raw: dict | None = None) -> Splits:
    """The roles of `d`'s source (synthetic data has none: its sets are generated); `raw` is
    the source as `load_source` returned it, where the caller has loaded it already."""
    if d.source == "synthetic":
        return Splits(Columns("image", "label", [str(i) for i in range(d.synthetic_classes)]))
    if raw is None:
        raw = load_source(d.source, d.name, cache_dir=d.cache_dir, streaming=d.streaming)
    available = list(raw)
    if d.train_split not in raw:
        raise choice_error("data.train_split", d.train_split, available)
    train = raw[d.train_split]
    columns = resolve_columns(train.features, d.image_column, d.label_column,
                              lambda col: _label_values(d, train, col))
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
        splits.update(_carve(d, splits["train"][0], columns))
    if d.holdout_fraction:  # for choosing checkpoints, so the reported split never chooses
        hf, split, rows = splits["train"]
        kept, held = _hold_out(d, hf, rows if rows is not None else np.arange(len(hf)), columns,
                                    d.holdout_fraction, "data.holdout_fraction")
        splits["train"], splits["holdout"] = (hf, split, kept), (hf, split, held)
    return Splits(columns, {role: Split(*value) for role, value in splits.items()})


def _label_values(d: DataConfig, hf, column: str):
    if d.streaming:  # one pass over the label column only
        return [row[column] for row in hf.select_columns([column])]
    return hf[column]


def _carve(d: DataConfig, train, columns: Columns) -> dict:
    """A validation set from train when the source has none: stratified, seeded by data.split_seed."""
    if d.streaming:
        keep = HashSplit(columns.image, d.val_fraction, d.split_seed)
        return {"train": (train.filter(keep, fn_kwargs={"want_val": False}), d.train_split, None),
                "val": (train.filter(keep, fn_kwargs={"want_val": True}), d.train_split, None)}
    kept, held = _hold_out(d, train, np.arange(len(train)), columns, d.val_fraction, "data.val_fraction")
    return {"train": (train, d.train_split, kept), "val": (train, d.train_split, held)}


def _hold_out(d: DataConfig, hf, rows, columns: Columns, fraction: float, key: str) -> tuple[list, list]:
    """(kept rows, held-out rows) of `rows`: stratified by label, seeded by data.split_seed.

    Only the label column is split (cheap), with each row's position, so the image sets
    read the original rows and name them by it."""
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
