"""EMA with TensorFlow's warm-up on Lightning's EMAWeightAveraging."""
import lightning as L
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from fmb.training.ema import WarmupEMAWeightAveraging, warmup_decay, warmup_ema_multi_avg_fn


def test_decay_follows_tf_num_updates():
    assert [round(warmup_decay(0.9999, n), 4) for n in (1, 2, 3, 10)] == [0.1818, 0.25, 0.3077, 0.55]
    assert warmup_decay(0.9999, 10**6) == 0.9999
    assert warmup_decay(0.99, 1000) == 0.99
    assert torch.isclose(warmup_decay(0.9999, torch.tensor(2.0)), torch.tensor(0.25))


def test_averaged_model_applies_the_decay_of_each_update():
    model = nn.Linear(3, 1)
    ema = AveragedModel(model, multi_avg_fn=warmup_ema_multi_avg_fn(0.9999), use_buffers=True)
    expected = None
    for step in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(float(step))
        ema.update_parameters(model)
        # update 1 copies; update n >= 2 keeps decay_n of the average
        expected = 1.0 if step == 1 else warmup_decay(0.9999, step) * expected + (1 - warmup_decay(0.9999, step)) * step
        assert torch.allclose(ema.module.weight, torch.full_like(model.weight, expected))


class _Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 1.0
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _fit(tmp_path, callback, max_steps, ckpt_path=None, model=None):
    torch.manual_seed(0)
    model = model or _Regression()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, filename="last", save_top_k=1,
                                                     enable_version_counter=False)
    trainer = L.Trainer(max_steps=max_steps, callbacks=[callback, checkpoint], logger=False, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, _loader(), ckpt_path=ckpt_path)
    return torch.load(tmp_path / "last.ckpt", weights_only=False)


def _distance(a: dict, b: dict) -> float:
    return sum((a[k].float() - b[k].float()).norm().item() for k in a if k.endswith("weight"))


@pytest.mark.slow
@pytest.mark.parametrize("warmup", [True, False])
def test_ema_tracks_the_raw_weights_early_only_with_warmup(tmp_path, warmup):
    torch.manual_seed(0)
    init = {k: v.clone() for k, v in _Regression().state_dict().items()}
    ckpt = _fit(tmp_path, WarmupEMAWeightAveraging(decay=0.9999, warmup=warmup), max_steps=40)
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    lag = _distance(ema, raw) / _distance(raw, init)  # 0: EMA = raw weights, ~1: EMA still at init
    print(f"warmup={warmup} lag={lag:.3f}")
    if warmup:  # decay ~0.8 after 40 steps: the EMA follows the raw weights
        assert lag < 0.3
    else:  # a fixed 0.9999 stays where Lightning's first update copied it (after step 1)
        assert lag > 0.4


def test_resume_continues_the_warmup(tmp_path):
    first = _fit(tmp_path, WarmupEMAWeightAveraging(decay=0.9999), max_steps=10)
    assert int(first["averaging_state"]["n_averaged"]) == 10
    resumed = _fit(tmp_path, WarmupEMAWeightAveraging(decay=0.9999), max_steps=16,
                   ckpt_path=tmp_path / "last.ckpt")
    assert int(resumed["averaging_state"]["n_averaged"]) == 16
    assert not torch.equal(resumed["state_dict"]["net.0.weight"], resumed["current_model_state"]["net.0.weight"])
