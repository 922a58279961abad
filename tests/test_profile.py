"""`fmb.profiling`: params/FLOPs per stage add up, hand-counted MACs, result keys, block comparison."""
import json

import pytest
import torch
from torch import nn

import fmb.profiling.profile as profile_mod
from fmb.errors import FmbError
from fmb.models import FusedMBConv, MBConv, create_model
from fmb.profiling import compare_blocks, count_macs_per_stage, profile_model
from fmb.profiling.command import parse_stage_sets
from fmb.profiling.flops import count_module_macs

TINY = {"name": "efficientnetv2_s", "blocks": "FFFMMM", "stage_overrides": None,
        "width_mult": 0.25, "depth_mult": 0.25, "num_classes": 10}
QUICK = {"resolution": 32, "batch_size": 2, "warmup": 1, "iters": 2}
KEYS = {"params", "macs", "flops", "resolution", "batch_size", "device", "precision", "infer_images_per_sec",
        "infer_latency_ms", "train_images_per_sec", "train_step_ms", "peak_train_memory_mb", "stages"}


def test_hand_counted_macs():
    # one 3x3 conv, 3 -> 8 channels, 8x8 output: 8*8 positions * 8 out * 3 in * 9 taps
    assert count_module_macs(nn.Conv2d(3, 8, 3, padding=1), torch.zeros(1, 3, 8, 8)) == 8 * 8 * 8 * 3 * 9
    # Fused-MBConv 8 -> 16, expand 4, stride 2 at 16x16: 3x3 conv 8 -> 32 on 8x8 out, then 1x1 32 -> 16
    fused = FusedMBConv(8, 16, expand_ratio=4, stride=2)
    assert count_module_macs(fused, torch.zeros(1, 8, 16, 16)) == 64 * 32 * 8 * 9 + 64 * 16 * 32
    # MBConv 8 -> 16, expand 4, SE 0.25 at 8x8: 1x1 8->32, dw 3x3 on 32, SE 32->2->32 on 1x1, 1x1 32->16
    mb = MBConv(8, 16, expand_ratio=4, se_ratio=0.25)
    assert count_module_macs(mb, torch.zeros(1, 8, 8, 8)) == 64 * 32 * 8 + 64 * 32 * 9 + 2 * 32 * 2 + 64 * 16 * 32


def test_per_stage_params_and_macs_add_up_to_the_model():
    result = profile_model(TINY, mode="infer", **QUICK)
    stages = result["stages"]
    assert [s["stage"] for s in stages] == [0, 1, 2, 3, 4, 5, 6, "head"]
    assert [s["block"] for s in stages[1:-1]] == ["fused"] * 3 + ["mbconv"] * 3
    model = create_model(**TINY)
    assert sum(s["params"] for s in stages) == result["params"] == sum(p.numel() for p in model.parameters())
    assert sum(s["macs"] for s in stages) == result["macs"] == result["flops"] // 2
    assert all(s["forward_ms"] > 0 and s["activation_mb"] > 0 for s in stages)
    assert sum(count_macs_per_stage(model, 32).values()) == result["macs"]


def test_result_is_json_with_the_documented_keys():
    result = profile_model(TINY, mode="both", fast=True, channels_last=True, precision="bf16", **QUICK)
    assert KEYS <= set(json.loads(json.dumps(result)))
    assert result["infer_latency_ms"] > 0 and result["train_step_ms"] > 0 and result["peak_train_memory_mb"] > 0
    assert result["infer_images_per_sec"] == pytest.approx(2 / result["infer_latency_ms"] * 1e3)
    only_train = profile_model(TINY, mode="train", per_stage=False, **QUICK)
    assert only_train["infer_latency_ms"] is None and only_train["infer_images_per_sec"] is None
    assert only_train["stages"] == [] and only_train["train_step_ms"] > 0


def test_compare_blocks_rows_match_models_built_with_each_placement():
    rows = compare_blocks(TINY, resolution=32, batch_size=2, mode="infer", warmup=1, iters=2)
    assert [r["stage"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for placement in ("FMFMFM", "MFMFMF"):
        model = create_model(**{**TINY, "blocks": placement})
        for r, letter, stage in zip(rows, placement, model.blocks):
            block = "fused" if letter == "F" else "mbconv"
            assert r[f"{block}_params"] == sum(p.numel() for p in stage.parameters())
    assert all(r["verdict"] in ("fused", "mbconv", "even", "mixed") and r["fused_train_ms"] is None for r in rows)
    assert rows[0]["input_hw"] == 16 and rows[-1]["input_hw"] == 2


def test_oom_halves_the_batch_and_says_so(monkeypatch):
    real = profile_mod._measure

    def fake(model_kwargs, batch_size, opts, result):
        if batch_size > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model_kwargs, batch_size, opts, result)

    monkeypatch.setattr(profile_mod, "_measure", fake)
    result = profile_model(TINY, mode="infer", per_stage=False, **{**QUICK, "batch_size": 8})
    assert result["batch_size"] == 2
    assert result["notes"] == ["out of memory at batch 8; halved to 4 and retried",
                               "out of memory at batch 4; halved to 2 and retried"]


def test_stage_sets_parse_to_overrides_and_bad_ones_fail_before_any_work():
    assert parse_stage_sets(["stage.4.kernel_size=5", "stage.4.se_ratio=0.5", "stage.1.block=M"]) == {
        4: {"kernel_size": 5, "se_ratio": 0.5}, 1: {"block": "M"}}
    for bad in ("kernel_size=5", "stage.x.kernel_size=5", "stage.4.kernel_size"):
        with pytest.raises(FmbError, match="stage"):
            parse_stage_sets([bad])
    with pytest.raises(FmbError, match="odd kernel size"):
        profile_model({**TINY, "stage_overrides": {4: {"kernel_size": 4}}}, **QUICK)
    with pytest.raises(FmbError, match="expected one of"):
        profile_model(TINY, mode="fast", **QUICK)
