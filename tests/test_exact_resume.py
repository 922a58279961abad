"""A run stopped at an epoch boundary and resumed ends exactly where the uninterrupted run does:
weights, optimizer, schedule and the random streams (shuffle, crops, dropout) all continue."""
import json

import pytest
from lightning.pytorch.callbacks import Callback

from conftest import tiny_train_overrides
from fmb.config import load_config
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
