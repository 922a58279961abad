"""The DataLoader fmb hands to Lightning, and what it does at each epoch's edges.

A thin DataLoader subclass, so Lightning can still re-create it with a DistributedSampler:
at the start of a train pass it records the epoch (streams reshuffle with it); at the end
it reports images skipped by ``on_bad_image=skip``; and it turns an FmbError raised in a
worker (which torch re-raises wrapped in a traceback text) back into its one-line message.
"""
from __future__ import annotations

import logging

from torch.utils.data import DataLoader

from fmb.errors import FmbError

log = logging.getLogger(__name__)


def unwrap_worker_error(error: FmbError) -> FmbError:
    """The original one-line message of an FmbError that crossed a worker boundary."""
    text = str(error)
    if not text.startswith("Caught "):
        return error
    marker = "FmbError: "
    lines = [line for line in text.splitlines() if marker in line]
    return FmbError(lines[-1].split(marker, 1)[1], getattr(error, "exit_code", 2)) if lines else error


class LoaderHooks:
    def __init__(self, datamodule, train: bool):
        self.datamodule, self.train = datamodule, train

    def start(self) -> int:
        if self.train:
            self.datamodule._start_train_epoch()
        return self.datamodule.state.total_skipped()

    def end(self, skipped_before: int) -> None:
        skipped = self.datamodule.state.total_skipped() - skipped_before
        if skipped:
            kind = "train" if self.train else "evaluation"
            log.warning("skipped %d unreadable image(s) in this %s pass (data.on_bad_image=skip)", skipped, kind)
        self.datamodule.last_pass_skipped = skipped


class FmbDataLoader(DataLoader):
    def __init__(self, dataset, *args, fmb_hooks: LoaderHooks | None = None, **kwargs):
        super().__init__(dataset, *args, **kwargs)
        self.fmb_hooks = fmb_hooks

    def __iter__(self):
        hooks = self.fmb_hooks
        skipped_before = hooks.start() if hooks is not None else 0
        return _Pass(super().__iter__(), hooks, skipped_before)


class _Pass:
    """One pass over the loader: forwards batches, cleans worker errors, reports at the end."""

    def __init__(self, iterator, hooks, skipped_before: int):
        self.iterator, self.hooks, self.skipped_before = iterator, hooks, skipped_before

    def __iter__(self):
        return self

    def __len__(self):
        return len(self.iterator)

    def __next__(self):
        try:
            return next(self.iterator)
        except StopIteration:
            if self.hooks is not None:
                self.hooks.end(self.skipped_before)
                self.hooks = None
            raise
        except FmbError as error:
            raise unwrap_worker_error(error) from None
