"""CUDA graphs for the training step: the auto decision with its reasons, the refusals where a
captured graph cannot work, and (on a CUDA machine) the captured run's losses against eager."""
import pytest
import torch

from conftest import tiny_train_overrides
from fmb.config import load_config
from fmb.device import Machine
from fmb.errors import FmbError
from fmb.training import auto

LONG = auto.COMPILE_MIN_STEPS


def test_auto_captures_only_long_static_cuda_runs_and_says_why():
    assert auto.cuda_graphs("auto", "cuda", False, LONG).value is True
    assert "one graph launch per step" in auto.cuda_graphs("auto", "cuda", False, LONG).reason
    decision = auto.cuda_graphs("auto", "cpu", False, LONG)
    assert decision.value is False and decision.reason == "no CUDA"
    assert "dynamic shapes" in auto.cuda_graphs("auto", "cuda", True, LONG).reason  # progressive learning
    assert "600 training steps" in auto.cuda_graphs("auto", "cuda", False, 600).reason
    assert auto.cuda_graphs("auto", "cuda", False, None).value is False  # a stream: length unknown
    assert auto.cuda_graphs(False, "cuda", False, LONG).line("model.cuda_graphs") == "model.cuda_graphs=False (explicit)"


def test_capture_is_refused_where_it_cannot_work():
    with pytest.raises(FmbError, match="needs a CUDA GPU"):
        auto.cuda_graphs(True, "cpu", False, LONG)
    with pytest.raises(FmbError, match="static shapes"):
        auto.cuda_graphs(True, "cuda", True, LONG)  # progressive learning: the size changes per stage
    with pytest.raises(FmbError, match="model.cuda_graphs"):
        load_config([], ["model.cuda_graphs=sometimes"])


def test_the_plan_records_the_decision_on_a_cpu_machine():
    cfg = load_config([], [])
    decision = auto.resolve(cfg, Machine(cores=2)).decisions["model.cuda_graphs"]
    assert (decision.value, decision.reason, decision.requested) == (False, "no CUDA", "auto")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_captured_training_follows_the_eager_loss_trajectory(image_folder, tmp_path):
    import pandas as pd

    from fmb.training.run import train

    losses = {}
    for graphs in (False, True):
        run_dir = tmp_path / f"graphs-{graphs}"
        train(load_config([], tiny_train_overrides(image_folder, run_dir, **{
            "model.cuda_graphs": graphs, "model.compile": False, "trainer.accelerator": "cuda",
            "trainer.precision": "32-true", "trainer.max_epochs": 2, "ema.enabled": False})))
        metrics = pd.read_csv(run_dir / "metrics.csv")
        losses[graphs] = metrics["train/loss_step"].dropna().to_numpy()
    assert len(losses[True]) == len(losses[False]) > 0
    assert abs(losses[True] - losses[False]).max() < 1e-3
