"""`fmb.profiling`: params/FLOPs per stage add up, hand-counted MACs, result keys, block comparison,
timing statistics, and one-line errors for bad counts and out-of-memory."""
import json

import pytest
import torch
from torch import nn

import fmb.profiling.profile as profile_mod
from fmb.errors import FmbError
from fmb.models import FusedMBConv, MBConv, create_model
from fmb.profiling import compare_blocks, count_macs_per_stage, profile_model
from fmb.profiling.measure import count_module_macs, summarize, time_call
from fmb.profiling.report import parse_stage_sets

TINY = {"name": "efficientnetv2_s", "blocks": "FFFMMM", "stage_overrides": None,
        "width_mult": 0.25, "depth_mult": 0.25, "num_classes": 10}
QUICK = {"resolution": 32, "batch_size": 2, "warmup": 0, "iters": 1}
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


@pytest.mark.slow
def test_result_is_json_with_the_documented_keys():
    result = profile_model(TINY, mode="both", fast=True, channels_last=True, precision="bf16", **QUICK)
    assert set(json.loads(json.dumps(result))) >= KEYS
    assert result["infer_latency_ms"] > 0 and result["train_step_ms"] > 0 and result["peak_train_memory_mb"] > 0
    assert result["infer_images_per_sec"] == pytest.approx(2 / result["infer_latency_ms"] * 1e3)
    only_train = profile_model(TINY, mode="train", per_stage=False, **QUICK)
    assert only_train["infer_latency_ms"] is None and only_train["infer_images_per_sec"] is None
    assert only_train["stages"] == [] and only_train["train_step_ms"] > 0


def test_compare_blocks_rows_match_models_built_with_each_placement():
    rows = compare_blocks(TINY, resolution=32, batch_size=2, mode="infer", warmup=0, iters=1)
    assert [r["stage"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for placement in ("FMFMFM", "MFMFMF"):
        model = create_model(**{**TINY, "blocks": placement})
        for r, letter, stage in zip(rows, placement, model.blocks, strict=True):
            block = "fused" if letter == "F" else "mbconv"
            assert r[f"{block}_params"] == sum(p.numel() for p in stage.parameters())
    assert all(r["verdict"] in ("fused", "mbconv", "even", "mixed") and r["fused_train_ms"] is None for r in rows)
    assert rows[0]["input_hw"] == 16 and rows[-1]["input_hw"] == 2


def fail_above(monkeypatch, batch_size: int, error: Exception):
    """Make profiling run out of memory at every batch larger than `batch_size`."""
    real = profile_mod.measure_model

    def fake(model_kwargs, batch, opts, result):
        if batch > batch_size:
            raise error
        return real(model_kwargs, batch, opts, result)

    monkeypatch.setattr(profile_mod, "measure_model", fake)


def test_oom_halves_the_batch_and_says_so(monkeypatch):
    fail_above(monkeypatch, 2, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"))
    result = profile_model(TINY, mode="infer", per_stage=False, **{**QUICK, "batch_size": 8})
    assert result["batch_size"] == 2
    assert result["notes"] == ["out of memory at batch 8; halved to 4 and retried",
                               "out of memory at batch 4; halved to 2 and retried"]


@pytest.mark.parametrize("error,size", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has ..."), "2.00 GiB"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 141733920768 bytes. Error code 12 (Cannot allocate memory)"), "132.0 GiB"),
])
def test_oom_even_at_batch_1_is_one_line_naming_the_size(monkeypatch, error, size):
    fail_above(monkeypatch, 0, error)
    with pytest.raises(FmbError) as info:
        profile_model(TINY, mode="infer", per_stage=False, **{**QUICK, "batch_size": 2})
    message = str(info.value)
    assert info.value.exit_code == 1 and "\n" not in message
    assert "out of memory on cpu" in message and "32 px" in message and size in message
    assert "smaller --resolution" in message


def test_other_runtime_errors_are_not_taken_for_oom(monkeypatch):
    fail_above(monkeypatch, 0, RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes"):
        profile_model(TINY, mode="infer", per_stage=False, **QUICK)


def test_sizes_that_cannot_fit_are_refused_or_halved_before_any_work(monkeypatch):
    fail_above(monkeypatch, 0, AssertionError("measured despite a size that cannot fit"))
    monkeypatch.setattr(profile_mod, "device_memory", lambda device: 2 ** 30)  # a 1 GiB machine
    with pytest.raises(FmbError, match=r"resolution 16384 cannot fit on cpu: .* 1\.0 GiB .*smaller --resolution"):
        profile_model(TINY, **{**QUICK, "resolution": 16384})
    monkeypatch.setattr(profile_mod, "measure_model", lambda _kw, batch, _opts, result: result.update(batch_size=batch))
    result = profile_model(TINY, mode="infer", per_stage=False, **{**QUICK, "resolution": 4096, "batch_size": 8})
    assert result["batch_size"] == 2 and len(result["notes"]) == 2 and "cannot fit in 1.0 GiB" in result["notes"][0]


@pytest.mark.parametrize("counts,message", [
    ({"iters": 0}, "invalid iters 0: expected an integer >= 1"),
    ({"iters": 1.5}, "invalid iters 1.5"),
    ({"warmup": -1}, "invalid warmup -1: expected an integer >= 0"),
])
def test_bad_iteration_counts_fail_before_any_work(monkeypatch, counts, message):
    fail_above(monkeypatch, 0, AssertionError("measured despite a bad count"))
    with pytest.raises(FmbError, match=message):
        profile_model(TINY, **{**QUICK, **counts})


def test_quartiles_only_from_four_timed_runs():
    assert summarize([3.0, 1.0, 2.0]) == {"median_ms": 2.0, "p25_ms": None, "p75_ms": None,
                                          "min_ms": 1.0, "max_ms": 3.0, "iters": 3}
    stats = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (stats["p25_ms"], stats["median_ms"], stats["p75_ms"]) == (2.0, 3.0, 4.0)
    five = time_call(lambda: None, warmup=0, iters=5)
    assert five["iters"] == 5
    assert five["min_ms"] <= five["p25_ms"] <= five["median_ms"] <= five["p75_ms"] <= five["max_ms"]


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
