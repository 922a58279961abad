"""BN folding (`fmb.models.fuse_bn`): the folded inference copy computes what the original does."""
import pytest
import torch
from torch import nn

from fmb.models import FusedMBConv, MBConv, create_model, fuse_bn


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine, so folding has something to get wrong."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
    return model.eval()


def assert_folds_exactly(model: nn.Module, x: torch.Tensor):
    model = randomize_bn(model)
    fused = fuse_bn(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()), "the original must be untouched"
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert (out - ref).norm() / ref.norm() <= 1e-4


@pytest.mark.parametrize("block", [FusedMBConv, MBConv])
@pytest.mark.parametrize("expand_ratio,se_ratio,stride", [(1, 0.0, 1), (4, 0.0, 2), (4, 0.25, 1), (1, 0.25, 1)])
def test_blocks_fold_exactly(block, expand_ratio, se_ratio, stride):
    net = block(16, 16, expand_ratio=expand_ratio, kernel_size=3, stride=stride, se_ratio=se_ratio)
    assert_folds_exactly(net, torch.randn(2, 16, 12, 12))


@pytest.mark.parametrize("name,padding", [("efficientnetv2_s", "symmetric"), ("efficientnet_b0", "same")])
def test_whole_model_with_stem_and_head_folds_exactly(name, padding):
    model = create_model(name, width_mult=0.25, depth_mult=0.25, num_classes=10, padding=padding)
    assert_folds_exactly(model, torch.randn(2, 3, 48, 48))


def test_fused_copy_keeps_the_original_trainable():
    model = create_model("efficientnetv2_s", width_mult=0.25, depth_mult=0.25, num_classes=10).train()
    keys = set(model.state_dict())
    fused = fuse_bn(model)
    assert model.training and not fused.training
    assert set(model.state_dict()) == keys


def test_folding_is_kept_off_only_where_it_measured_slower():
    """On CUDA in bf16/fp16 a folded conv's bias costs more than BN (H200, benchmarks/gpu_peers.py)."""
    from fmb.models import folding_pays
    assert folding_pays("cpu", "fp32") and folding_pays("cpu", "bf16")
    assert folding_pays("cuda", "fp32")
    assert not folding_pays("cuda", "bf16") and not folding_pays(torch.device("cuda", 0), "fp16")
