"""Training and evaluation on Lightning: the module, its recipe, runs, resume, eval.

The public pieces, for notebooks and scripts (imported on first use, so `import fmb.training`
stays light)::

    from fmb.training import ImageClassifier, ImageDataModule, train
    from fmb.training.evaluate import evaluate   # (a submodule of the same name, so not re-exported)

`ImageClassifier(config, num_classes, class_names)` is a plain LightningModule and
`ImageDataModule(config.data, config.aug)` a plain LightningDataModule: both run in any
`lightning.Trainer` (see docs/python-api.md).
"""
from __future__ import annotations

_EXPORTS = {
    "ImageClassifier": "fmb.training.module",
    "accuracy_metrics": "fmb.training.module",
    "ImageDataModule": "fmb.data.datamodule",
    "train": "fmb.training.run",
    "build_trainer": "fmb.training.trainer",
    "build_data": "fmb.training.run",
    "build_module": "fmb.training.run",
    "load_run_config": "fmb.training.run",
    "load_checkpoint": "fmb.training.evaluate",
    "restore_module": "fmb.training.evaluate",
    "ProgressiveLearning": "fmb.training.progressive",
    "PlainProgress": "fmb.training.progress",
    "run_loggers": "fmb.training.loggers",
    "LogHyperparameters": "fmb.training.loggers",
    "ResumableCSVLogger": "fmb.training.loggers",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fmb.training' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_EXPORTS[name]), name)


def __dir__():
    return __all__
