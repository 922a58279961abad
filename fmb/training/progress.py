"""Plain progress lines for logs that are not a terminal (a SLURM .out file, `| tee`, nohup).

Rich's progress bar redraws one line in place, so piped to a file it shows nothing until the
epoch ends. `PlainProgress` prints a plain line every `every_n_steps` optimizer steps
instead — step, loss, images/s, ETA — and one line per validation; on a terminal it stays
silent (the bar is there).
"""
from __future__ import annotations

import sys
import time

import lightning as L
import torch


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class PlainProgress(L.Callback):
    """`every_n_steps` > 0; `force` prints even on a terminal (tests, notebooks)."""

    def __init__(self, every_n_steps: int = 50, force: bool = False, stream=None):
        self.every = int(every_n_steps)
        self.force = force
        self.stream = stream
        self._start = self._last_time = None
        self._last_step, self._images, self._start_step = 0, 0, 0

    def _out(self):
        return self.stream if self.stream is not None else sys.stdout

    def _active(self, trainer) -> bool:
        if self.every <= 0 or not trainer.is_global_zero:
            return False
        return self.force or not getattr(self._out(), "isatty", lambda: False)()

    def _print(self, text: str) -> None:
        print(text, file=self._out(), flush=True)

    def on_train_start(self, trainer, pl_module):
        self._start = self._last_time = time.perf_counter()
        self._start_step = self._last_step = trainer.global_step
        self._images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self._active(trainer):
            return
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._images += (images.shape[0] if isinstance(images, torch.Tensor) else 0) * trainer.world_size
        step = trainer.global_step
        if step == self._last_step or step % self.every:
            return
        now = time.perf_counter()
        rate = self._images / max(now - self._last_time, 1e-9)
        total = trainer.estimated_stepping_batches
        per_step = (now - self._start) / max(step - self._start_step, 1)
        eta = f"eta {_clock(per_step * (total - step))}" if total and total != float("inf") else ""
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        loss_text = f"loss {float(loss):.4f}" if isinstance(loss, torch.Tensor) else ""
        total_text = f"/{int(total)}" if total and total != float("inf") else ""
        self._print(f"epoch {trainer.current_epoch} step {step}{total_text} {loss_text} "
                    f"{rate:.1f} img/s elapsed {_clock(now - self._start)} {eta}".replace("  ", " ").rstrip())
        self._last_step, self._last_time, self._images = step, now, 0

    def on_validation_end(self, trainer, pl_module):  # after the epoch's metrics are logged
        if not self._active(trainer) or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(("val/", "val_raw/")) and isinstance(v, torch.Tensor) and v.numel() == 1}
        if metrics:
            shown = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
            self._print(f"epoch {trainer.current_epoch} step {trainer.global_step} {shown}")
