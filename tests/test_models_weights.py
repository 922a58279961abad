"""Weights saved from torchvision and timm give the source's logits in fmb."""
import pytest
import timm
import torch
import torchvision

import fmb
from fmb.errors import FmbError


def _randomise_bn_stats(model):
    # Fresh BN stats are 0/1, which would hide a wrong eps or a swapped mean/var.
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    return model.eval()


CASES = [
    ("torchvision", lambda: torchvision.models.efficientnet_v2_s(), "efficientnetv2_s", "symmetric", 1e-3),
    ("torchvision", lambda: torchvision.models.efficientnet_b0(), "efficientnet_b0", "symmetric", 1e-5),
    ("timm", lambda: timm.create_model("efficientnetv2_s"), "efficientnetv2_s", "symmetric", 1e-5),
    ("timm", lambda: timm.create_model("tf_efficientnetv2_b0"), "efficientnetv2_b0", "same", 1e-3),
    ("timm", lambda: timm.create_model("efficientnet_b0"), "efficientnet_b0", "symmetric", 1e-5),
    ("timm", lambda: timm.create_model("tf_efficientnet_b0"), "efficientnet_b0", "same", 1e-3),
]


@pytest.mark.parametrize("origin, make_source, name, padding, eps", CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3]}" for c in CASES])
def test_loaded_model_gives_the_source_logits(tmp_path, origin, make_source, name, padding, eps):
    torch.manual_seed(0)
    source = _randomise_bn_stats(make_source())
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = fmb.create_model(name, pretrained=str(path), padding=padding).eval()
    assert model.bn_eps == eps
    x = torch.randn(2, 3, 67, 67)  # odd size: TF "same" padding is asymmetric here
    with torch.no_grad():
        diff = (model(x) - source(x)).abs().max().item()
    assert diff <= 1e-4


def test_lightning_style_checkpoint_and_new_classifier(tmp_path):
    source = torchvision.models.efficientnet_b0()
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.ckpt")
    with pytest.warns(UserWarning, match="classifier"):
        model = fmb.create_model("efficientnet_b0", pretrained=str(tmp_path / "w.ckpt"), num_classes=10)
    assert torch.equal(model.conv_stem.weight, source.features[0][0].weight)
    assert model.classifier.out_features == 10


def test_wrong_variant_names_the_first_mismatch(tmp_path):
    torch.save(torchvision.models.efficientnet_b0().state_dict(), tmp_path / "b0.pth")
    with pytest.raises(FmbError, match=r"does not fit efficientnet_b1.*tensor") as info:
        fmb.create_model("efficientnet_b1", pretrained=str(tmp_path / "b0.pth"))
    assert "\n" not in str(info.value)
    with pytest.raises(FmbError, match="ours 'blocks.0.0.conv.weight'"):
        fmb.create_model("efficientnetv2_b0", pretrained=str(tmp_path / "b0.pth"))


def test_unknown_layout_and_missing_file(tmp_path):
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "odd.pth")
    with pytest.raises(FmbError, match="no known layout.*foo.weight"):
        fmb.create_model("efficientnet_b0", pretrained=str(tmp_path / "odd.pth"))
    with pytest.raises(FmbError, match="not found"):
        fmb.create_model("efficientnet_b0", pretrained=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(FmbError, match="cannot read checkpoint"):
        fmb.create_model("efficientnet_b0", pretrained=str(tmp_path / "junk.pth"))
