"""`fmb export` as a library function: a checkpoint's network as ONNX, a torch.export
program (.pt2), safetensors weights or TorchScript, checked by running what was written.

The file is written next to its final name, loaded back and run on a random batch (ONNX
with onnxruntime, .pt2 with `torch.export.load`, safetensors by loading it into a freshly
built model, TorchScript with `torch.jit.load`); the largest absolute difference from the
PyTorch model's logits is reported. Above the tolerance the export fails and nothing is left
at the destination. With a dynamic batch, a second batch size is checked as well.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

from fmb.errors import FmbError, choice_error

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "safetensors": ".safetensors", "torchscript": ".ts"}
DEFAULT_TOLERANCE = 1e-3  # fp32 logits; ONNX Runtime and torch differ by ~1e-6 on these models


def export_model(checkpoint: str | Path, *, format: str = "onnx", output: str | Path | None = None,
                 fold_bn: bool = False, dynamic_batch: bool = True, ema: bool = True,
                 resolution: int | None = None, batch_size: int = 2, tolerance: float = DEFAULT_TOLERANCE,
                 opset: int | None = None) -> dict:
    """Write the checkpoint's network in `format` and check it; returns what was written and
    the measured difference (keys: format, path, bytes, max_abs_diff, tolerance, batch_sizes,
    input_shape, dynamic_batch, fold_bn, weights, checkpoint, num_classes, class_names)."""
    from fmb.inference.predict import load_classifier

    if format not in FORMATS:
        raise choice_error("--format", format, list(FORMATS))
    if batch_size < 1:
        raise FmbError(f"--batch-size {batch_size}; expected 1 or more")
    if not (tolerance > 0):
        raise FmbError(f"--tolerance {tolerance}; expected a positive number such as 1e-3")
    classifier = load_classifier(checkpoint, ema=ema)
    original = net = classifier.model.model.eval()  # the EfficientNet itself, without the Lightning wrapper
    if fold_bn:
        from fmb.models import fuse_bn
        net = fuse_bn(net).eval()
    size = int(resolution or classifier.eval_image_size)
    path = Path(output) if output else Path(checkpoint).with_suffix(FORMATS[format])
    if path.is_dir():
        raise FmbError(f"--output {path} is a directory; expected a file path such as {path / ('model' + FORMATS[format])}")
    path.parent.mkdir(parents=True, exist_ok=True)

    generator = torch.Generator().manual_seed(0)
    batch_sizes = [batch_size] + ([batch_size + 3] if dynamic_batch and format != "safetensors" else [])
    samples = [torch.randn(b, 3, size, size, generator=generator) for b in batch_sizes]
    with torch.inference_mode():  # the un-folded model: the difference covers folding and export together
        expected = [original(x) for x in samples]

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=FORMATS[format], dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer, runner = _FORMATS[format]
        try:
            writer(net, samples[0], tmp, dynamic_batch=dynamic_batch, opset=opset, classifier=classifier,
                   fold_bn=fold_bn, size=size)
            outputs = runner(tmp, samples, net=net, fold_bn=fold_bn, classifier=classifier)
        except FmbError:
            raise
        except Exception as exc:  # noqa: BLE001 - an exporter failure is this command's failure, in one line
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise FmbError(f"{format} export failed: {type(exc).__name__}: {first} (rerun with --debug for the "
                           "traceback)", exit_code=1) from exc
        diff = max(float((torch.as_tensor(o).float() - e.float()).abs().max()) for o, e in zip(outputs, expected))
        if not diff <= tolerance:
            raise FmbError(f"{format} export differs from the PyTorch model by {diff:.3g} (max abs logit), above the "
                           f"tolerance {tolerance:g}; nothing was written to {path}", exit_code=1)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the export is an ordinary file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"format": format, "path": str(path), "bytes": path.stat().st_size, "max_abs_diff": diff,
            "tolerance": tolerance, "batch_sizes": batch_sizes, "input_shape": [batch_sizes[0], 3, size, size],
            "dynamic_batch": dynamic_batch and format != "safetensors", "fold_bn": fold_bn,
            "weights": classifier.weights, "checkpoint": classifier.checkpoint,
            "num_classes": len(classifier.class_names), "class_names": classifier.class_names}


def _batch_dim(dynamic: bool):
    return ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None


# ---- ONNX ------------------------------------------------------------------------------
def _write_onnx(net, sample, path, *, dynamic_batch, opset, **_):
    try:
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
    except ImportError:
        raise FmbError("ONNX export needs onnx and onnxscript (and onnxruntime to check it); expected "
                       "pip install 'fmb[export]'") from None
    options = {"opset_version": opset} if opset else {}
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates every pass
        program = torch.onnx.export(net, (sample,), dynamo=True, input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=_batch_dim(dynamic_batch), verbose=False, **options)
    program.save(str(path))


def _run_onnx(path, samples, **_):
    try:
        import onnxruntime
    except ImportError:
        raise FmbError("checking an ONNX export needs onnxruntime; expected pip install 'fmb[export]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(session.run(None, {"images": x.numpy()})[0]) for x in samples]


# ---- torch.export ----------------------------------------------------------------------
def _write_pt2(net, sample, path, *, dynamic_batch, **_):
    program = torch.export.export(net, (sample,), dynamic_shapes=_batch_dim(dynamic_batch))
    torch.export.save(program, str(path))


def _run_pt2(path, samples, **_):
    loaded = torch.export.load(str(path)).module()
    with torch.inference_mode():
        return [loaded(x) for x in samples]


# ---- TorchScript -----------------------------------------------------------------------
def _write_torchscript(net, sample, path, **_):
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream, still widely used
        torch.jit.save(torch.jit.trace(net, sample), str(path))


def _run_torchscript(path, samples, **_):
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path))
        return [loaded(x) for x in samples]


# ---- safetensors -----------------------------------------------------------------------
def _metadata(classifier, fold_bn: bool, size: int) -> dict[str, str]:
    """What rebuilds the network: fmb's model section, classes, BN eps/momentum (all strings, as safetensors wants)."""
    hp = classifier.model.hparams
    return {"format": "fmb", "model": json.dumps(hp["config"]["model"]), "num_classes": str(hp["num_classes"]),
            "class_names": json.dumps(classifier.class_names), "bn": json.dumps(hp.get("bn_kwargs")),
            "eval_image_size": str(size), "fold_bn": json.dumps(fold_bn)}


def _write_safetensors(net, sample, path, *, classifier, fold_bn, size, **_):
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata=_metadata(classifier, fold_bn, size))


def _run_safetensors(path, samples, *, classifier, fold_bn, **_):
    """Load the file into a freshly built model: by name through fmb's weight loader (as
    `model.pretrained=FILE` would), or straight into a BN-folded copy."""
    from fmb.models import create_model, fuse_bn
    from fmb.training.module import model_kwargs

    hp = classifier.model.hparams
    fresh = create_model(**model_kwargs(classifier.model.cfg.model), num_classes=hp["num_classes"],
                         **(hp.get("bn_kwargs") or {})).eval()
    if fold_bn:
        from safetensors.torch import load_file
        fresh = fuse_bn(fresh).eval()
        fresh.load_state_dict(load_file(str(path)), strict=True)
    else:
        from fmb.models import get_variant
        from fmb.models.weights import load_into, read_checkpoint
        model_cfg = classifier.model.cfg.model
        state, origin = read_checkpoint(path, family=get_variant(model_cfg.variant).family, padding=model_cfg.padding)
        load_into(fresh, state, origin, source=str(path), set_bn=False)  # BN as trained (hp bn_kwargs)
    with torch.inference_mode():
        return [fresh(x) for x in samples]


_FORMATS = {"onnx": (_write_onnx, _run_onnx), "pt2": (_write_pt2, _run_pt2),
            "safetensors": (_write_safetensors, _run_safetensors),
            "torchscript": (_write_torchscript, _run_torchscript)}
