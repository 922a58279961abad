"""fmb export: every format written, loaded back and run; the measured difference from PyTorch;
a failed check leaves nothing behind; TorchScript through torch.jit.trace."""
import json

import pytest
import torch

from fmb.errors import FmbError
from fmb.inference.export import export_model
from fmb.training.evaluate import load_checkpoint, restore_module


@pytest.fixture(scope="module")
def network(tiny_checkpoint):
    ckpt, _, _ = tiny_checkpoint
    return restore_module(load_checkpoint(ckpt)).model.eval()


@pytest.mark.parametrize("fmt,fold_bn", [pytest.param("onnx", False, marks=pytest.mark.slow),
                                         pytest.param("onnx", True, marks=pytest.mark.slow),
                                         pytest.param("pt2", False, marks=pytest.mark.slow),
                                         ("safetensors", True), ("torchscript", False)])
def test_export_round_trip(tiny_checkpoint, network, tmp_path, fmt, fold_bn, request):
    ckpt, _, _ = tiny_checkpoint
    if fmt in ("onnx", "pt2") and not fold_bn:  # the defaults: the shared export (asked for here, so
        out, result = request.getfixturevalue("exported")[fmt]  # the quick cases never build it)
    else:
        out = tmp_path / f"model.{fmt}"
        result = export_model(ckpt, format=fmt, output=out, fold_bn=fold_bn)
    assert out.is_file() and result["path"] == str(out) and result["bytes"] == out.stat().st_size
    # measured on this CPU: 0 (pt2, TorchScript, safetensors), ~2e-7 (ONNX Runtime, BN folding)
    assert result["max_abs_diff"] <= 1e-5, result
    assert result["weights"] == "ema" and result["class_names"] == ["cat", "dog", "owl"]
    x = torch.randn(7, 3, 32, 32)  # a batch size the export never saw
    with torch.inference_mode():
        expected = network(x)
    if fmt == "onnx":
        import onnxruntime
        got = torch.from_numpy(onnxruntime.InferenceSession(str(out)).run(None, {"images": x.numpy()})[0])
    elif fmt == "pt2":
        got = torch.export.load(str(out)).module()(x)
    elif fmt == "torchscript":
        got = torch.jit.load(str(out))(x)
    else:
        from safetensors import safe_open
        with safe_open(str(out), "pt") as f:
            meta = f.metadata()
        assert meta["format"] == "fmb" and json.loads(meta["class_names"]) == ["cat", "dog", "owl"]
        return
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_exported_safetensors_is_a_pretrained_file(tiny_checkpoint, network, tmp_path):
    """Without BN folding the file loads by tensor name, as model.pretrained=FILE does."""
    import fmb

    ckpt, _, _ = tiny_checkpoint
    out = tmp_path / "weights.safetensors"
    export_model(ckpt, format="safetensors", output=out)
    model = fmb.create_model("efficientnetv2_s", num_classes=3, width_mult=0.25, depth_mult=0.25,
                             pretrained=str(out)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), network(x))


def test_failed_check_leaves_nothing(tiny_checkpoint, tmp_path):
    ckpt, _, _ = tiny_checkpoint
    out = tmp_path / "model.pt2"
    # BN folding changes the logits by ~1e-7: a tolerance below that must fail
    with pytest.raises(FmbError, match="above the tolerance") as info:
        export_model(ckpt, format="torchscript", output=tmp_path / "m.ts", fold_bn=True, tolerance=1e-12)
    assert info.value.exit_code == 1
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FmbError, match="unknown --format 'tflite'"):
        export_model(ckpt, format="tflite", output=out)


@pytest.mark.slow
def test_export_cli(run_cli, tiny_checkpoint, tmp_path):
    ckpt, _, _ = tiny_checkpoint
    out, report = tmp_path / "m.pt2", tmp_path / "export.json"
    result = run_cli("export", ckpt, "--format", "pt2", "--static-batch", "-o", out, "--json", report)
    assert result.returncode == 0, result.stderr
    assert "max abs diff" in result.stdout and out.is_file()
    payload = json.loads(report.read_text())
    assert payload["batch_sizes"] == [2] and payload["dynamic_batch"] is False
    bad = run_cli("export", ckpt, "--format", "onnx", "--tolerance", "0")
    assert bad.returncode == 2 and "--tolerance" in bad.stderr


def test_torch_jit_trace_of_the_model(network):
    import warnings

    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(network, x)
    assert traced(torch.randn(4, 3, 32, 32)).shape == (4, 3)
    torch.testing.assert_close(traced(x), network(x))


def _onnx_metadata(path):
    import onnx
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.mark.slow
def test_onnx_and_pt2_carry_labels_and_preprocessing(tiny_checkpoint, exported):
    """Class names, sizes, crop, interpolation and mean/std travel inside the file, the same
    keys as the safetensors header."""
    from safetensors import safe_open

    from fmb.inference.exported import read_metadata

    ckpt, _, _ = tiny_checkpoint
    cfg = restore_module(load_checkpoint(ckpt)).cfg
    metas = {}
    for fmt in ("onnx", "pt2", "safetensors"):
        out, result = exported[fmt]
        metas[fmt] = result["metadata"]
        if fmt == "safetensors":
            with safe_open(str(out), "pt") as f:
                assert f.metadata() == metas[fmt]
        else:
            assert read_metadata(out) == metas[fmt]
    assert metas["onnx"] == metas["pt2"] == metas["safetensors"]
    meta = metas["onnx"]
    assert json.loads(meta["class_names"]) == ["cat", "dog", "owl"] and meta["weights"] == "ema"
    assert meta["eval_image_size"] == "32" and meta["image_size"] == "32"
    assert float(meta["crop_ratio"]) == cfg.data.crop_ratio and meta["interpolation"] == cfg.data.interpolation
    assert json.loads(meta["mean"]) == list(cfg.data.mean) and json.loads(meta["std"]) == list(cfg.data.std)
    assert _onnx_metadata(exported["onnx"][0]) == meta  # plain onnx sees it too (metadata_props)


@pytest.mark.slow
def test_existing_output_is_kept_without_overwrite_and_replaced_at_the_asked_opset(run_cli, tiny_checkpoint, tmp_path):
    ckpt, _, _ = tiny_checkpoint
    keep = tmp_path / "keep.onnx"
    keep.write_bytes(b"my earlier export")
    refused = run_cli("export", ckpt, "-o", keep)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "--output " + str(keep) + " already exists; expected --overwrite" in " ".join(refused.stderr.split())
    assert keep.read_bytes() == b"my earlier export" and sorted(tmp_path.iterdir()) == [keep]
    # (one export for two points: --overwrite replaces the file, and --opset is the one written)
    replaced = run_cli("export", ckpt, "-o", keep, "--overwrite", "--opset", "21")
    assert replaced.returncode == 0, replaced.stderr
    assert keep.read_bytes() != b"my earlier export" and _onnx_metadata(keep)["format"] == "fmb"
    assert _onnx_opsets(keep)[""] == 21


def _onnx_opsets(path):
    import onnx
    return {o.domain: o.version for o in onnx.load(str(path)).opset_import}


def test_opset_is_checked_up_front(run_cli, tiny_checkpoint, tmp_path):
    ckpt, _, _ = tiny_checkpoint
    for bad in ("3", "17", "999"):
        out = run_cli("export", ckpt, "-o", tmp_path / "m.onnx", "--opset", bad)
        assert out.returncode == 2 and f"--opset {bad}; expected 18 to" in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FmbError, match="--opset applies to ONNX"):
        export_model(ckpt, format="pt2", output=tmp_path / "m.pt2", opset=18)
    # an --opset written as asked: test_existing_output_is_kept_without_overwrite_and_replaced_at_the_asked_opset


def test_output_name_and_size_refused_before_work(tiny_checkpoint, tmp_path):
    ckpt, _, _ = tiny_checkpoint
    with pytest.raises(FmbError, match="a file name of 305 bytes; expected at most 230") as info:
        export_model(ckpt, output=tmp_path / ("n" * 300 + ".onnx"))
    assert info.value.exit_code == 2
    with pytest.raises(FmbError, match="activations of one inference batch at --resolution 100000"):
        export_model(ckpt, output=tmp_path / "m.onnx", resolution=100000)
    assert list(tmp_path.iterdir()) == []
