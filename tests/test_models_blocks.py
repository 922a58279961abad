"""Block semantics as in the official EfficientNetV2 code."""
import math

import pytest
import torch
from torch import nn

import fmb
from fmb.models import FusedMBConv, MBConv


def test_fused_with_expansion_one_is_a_single_conv():
    block = FusedMBConv(16, 24, expand_ratio=1, kernel_size=3, stride=2)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].out_channels == 24
    assert isinstance(block.act1, nn.SiLU)
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 24, 4, 4)


def test_fused_with_expansion_one_gates_its_input_with_se_as_the_official_code():
    # official FusedMBConvBlock, expand_ratio 1: SE(input) -> k x k conv -> BN -> SiLU
    torch.manual_seed(0)
    block = FusedMBConv(16, 24, expand_ratio=1, kernel_size=3, stride=2, se_ratio=0.25).eval()
    assert (block.se.fc1.in_channels, block.se.fc1.out_channels, block.se.fc2.out_channels) == (16, 4, 16)
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        squeezed = x.mean((2, 3), keepdim=True)
        gate = torch.sigmoid(block.se.fc2(nn.functional.silu(block.se.fc1(squeezed))))
        expected = nn.functional.silu(block.bn1(block.conv(x * gate)))
        assert torch.allclose(block(x), expected, atol=1e-6)
        assert not torch.allclose(block(x), nn.functional.silu(block.bn1(block.conv(x))), atol=1e-3)
    names = [n for n, _ in block.named_children()]
    assert names.index("se") < names.index("conv")  # registered in forward order


def test_fused_with_expansion_convs_then_projects_without_activation():
    block = FusedMBConv(16, 16, expand_ratio=4, kernel_size=3, se_ratio=0.25)
    assert block.conv_exp.kernel_size == (3, 3) and block.conv_exp.out_channels == 64
    assert block.conv_pwl.kernel_size == (1, 1) and block.conv_pwl.out_channels == 16
    assert block.se.fc1.out_channels == 4  # SE width from the block's input channels
    assert not hasattr(block, "act2")  # projection is linear


def test_mbconv_layout_and_depthwise():
    block = MBConv(24, 40, expand_ratio=6, kernel_size=5, stride=2, se_ratio=0.25)
    assert block.conv_pw.out_channels == 144 and block.conv_pw.kernel_size == (1, 1)
    assert block.conv_dw.groups == 144 and block.conv_dw.kernel_size == (5, 5) and block.conv_dw.stride == (2, 2)
    assert block.se.fc1.out_channels == 6  # int(24 * 0.25), not from the 144 expanded channels
    assert block(torch.randn(1, 24, 16, 16)).shape == (1, 40, 8, 8)
    no_expand = MBConv(32, 16, expand_ratio=1, se_ratio=0.25)
    assert not hasattr(no_expand, "conv_pwl") and no_expand.conv_dw.groups == 32


def test_se_reduced_width_is_at_least_one():
    block = MBConv(3, 3, expand_ratio=2, se_ratio=0.25)
    assert block.se.fc1.out_channels == 1


@pytest.mark.parametrize("cls", [FusedMBConv, MBConv])
def test_se_keeps_spatial_shape_trains_at_batch_one_and_only_gates(cls):
    torch.manual_seed(0)
    block = cls(8, 8, expand_ratio=4, se_ratio=0.25).train()
    x = torch.randn(1, 8, 6, 6, requires_grad=True)
    out = block(x)  # batch 1 in training mode: a squeeze inside nn.Sequential+BN would crash here
    assert out.shape == x.shape
    out.sum().backward()
    assert block.se.fc1.weight.grad is not None

    block.eval()
    mid = block.act1(block.bn1(block.conv_exp(x) if cls is FusedMBConv else block.conv_pw(x)))
    if cls is MBConv:
        mid = block.act2(block.bn2(block.conv_dw(mid)))
    gated = block.se(mid)
    assert gated.shape == mid.shape
    gate = gated / mid
    # One gate value per channel, in (0, 1), the same at every pixel.
    per_channel = gate.flatten(2)
    assert torch.allclose(per_channel, per_channel[..., :1].expand_as(per_channel), atol=1e-5)
    assert ((per_channel > 0) & (per_channel < 1)).all()
    with torch.no_grad():
        block.se.fc2.bias.fill_(1e4)  # gate saturates at 1: the block reduces to the un-gated path
        saturated = block.se(mid)
    assert torch.allclose(saturated, mid)


def test_residual_only_at_stride_one_with_equal_width():
    assert FusedMBConv(16, 16, expand_ratio=4).has_skip
    assert not FusedMBConv(16, 16, expand_ratio=4, stride=2).has_skip
    assert not MBConv(16, 24, expand_ratio=4).has_skip
    block = MBConv(16, 16, expand_ratio=4).eval()
    with torch.no_grad():
        for bn in (block.bn3,):
            bn.weight.zero_()  # branch outputs 0: block is the identity
            bn.bias.zero_()
        x = torch.randn(2, 16, 5, 5)
        assert torch.allclose(block(x), x)


def test_drop_path_grows_linearly_over_all_blocks():
    model = fmb.create_model("efficientnetv2_s", drop_path_rate=0.3, width_mult=0.25, depth_mult=0.25)
    rates, index = [], 0
    total = sum(s.repeats for s in model.stages_spec)
    for stage in model.blocks:
        for block in stage:
            expected = 0.3 * index / total
            if block.has_skip and expected > 0:
                rates.append((block.drop_path.p, expected))
            index += 1
    assert rates and all(math.isclose(a, b) for a, b in rates)


def test_stochastic_depth_drops_whole_samples_in_training():
    torch.manual_seed(0)
    block = MBConv(8, 8, expand_ratio=2, drop_path=0.5).train()
    x = torch.randn(64, 8, 4, 4)
    with torch.no_grad():
        out = block(x)
    same = [(torch.allclose(out[i], x[i])) for i in range(64)]
    assert 10 < sum(same) < 54  # about half the samples skip the branch entirely


def test_batchnorm_and_init_follow_the_official_code():
    torch.manual_seed(0)
    model = fmb.create_model("efficientnetv2_b0")
    bn = model.bn1
    assert bn.eps == 1e-3 and bn.momentum == 0.1
    conv = model.blocks[5][0].conv_dw  # depthwise: fan_out = k*k*out/groups = 9
    assert abs(conv.weight.std().item() - math.sqrt(2 / 9)) < 0.05
    pw = model.conv_head
    assert abs(pw.weight.std().item() - math.sqrt(2 / pw.out_channels)) < 0.005
    bound = 1 / math.sqrt(1000)
    assert model.classifier.weight.abs().max() <= bound and model.classifier.weight.abs().max() > 0.9 * bound
    assert torch.count_nonzero(model.classifier.bias) == 0


def test_dropout_can_change_in_place():
    model = fmb.create_model("efficientnetv2_s", width_mult=0.25, depth_mult=0.25)
    assert model.drop_rate == 0.2
    model.set_drop_rate(0.35)
    assert model.dropout.p == 0.35
