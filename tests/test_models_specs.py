"""Parameter-for-parameter parity with torchvision/timm, placement and overrides."""
import pytest
import torch

import fmb
from fmb.errors import FmbError
from fmb.models import get_variant

# torchvision's and timm's counts at num_classes=1000.
EXPECTED_PARAMS = {
    "efficientnetv2_s": 21_458_488, "efficientnetv2_m": 54_139_356, "efficientnetv2_l": 118_515_272,
    "efficientnetv2_xl": 208_119_808, "efficientnetv2_b0": 7_139_704, "efficientnetv2_b1": 8_141_052,
    "efficientnetv2_b2": 10_096_086, "efficientnetv2_b3": 14_358_406,
    "efficientnet_b0": 5_288_548, "efficientnet_b1": 7_794_184, "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232, "efficientnet_b4": 19_341_616, "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704, "efficientnet_b7": 66_347_960,
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_list_models_is_the_whole_family():
    assert sorted(fmb.list_models()) == sorted(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", list(EXPECTED_PARAMS))
def test_param_count_matches_torchvision_and_timm(name):
    with torch.device("meta"):
        model = fmb.create_model(name)
    assert n_params(model) == EXPECTED_PARAMS[name]


def test_default_placements_follow_the_papers():
    assert get_variant("efficientnetv2_s").placement == "FFFMMM"
    assert get_variant("efficientnetv2_m").placement == "FFFMMMM"
    assert get_variant("efficientnet_b4").placement == "MMMMMMM"


def test_placement_swaps_block_type_and_keeps_other_fields():
    base = fmb.create_model("efficientnetv2_s", width_mult=0.25, depth_mult=0.25)
    swapped = fmb.create_model("efficientnetv2_s", blocks="MMMFFF", width_mult=0.25, depth_mult=0.25)
    assert swapped.placement == "MMMFFF"
    for a, b in zip(base.stages_spec, swapped.stages_spec):
        assert (a.repeats, a.kernel_size, a.stride, a.expand_ratio, a.out_channels, a.se_ratio) == \
               (b.repeats, b.kernel_size, b.stride, b.expand_ratio, b.out_channels, b.se_ratio)
    assert type(swapped.blocks[0][0]).__name__ == "MBConv"
    assert type(swapped.blocks[3][0]).__name__ == "FusedMBConv"
    assert swapped.blocks[3][0].se is not None  # MBConv's SE carries over unless overridden
    assert swapped(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_paper_table3_placements_on_b4():
    """EfficientNet-B4 with fused stages 1-3 / 1-5 / 1-7, as in EfficientNetV2's Table 3."""
    counts = {}
    for k in (0, 3, 5, 7):
        with torch.device("meta"):
            model = fmb.create_model("efficientnet_b4", blocks="F" * k + "M" * (7 - k))
        counts[k] = n_params(model)
    assert counts[0] == EXPECTED_PARAMS["efficientnet_b4"]
    assert counts[0] < counts[3] < counts[5] < counts[7]  # fusing trades depthwise for dense k×k convs


def test_stage_overrides_change_only_what_they_name():
    model = fmb.create_model("efficientnetv2_s", stage_overrides={4: {"se_ratio": 0.0, "kernel_size": 5}},
                             width_mult=0.25, depth_mult=0.25)
    spec = model.stages_spec[3]
    assert spec.se_ratio == 0.0 and spec.kernel_size == 5 and spec.block == "mbconv"
    assert model.blocks[3][0].conv_dw.kernel_size == (5, 5) and model.blocks[3][0].se is None
    assert model.stages_spec[4].se_ratio == 0.25


def test_width_and_depth_multipliers_scale_any_variant(tiny):
    model = fmb.create_model("efficientnet_b4", **tiny)
    full = get_variant("efficientnet_b4")
    assert [s.repeats for s in model.stages_spec] == [
        int(-(-s.repeats * 1.8 * 0.25 // 1)) for s in full.stages]
    assert model.num_features < 1792
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)


def test_features_only_returns_one_map_per_stage(tiny):
    model = fmb.create_model("efficientnetv2_s", features_only=True, **tiny)
    feats = model(torch.randn(2, 3, 64, 64))
    assert len(feats) == 6
    assert [f.shape[1] for f in feats] == [i["num_chs"] for i in model.feature_info]
    assert [64 // f.shape[-1] for f in feats] == [i["reduction"] for i in model.feature_info] == [2, 4, 8, 16, 16, 32]
    picked = fmb.create_model("efficientnetv2_s", features_only=True, out_indices=(2, 6), **tiny)
    assert [f.shape[-1] for f in picked(torch.randn(1, 3, 64, 64))] == [16, 2]


def test_forward_features_and_head(tiny):
    model = fmb.create_model("efficientnetv2_b0", num_classes=7, **tiny).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, 1, 1)
    assert torch.equal(model.forward_head(feats), model(x))
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "efficientnetv2_q"}, "did you mean 'efficientnetv2_s'"),
    ({"blocks": "FFFMM"}, "expected 6 letters"),
    ({"blocks": "FFFMMX"}, "each F"),
    ({"stage_overrides": {7: {"kernel_size": 5}}}, "stages 1..6"),
    ({"stage_overrides": {0: {"kernel_size": 5}}}, "stem"),
    ({"stage_overrides": {2: {"kernal_size": 5}}}, "did you mean 'kernel_size'"),
    ({"stage_overrides": {2: {"kernel_size": 4}}}, "odd kernel"),
    ({"stage_overrides": {2: {"stride": 3}}}, "stride 1 or 2"),
    ({"stage_overrides": {2: {"se_ratio": 1.0}}}, "[0, 1)"),
    ({"stage_overrides": {2: {"se_ratio": -0.1}}}, "[0, 1)"),
    ({"stage_overrides": {2: {"repeats": 0}}}, "repeats >= 1"),
    ({"stage_overrides": {2: {"block": "conv"}}}, "'fused' or 'mbconv'"),
    ({"width_mult": 0}, "positive number"),
    ({"drop_rate": 1.5}, "[0, 1)"),
    ({"padding": "sme"}, "did you mean 'same'"),
    ({"features_only": True, "out_indices": (0, 9)}, "stage numbers in 1..6"),
])
def test_bad_input_is_a_one_line_fmb_error(kwargs, message):
    kwargs = {"name": "efficientnetv2_s", "width_mult": 0.25, "depth_mult": 0.25, **kwargs}
    with pytest.raises(FmbError) as info:
        fmb.create_model(kwargs.pop("name"), **kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
