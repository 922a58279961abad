"""Loggers chosen by run.loggers, several at once, with no network: W&B offline and MLflow's
file store leave their files in the run dir; hyperparameters include the placement; plain
progress lines when stdout is not a terminal."""
import io
import sys

import pytest

from conftest import tiny_train_overrides
from fmb.config import load_config
from fmb.errors import FmbError
from fmb.training.run import train


@pytest.mark.slow
def test_csv_tensorboard_wandb_mlflow_in_one_offline_run(image_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path / "run"
    cfg = load_config([], tiny_train_overrides(image_folder, run_dir, **{
        "run.loggers": "[csv,tensorboard,wandb,mlflow]", "run.wandb_offline": "true", "run.name": "logtest",
        "run.progress_every": 1, "model.blocks": "FFMMMM"}))
    summary = train(cfg)
    assert summary["status"] == "completed"

    assert (run_dir / "metrics.csv").is_file()
    hparams = (run_dir / "hparams.yaml").read_text()
    assert "placement: FFMMMM" in hparams and "model.width_mult: 0.25" in hparams
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1 and list(wandb_runs[0].glob("run-*.wandb"))

    mlflow_runs = [p for p in (run_dir / "mlruns").glob("*/*") if (p / "meta.yaml").is_file()]
    assert len(mlflow_runs) == 1
    params = mlflow_runs[0] / "params"
    assert (params / "placement").read_text() == "FFMMMM"
    assert (params / "optim.name").read_text() == "adamw"
    assert (mlflow_runs[0] / "metrics" / "val" / "top1").is_file()
    assert (mlflow_runs[0] / "tags" / "run_dir").read_text() == str(run_dir.resolve())

    out = capsys.readouterr().out  # captured, so not a terminal: plain lines every step
    lines = [line for line in out.splitlines() if line.startswith("epoch 0 step")]
    assert any("step 1/3 loss" in line and "img/s" in line and "eta" in line for line in lines), out[-2000:]
    assert any("val/top1" in line for line in lines)


def test_logger_choice_errors(tmp_path, monkeypatch):
    with pytest.raises(FmbError, match="run.loggers.*includes csv"):
        load_config([], ["run.loggers=[tensorboard]"])
    with pytest.raises(FmbError, match="comet"):
        load_config([], ["run.loggers=[csv,comet]"])
    from fmb.training.loggers import run_loggers

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    cfg = load_config([], ["run.loggers=[csv,wandb]"])
    with pytest.raises(FmbError, match=r"pip install 'fmb\[wandb\]'"):
        run_loggers(tmp_path, cfg.run)


def test_plain_progress_silent_on_a_terminal():
    from fmb.training.progress import PlainProgress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    class Trainer:
        is_global_zero = True

    assert not PlainProgress(5, stream=Tty())._active(Trainer())
    assert PlainProgress(5, stream=io.StringIO())._active(Trainer())
    assert not PlainProgress(0, stream=io.StringIO())._active(Trainer())
