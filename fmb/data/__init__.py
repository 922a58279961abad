"""Data: any image-classification source → Lightning loaders (see datamodule.py).

The names below load on first use (PEP 562), so `fmb.data.workers` and the other light
modules import without `datasets` and Lightning: the machine check and ablation jobs use them.
"""
from importlib import import_module

_HOMES = {"ImageDataModule": "datamodule", "Columns": "columns", "digits_dataset": "sources",
          "load_source": "sources", "Collate": "transforms", "build_train_transform": "transforms",
          "build_eval_transform": "transforms", "to_rgb": "transforms", "IMAGENET_MEAN": "transforms",
          "IMAGENET_STD": "transforms"}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'fmb.data' has no attribute {name!r}")
    return getattr(import_module(f"fmb.data.{_HOMES[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
