"""Lightning's private surfaces that fmb relies on (see fmb/compat/__init__.py)."""
from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


def ema_use_multi_avg_fn(callback: EMAWeightAveraging, multi_avg_fn) -> None:
    """Make Lightning's EMA callback average with `multi_avg_fn`: it passes a fixed-decay
    `avg_fn` to AveragedModel, which prefers multi_avg_fn only when avg_fn is absent, and keeps
    those arguments in the private `_kwargs`."""
    callback._kwargs.pop("avg_fn", None)
    callback._kwargs["multi_avg_fn"] = multi_avg_fn


def ema_averaged_module(callback: EMAWeightAveraging):
    """The module inside the callback's AveragedModel (private `_average_model`), or None before fit."""
    average = callback._average_model
    return None if average is None else average.module


def redo_interrupted_validation(checkpoint: dict) -> None:
    """Make a checkpoint saved while validation ran resume by running that validation again, whole.

    Lightning's loop state (the private `loops` layout) counts the validation batches already done;
    resumed at an epoch's last training batch it skips validation altogether (its metrics were never
    logged, so the epoch has no val row and ModelCheckpoint finds no monitor). Marking the first
    validation batch as started but none processed is Lightning's "restarted mid-evaluation" state,
    from which it validates from the first batch (the metric states are fresh after a resume).
    """
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.val_loop.batch_progress"]
    progress["total"].update(ready=1, started=1, processed=0, completed=0)
    progress["current"].update(ready=0, started=0, processed=0, completed=0)
    progress["is_last_batch"] = False


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv (in the private `_check_log_dir_exists`);
    a resumed run must keep its history, so this one reads the existing header instead."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as f:
                self.metrics_keys = list(next(csv.reader(f), []))


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose experiment is the appending writer (its private `_experiment`, `_fs`)."""

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
