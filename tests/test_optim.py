"""The paper's optimizer (TensorFlow's RMSProp) and the official learning-rate schedule."""
import math

import pytest
import torch
from timm.optim import RMSpropTF as TimmRMSpropTF
from torch import nn

from fmb.training.optim import OPTIMIZERS, build_optimizer, lr_factor, param_groups
from fmb.training.rmsprop_tf import RMSpropTF


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.SiLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))


def _steps(model, optimizer, n=50):
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 5, (4,), generator=g)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("weight_decay", [0.0, 1e-5])
def test_rmsprop_steps_as_timm_rmsproptf_with_the_paper_settings(weight_decay):
    ours, theirs = _model(), _model()
    lr = 0.016 * 4 / 256  # the paper's 0.016 per 256 images, at batch 4
    _steps(ours, build_optimizer("rmsprop", param_groups(ours, weight_decay), lr=lr, momentum=0.9))
    _steps(theirs, TimmRMSpropTF(param_groups(theirs, weight_decay), lr=lr, alpha=0.9, eps=1e-3, momentum=0.9))
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert (a - b).abs().max().item() <= 1e-6, name
    moved = _model()
    assert not torch.allclose(moved[0].weight, ours[0].weight)  # it did train


def test_torch_rmsprop_is_a_separate_choice_and_steps_far_larger():
    assert {"rmsprop", "rmsprop_torch"} <= set(OPTIMIZERS)
    first = {}
    for name in ("rmsprop", "rmsprop_torch"):
        model = _model()
        start = model[0].weight.detach().clone()
        opt = build_optimizer(name, model.parameters(), lr=0.01, momentum=0.9)
        assert isinstance(opt, RMSpropTF) == (name == "rmsprop")
        _steps(model, opt, n=1)
        first[name] = (model[0].weight - start).abs().median().item()
    # TF: squared average from ones, so step 1 is ~lr * g; torch: from zeros, ~lr / sqrt(0.1)
    assert first["rmsprop_torch"] > 10 * first["rmsprop"]


def test_exponential_decay_counts_from_step_zero():
    spe, kw = 100, dict(name="exponential", total_steps=10_000, steps_per_epoch=100, warmup_epochs=5)
    assert lr_factor(0, **kw) == pytest.approx(1 / 500) and lr_factor(499, **kw) == 1.0  # warmup
    # after warmup: 0.97 ** floor(step / (2.4 epochs)), as TF's ExponentialDecay(staircase) from 0
    for step in (500, 719, 720, 1000, 5000):
        assert lr_factor(step, **kw) == pytest.approx(0.97 ** math.floor(step / (2.4 * spe)))
    assert lr_factor(500, **kw) == pytest.approx(0.97 ** 2)  # 2 decays happened during warmup


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_steps_are_the_same_arithmetic(name):
    def model():  # no conv bias before BN, as in EfficientNet: BN cancels its gradient to ~1e-9,
        torch.manual_seed(0)  # where Adam's g / (|g| + eps) turns rounding noise into real steps
        return nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.SiLU(), nn.Flatten(),
                             nn.Linear(8 * 6 * 6, 5))
    plain, fused = model(), model()
    _steps(plain, build_optimizer(name, param_groups(plain, 0.05), lr=0.01, momentum=0.9))
    optimizer = build_optimizer(name, param_groups(fused, 0.05), lr=0.01, momentum=0.9, fused=True)
    assert optimizer.defaults["fused"] is True
    _steps(fused, optimizer)
    for (key, a), b in zip(plain.named_parameters(), fused.parameters()):
        assert (a - b).abs().max().item() <= 1e-5, key
