"""The CPU fast paths for small maps (models/small_maps.py) compute the ordinary conv exactly,
and only models opted in with `cpu_fast_paths` take them."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import fmb
from fmb.models import cpu_fast_paths, plain_convs, small_maps
from fmb.models.layers import Conv2dSame, DepthwiseConv2d, PointwiseConv2d


def _grads(module, x):
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    out = module(x)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return out.detach(), x.grad, [p.grad for p in module.parameters()]


def _reference_depthwise(conv: DepthwiseConv2d) -> torch.nn.Module:
    """The same weights in torch's own conv modules (fmb's pre-fast-path layers)."""
    k, s = conv.kernel_size[0], conv.stride[0]
    if conv.tf_same:
        ref = Conv2dSame(conv.in_channels, conv.out_channels, k, s, 0, groups=conv.groups, bias=conv.bias is not None)
    else:
        ref = torch.nn.Conv2d(conv.in_channels, conv.out_channels, k, s, k // 2, groups=conv.groups,
                              bias=conv.bias is not None)
    ref.double().load_state_dict(conv.state_dict())  # float64 first: no rounding through float32
    return ref


@pytest.mark.parametrize("h, w, k, stride, tf_same, bias", [
    p for p in itertools.product([1, 2, 3, 5], [1, 2, 3], [3, 5], [1, 2], [False, True], [False, True])
    if p[0] * p[1] <= p[2] * p[2]])
def test_depthwise_matrix_equals_the_conv_with_its_gradients(h, w, k, stride, tf_same, bias):
    torch.manual_seed(0)
    conv = cpu_fast_paths(DepthwiseConv2d(6, k, stride, tf_same=tf_same).double())
    if bias:  # fuse_bn gives the conv a bias
        conv.bias = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
    x = torch.randn(3, 6, h, w, dtype=torch.float64)
    assert small_maps.use_depthwise_matrix(x, k)
    got, want = _grads(conv, x), _grads(_reference_depthwise(conv), x)
    assert got[0].shape == want[0].shape
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=0, atol=1e-12)
    for g, r in zip(got[2], want[2]):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("h, w, bias, channels_last", [
    (1, 1, False, False), (2, 2, True, False), (4, 4, False, True), (3, 5, True, True)])
def test_pointwise_linear_equals_the_conv_and_keeps_the_memory_format(h, w, bias, channels_last):
    torch.manual_seed(0)
    conv = cpu_fast_paths(PointwiseConv2d(8, 5, bias=bias).double())
    ref = torch.nn.Conv2d(8, 5, 1, bias=bias).double()
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(2, 8, h, w, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    assert small_maps.use_pointwise_linear(x)
    got, want = _grads(conv, x), _grads(ref, x)
    for g, r in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]]):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)
    fmt = torch.channels_last if channels_last and h * w > 1 else torch.contiguous_format
    assert got[0].is_contiguous(memory_format=fmt)


def test_larger_maps_take_the_ordinary_conv():
    x = torch.randn(1, 4, 4, 4)
    assert not small_maps.use_depthwise_matrix(x, 3)  # 16 positions > 9 taps
    assert small_maps.use_depthwise_matrix(x, 5)
    assert not small_maps.use_pointwise_linear(torch.randn(1, 4, 5, 4))
    assert not small_maps.use_depthwise_matrix(torch.randn(1, 4, 1, 1, device="meta"), 3)  # CPU only


def test_a_32px_model_takes_both_paths_and_trains_like_the_plain_convs(monkeypatch):
    """V2-S at 32 px reaches 1×1 maps: both paths run, and one SGD step matches the plain convs."""
    calls = {"depthwise": 0, "pointwise": 0}
    depthwise, pointwise = small_maps.depthwise_as_matrix, small_maps.pointwise_as_linear

    def counted(name, fn):
        def wrapper(*args):
            calls[name] += 1
            return fn(*args)
        return wrapper

    torch.manual_seed(0)
    model = fmb.create_model("efficientnetv2_s", num_classes=10, width_mult=0.25, depth_mult=0.25).double()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 3])

    def step(fast: bool):
        torch.manual_seed(1)
        net = fmb.create_model("efficientnetv2_s", num_classes=10, width_mult=0.25, depth_mult=0.25).double()
        net.load_state_dict(model.state_dict())
        if fast:
            cpu_fast_paths(net)
        F.cross_entropy(net(x), y).backward()
        return [p.grad for p in net.parameters()]

    monkeypatch.setattr(small_maps, "depthwise_as_matrix", counted("depthwise", depthwise))
    monkeypatch.setattr(small_maps, "pointwise_as_linear", counted("pointwise", pointwise))
    plain = step(fast=False)
    assert calls == {"depthwise": 0, "pointwise": 0}  # create_model alone: the ordinary convs
    fast = step(fast=True)
    assert calls["depthwise"] > 0 and calls["pointwise"] > 0
    for f, p in zip(fast, plain):
        torch.testing.assert_close(f, p, rtol=1e-7, atol=1e-10)


def test_a_first_forward_under_inference_mode_does_not_break_training():
    """Lightning validates (inference_mode) before it trains: the cached tap index must stay usable."""
    small_maps.tap_index.cache_clear()
    conv = cpu_fast_paths(DepthwiseConv2d(4, 3))
    x = torch.randn(2, 4, 2, 2)
    with torch.inference_mode():
        conv(x)
    conv(x).sum().backward()
    assert conv.weight.grad is not None


def test_fast_paths_keep_parameters_and_state_and_plain_convs_undo_them_for_a_while():
    model = fmb.create_model("efficientnetv2_b0", num_classes=5, width_mult=0.25, depth_mult=0.25)
    params, keys = [id(p) for p in model.parameters()], list(model.state_dict())
    assert cpu_fast_paths(model) is model
    assert [id(p) for p in model.parameters()] == params and list(model.state_dict()) == keys
    kinds = {type(m) for m in model.modules()}
    assert small_maps.SmallMapDepthwiseConv2d in kinds and small_maps.SmallMapPointwiseConv2d in kinds
    with plain_convs(model):
        assert not {small_maps.SmallMapDepthwiseConv2d, small_maps.SmallMapPointwiseConv2d} & {
            type(m) for m in model.modules()}
    assert {type(m) for m in model.modules()} == kinds
