"""Weights saved from torchvision, timm or fmb give the source's logits in fmb."""
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import fmb
from pretrained_caches import randomise_bn_stats
from fmb.errors import FmbError
from fmb.models import get_variant
from fmb.models.weights import detect_origin, load_into


def _tv(name):
    return lambda: getattr(torchvision.models, name)()


def _timm(name):
    return lambda: timm.create_model(name, pretrained=False)


V1 = [f"b{i}" for i in range(8)]
# Every EfficientNet V1/V2 that torchvision or timm builds with fmb's architecture
# (timm's efficientnetv2_rw_* and *_pruned are other networks). (source, fmb name, padding, eps, momentum)
PEERS = (
    [(f"torchvision-efficientnet_{b}", _tv(f"efficientnet_{b}"), f"efficientnet_{b}", "symmetric",
      *((1e-3, 0.01) if b in ("b5", "b6", "b7") else (1e-5, 0.1))) for b in V1]
    + [(f"torchvision-efficientnet_v2_{v}", _tv(f"efficientnet_v2_{v}"), f"efficientnetv2_{v}", "symmetric",
        1e-3, 0.1) for v in ("s", "m", "l")]
    + [(f"timm-efficientnet_{b}", _timm(f"efficientnet_{b}"), f"efficientnet_{b}", "symmetric", 1e-5, 0.1)
       for b in V1]
    + [(f"timm-efficientnetv2_{v}", _timm(f"efficientnetv2_{v}"), f"efficientnetv2_{v}", "symmetric", 1e-5, 0.1)
       for v in ("s", "m", "l", "xl")]
    + [(f"timm-tf_efficientnet_{b}", _timm(f"tf_efficientnet_{b}"), f"efficientnet_{b}", "same", 1e-3, 0.1)
       for b in V1]
    + [(f"timm-tf_efficientnetv2_{v}", _timm(f"tf_efficientnetv2_{v}"), f"efficientnetv2_{v}", "same", 1e-3, 0.1)
       for v in ("s", "m", "l", "xl", "b0", "b1", "b2", "b3")]
)
# Over ~25M parameters: marked slow (still run in CI), so `-m "not slow"` checks every layout fast.
BIG = ("_b5", "_b6", "_b7", "_m", "_l", "_xl")


def test_every_supported_variant_has_a_peer():
    covered = {p[2] for p in PEERS}
    assert covered == set(fmb.list_models())


@pytest.mark.parametrize(
    "make_source, name, padding, eps, momentum",
    [pytest.param(*p[1:], id=p[0], marks=[pytest.mark.slow] if p[0].endswith(BIG) else []) for p in PEERS])
def test_every_peer_variant_gives_the_source_logits(make_source, name, padding, eps, momentum):
    torch.manual_seed(0)
    source = randomise_bn_stats(make_source())
    state = source.state_dict()
    # Built on the meta device, the model takes the source's tensors: no init, no copy.
    with torch.device("meta"):
        model = fmb.create_model(name, padding=padding)
    load_into(model, state, detect_origin(state, get_variant(name).family, padding))
    model.eval()
    assert (model.bn_eps, model.bn_momentum) == (eps, momentum)
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {eps}
    x = torch.randn(1, 3, 35, 35)  # small and odd: TF "same" padding is asymmetric here
    with torch.no_grad():
        diff = (model(x) - source(x)).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize("make_source, name, padding", [
    pytest.param(_timm("tf_efficientnetv2_s"), "efficientnetv2_s", "same", id="timm-tf_efficientnetv2_s"),
    pytest.param(_tv("efficientnet_v2_s"), "efficientnetv2_s", "symmetric", id="torchvision-efficientnet_v2_s"),
    pytest.param(_timm("efficientnet_b0"), "efficientnet_b0", "symmetric", id="timm-efficientnet_b0"),
])
def test_create_model_alone_gives_the_source_logits_at_every_size(make_source, name, padding):
    """No context manager, no transform: `create_model` computes what timm and torchvision compute,
    at odd and small sizes (where the last maps are 3x3 down to 1x1) and at the variant's own size."""
    torch.manual_seed(0)
    source = randomise_bn_stats(make_source())
    state = source.state_dict()
    model = fmb.create_model(name, padding=padding)
    load_into(model, state, detect_origin(state, get_variant(name).family, padding))
    model.eval()
    for size in (67, 128, get_variant(name).eval_size):
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            assert (model(x) - source(x)).abs().max().item() <= 1e-5, size


def _sorted(state):
    # safetensors writes keys sorted: blocks.10 comes before blocks.2, features.10 before features.2
    return dict(sorted(state.items()))


FILE_CASES = {
    "torchvision": (lambda: torchvision.models.efficientnet_b0(), "efficientnet_b0", "symmetric", 1e-5),
    "timm": (lambda: timm.create_model("efficientnet_b0"), "efficientnet_b0", "symmetric", 1e-5),
    "timm-tf": (lambda: timm.create_model("tf_efficientnetv2_b0"), "efficientnetv2_b0", "same", 1e-3),
    "fmb": (lambda: fmb.create_model("efficientnetv2_b0"), "efficientnetv2_b0", "symmetric", 1e-3),
}


@pytest.mark.parametrize("origin, suffix", [(o, ".safetensors") for o in FILE_CASES] + [
    ("torchvision", ".pth"), ("timm-tf", ".pth"), ("torchvision", ".ckpt"), ("fmb", ".ckpt")])
def test_files_load_by_name_in_any_key_order(tmp_path, origin, suffix):
    make_source, name, padding, eps = FILE_CASES[origin]
    torch.manual_seed(0)
    source = randomise_bn_stats(make_source())
    state = _sorted({k: v.contiguous() for k, v in source.state_dict().items()})
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    elif suffix == ".ckpt":  # Lightning: the model under `model.` in `state_dict`
        torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        torch.save(dict(reversed(list(state.items()))), path)
    model = fmb.create_model(name, pretrained=str(path), padding=padding).eval()
    assert model.bn_eps == eps
    x = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        assert (model(x) - source(x)).abs().max().item() <= 1e-4


def test_explicit_bn_eps_wins_over_the_origin(tmp_path):
    torch.save(torchvision.models.efficientnet_b0().state_dict(), tmp_path / "b0.pth")
    model = fmb.create_model("efficientnet_b0", pretrained=str(tmp_path / "b0.pth"), bn_eps=1e-3)
    assert model.bn_eps == 1e-3 and model.bn1.eps == 1e-3 and model.bn1.momentum == 0.1


def test_fresh_models_use_the_official_batchnorm_per_family():
    v1, v2 = fmb.create_model("efficientnet_b0"), fmb.create_model("efficientnetv2_b0")
    assert (v1.bn1.eps, v1.bn1.momentum, v1.blocks[3][0].bn3.momentum) == (1e-3, 0.01, 0.01)
    assert (v2.bn1.eps, v2.bn1.momentum) == (1e-3, 0.1)


def test_origin_decides_batchnorm_as_each_peer_builds_it():
    from fmb.models.weights import Origin
    assert Origin("torchvision", "v1", "efficientnet_b6").bn_kwargs == {"bn_eps": 1e-3, "bn_momentum": 0.01}
    assert Origin("torchvision", "v1", "efficientnet_b4").bn_kwargs == {"bn_eps": 1e-5, "bn_momentum": 0.1}
    assert Origin("torchvision", "v2").bn_kwargs == {"bn_eps": 1e-3, "bn_momentum": 0.1}
    assert Origin("timm-tf", "v1").bn_eps == 1e-3 and Origin("timm", "v2").bn_eps == 1e-5
    assert Origin("fmb", "v1").bn_kwargs == {"bn_eps": 1e-3, "bn_momentum": 0.01}


def test_lightning_style_checkpoint_and_new_classifier(tmp_path):
    source = torchvision.models.efficientnet_b0()
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.ckpt")
    with pytest.warns(UserWarning, match="classifier"):
        model = fmb.create_model("efficientnet_b0", pretrained=str(tmp_path / "w.ckpt"), num_classes=10)
    assert torch.equal(model.conv_stem.weight, source.features[0][0].weight)
    assert model.classifier.out_features == 10


def test_wrong_variant_names_the_first_mismatch(tmp_path):
    torch.save(torchvision.models.efficientnet_b0().state_dict(), tmp_path / "b0.pth")
    with pytest.raises(FmbError, match=r"does not fit efficientnet_b1: ours 'blocks\.0\.1\..*no tensor") as info:
        fmb.create_model("efficientnet_b1", pretrained=str(tmp_path / "b0.pth"))
    assert "\n" not in str(info.value)
    with pytest.raises(FmbError, match="ours 'blocks.0.0.conv.weight' 16x32x3x3 vs checkpoint 'features.1.0"):
        fmb.create_model("efficientnetv2_b0", pretrained=str(tmp_path / "b0.pth"))
    torch.save(torchvision.models.efficientnet_b1().state_dict(), tmp_path / "b1.pth")
    with pytest.raises(FmbError, match=r"checkpoint tensor 'features\.\d\.\d\.block.* has no place"):
        fmb.create_model("efficientnet_b0", pretrained=str(tmp_path / "b1.pth"))


def test_unknown_layout_and_missing_file(tmp_path):
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "odd.pth")
    with pytest.raises(FmbError, match="no known layout.*foo.weight"):
        fmb.create_model("efficientnet_b0", pretrained=str(tmp_path / "odd.pth"))
    with pytest.raises(FmbError, match="not found"):
        fmb.create_model("efficientnet_b0", pretrained=str(tmp_path / "missing.pth"))
    for name in ("junk.pth", "junk.safetensors"):
        (tmp_path / name).write_text("not a checkpoint")
        with pytest.raises(FmbError, match="cannot read checkpoint"):
            fmb.create_model("efficientnet_b0", pretrained=str(tmp_path / name))
