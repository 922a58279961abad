"""`ExactResume`: a resumed run continues the random streams where the checkpoint left them.

Lightning restores weights, optimizer, schedule and loop counters, but not the process's
random state: without it a run resumed at an epoch boundary draws other shuffles, crops,
MixUp λs, dropout and stochastic-depth masks than the uninterrupted run, and ends at another
accuracy. The states of torch (CPU and every CUDA device), NumPy and Python's `random` are
saved with every checkpoint and put back as the checkpoint is restored: after that, the first
draws of the resumed fit (the loader's seed, its shuffle, the first batch's crops; Lightning
prefetches that batch before the epoch's hooks run, and runs its sanity check with the random
state isolated) are the ones the uninterrupted run made after saving the checkpoint.

What it cannot restore, said once at resume:
- a checkpoint from inside an epoch (SIGTERM, Ctrl-C): the rest of that epoch sees another
  data order (the loaders cannot be resumed mid-way), from the next epoch on the run is exact;
- persistent loader workers (data.num_workers > 0): each worker keeps its own stream, which
  starts afresh in a resumed run, so augmentations done in workers differ.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from fmb.utils import rank_zero_print


def capture() -> dict:
    """The process's random states as tensors and plain numbers (checkpoints load with weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class ExactResume(Callback):
    def __init__(self):
        self._pending = False
        self._mid_epoch = False
        self._after_step: dict | None = None
        self._rewound = False
        self._again: dict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The stream as the training step left it: a validation that follows draws its loader's seed from it.
        self._after_step = capture()

    def rewind_to_last_step(self) -> None:
        """The next checkpoint resumes by running the interrupted validation again, which draws
        from the stream again: it gets the state the last training step left, as the
        uninterrupted run had when that validation began."""
        self._rewound = self._after_step is not None

    def state_dict(self) -> dict:
        if self._rewound:
            return {"random": self._after_step, "validation_again": True}
        return {"random": capture()}  # taken when the checkpoint is written

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("random") is not None:
            restore(state_dict["random"])
            self._pending = True  # say what could not be restored when the epoch starts
        # Resuming to validate again, Lightning first opens the finished epoch's train loader (a
        # seed, a shuffle and a prefetched batch's crops drawn for nothing): the stream is put back
        # once more as training starts (after that loader, before the validation).
        self._again = state_dict["random"] if state_dict.get("validation_again") else None

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
        self._mid_epoch = progress.get("is_last_batch") is False and progress.get("current", {}).get("ready", 0) > 0

    def on_train_start(self, trainer, pl_module) -> None:
        if self._again is not None:
            restore(self._again)
            self._again = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not self._pending:
            return
        self._pending = False
        limits = []
        if self._mid_epoch:
            limits.append(f"the checkpoint is from inside epoch {trainer.current_epoch}, so its remaining batches "
                          "come in another order (exact from the next epoch)")
        loader = trainer.train_dataloader
        if getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0) > 0:
            limits.append(f"the {loader.num_workers} persistent loader workers start new random streams, so "
                          "augmentations differ (data.persistent_workers=false makes it exact)")
        if limits:
            rank_zero_print("[yellow]resume:[/] random state restored; " + "; ".join(limits))
