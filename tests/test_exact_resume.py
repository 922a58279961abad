"""A run stopped at an epoch boundary and resumed ends exactly where the uninterrupted run does:
weights, optimizer, schedule and the random streams (shuffle, crops, dropout) all continue."""
import csv
import json
import os
import signal

import pytest
from lightning.pytorch.callbacks import Callback

from conftest import tiny_train_overrides
from fmb.config import load_config
from fmb.errors import EXIT_PREEMPTED, FmbError
from fmb.training.run import train


class _StopAfterFirstEpoch(Callback):
    """Stands in for a run killed right after its first epoch's checkpoint."""

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            trainer.should_stop = True


@pytest.mark.slow
def test_resumed_at_an_epoch_boundary_the_run_ends_with_the_uninterrupted_runs_loss(run_cli, finished_run, tmp_path):
    straight = finished_run.summary  # two epochs straight through, same data, seed and config
    cfg = load_config([], tiny_train_overrides(finished_run.images, tmp_path / "split", **{"trainer.max_epochs": 2}))
    first = train(cfg, callbacks=[_StopAfterFirstEpoch()])
    assert first["epochs"] == 1
    out = run_cli("train", "--resume", str(tmp_path / "split"))
    assert out.returncode == 0, out.stderr
    resumed = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert resumed["global_step"] == straight["global_step"]
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], rel=1e-6)
    assert resumed["val_top1"] == straight["val_top1"]


class _SigtermInFirstValidation(Callback):
    """SLURM's SIGTERM arriving while epoch 0's validation runs (after its first batch of two)."""

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.current_epoch == 0 and not trainer.sanity_checking and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_during_validation_resumes_with_that_validation_and_ends_as_the_uninterrupted_run(
        run_cli, finished_run, tmp_path):
    straight = finished_run.summary
    run_dir = tmp_path / "cut"
    cfg = load_config([], tiny_train_overrides(finished_run.images, run_dir, **{"trainer.max_epochs": 2}))
    with pytest.raises(FmbError, match=r"preempted \(SIGTERM\)") as stopped:
        train(cfg, callbacks=[_SigtermInFirstValidation()])
    assert stopped.value.exit_code == EXIT_PREEMPTED
    out = run_cli("train", "--resume", str(run_dir))
    assert out.returncode == 0, out.stderr
    assert "could not find the monitored key" not in out.stderr + out.stdout
    with open(run_dir / "metrics.csv", newline="") as f:
        validated = [row["epoch"] for row in csv.DictReader(f) if row["val/top1"]]
    assert validated == ["0", "1"]  # epoch 0's validation ran (once, whole) after the resume
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["global_step"] == straight["global_step"]
    # the checkpoint kept the training weights and the EMA apart (validation had swapped them)
    assert resumed["val_loss"] == pytest.approx(straight["val_loss"], rel=1e-6)
    assert resumed["val_top1"] == straight["val_top1"]
