"""Data: any image-classification source → Lightning loaders (see datamodule.py)."""
from fmb.data.columns import Columns
from fmb.data.datamodule import ImageDataModule
from fmb.data.sources import digits_dataset, load_source
from fmb.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, Collate, build_eval_transform, build_train_transform,
                                 to_rgb)

__all__ = ["ImageDataModule", "Columns", "digits_dataset", "load_source", "Collate", "build_train_transform",
           "build_eval_transform", "to_rgb", "IMAGENET_MEAN", "IMAGENET_STD"]
