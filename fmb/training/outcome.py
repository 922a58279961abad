"""How a fit ended — completed, interrupted, preempted or failed — and what the user is told.

`with Outcome(trainer, run) as outcome: trainer.fit(...)` catches whatever ends the fit and
turns it into a status, an exit code and an error.log; the run's summary is written after the
block, and only then `outcome.reraise()` hands the error on (so even a failed run leaves its
summary). The ladder:
- SIGTERM (SLURM's preemption and time-limit signal): Lightning stops its loops with
  SIGTERMException; `Preemption` has saved last.ckpt; status "preempted", exit 143. Any other
  exception raised after SIGTERM arrived is the signal breaking something on its way
  (torch.compile's workers, a killed loader worker): a preemption too.
- Ctrl-C: Lightning turns it into SystemExit (and ignores SIGINT from then on): "interrupted".
- FmbError (a user's mistake found mid-run): "failed", the error as it is.
- anything else: "failed", one line naming error.log (the traceback with --debug).
"""
from __future__ import annotations

import os
import signal
import threading

from lightning.pytorch.callbacks import Callback, WeightAveraging
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fmb.compat.lightning import redo_interrupted_validation
from fmb.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_PREEMPTED, FmbError, unwrap_worker_error
from fmb.training.random_state import ExactResume
from fmb.training.run_files import restart_command
from fmb.training.summary import slurm_job


class Preemption(Callback):
    """Saves the current state as last.ckpt when SIGTERM stops the fit, so the run (or SLURM's
    requeued job) resumes from the step it reached. A SIGTERM during an epoch's validation (Lightning
    stops after the validation batch in flight) resumes with that validation run again from its first
    batch, on the same weights."""

    def __init__(self, run_dir):
        self.path = run_dir / "checkpoints" / "last.ckpt"
        self.saved = False
        self._cut_validation = False

    def on_exception(self, trainer, pl_module, exception) -> None:
        if (isinstance(exception, SIGTERMException) or trainer.received_sigterm) and trainer.state.fn == "fit":
            self._cut_validation = trainer.validating and not trainer.sanity_checking
            if self._cut_validation:
                for callback in trainer.callbacks:
                    if isinstance(callback, WeightAveraging):
                        # EMA validates on the averaged weights swapped into the model; its epoch-end
                        # hook swaps them back, so the checkpoint holds each set where it belongs.
                        callback.on_validation_epoch_end(trainer, pl_module)
                    elif isinstance(callback, ExactResume):
                        callback.rewind_to_last_step()
            trainer.save_checkpoint(self.path)
            self.saved = True

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._cut_validation:
            redo_interrupted_validation(checkpoint)


class Outcome:
    def __init__(self, trainer, run):
        self.trainer, self.run = trainer, run
        self.status, self.error = "completed", None  # summary.json's status and one-line error
        self._raise: BaseException | None = None

    def __enter__(self) -> Outcome:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        trainer, run_dir = self.trainer, self.run.path
        if exc is None:
            if trainer.interrupted:
                self.status = "interrupted"
            return False
        if isinstance(exc, SIGTERMException):
            self._preempted()
        elif isinstance(exc, FmbError):
            self.status, self.error, self._raise = "failed", str(unwrap_worker_error(exc)), exc
            self.run.write_error_log()
        elif isinstance(exc, Exception):
            self.run.write_error_log()
            if trainer.received_sigterm:
                self._preempted()
            else:
                self.status = "failed"
                self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if os.environ.get("FMB_DEBUG"):
                    self._raise = exc
                else:
                    self._raise = FmbError(f"run failed in {run_dir}: {self.error} (traceback in "
                                           f"{run_dir / 'error.log'})", exit_code=EXIT_FAILED)
                    self._raise.__cause__ = exc
        else:  # Ctrl-C
            self.status = "interrupted"
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.default_int_handler)
            where = (f"continue with: fmb train --resume {run_dir}" if (run_dir / "checkpoints" / "last.ckpt").is_file()
                     else f"start it again in place: {restart_command(run_dir)}")
            self._raise = FmbError(f"run interrupted at step {trainer.global_step}; {where}", EXIT_INTERRUPTED)
        return True  # the summary is written first; reraise() hands the error on

    def _preempted(self) -> None:
        self.status = "preempted"
        self._raise = FmbError(
            f"run preempted (SIGTERM){' and requeued by SLURM' if slurm_job() else ''}: checkpoint of step "
            f"{self.trainer.global_step} saved in {self.run.path / 'checkpoints' / 'last.ckpt'}; "
            f"continue with: fmb train --resume {self.run.path}", EXIT_PREEMPTED)

    def reraise(self) -> None:
        if self._raise is not None:
            raise self._raise
