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

from fmb.errors import FmbError, choice_error, write_error
from fmb.inference.exported import PT2_METADATA, export_metadata

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "safetensors": ".safetensors", "torchscript": ".ts"}
DEFAULT_TOLERANCE = 1e-3  # fp32 logits; ONNX Runtime and torch differ by ~1e-6 on these models
MIN_OPSET = 18  # torch.onnx's dynamo exporter writes no older opset
MAX_NAME_BYTES = 230  # a file name may hold 255 bytes; the temp file beside it adds a prefix and suffix


def export_model(checkpoint: str | Path, *, format: str = "onnx", output: str | Path | None = None,
                 fold_bn: bool = False, dynamic_batch: bool = True, ema: bool = True,
                 resolution: int | None = None, batch_size: int = 2, tolerance: float = DEFAULT_TOLERANCE,
                 opset: int | None = None, overwrite: bool = False) -> dict:
    """Write the checkpoint's network in `format` and check it; returns what was written and
    the measured difference (keys: format, path, bytes, max_abs_diff, tolerance, batch_sizes,
    input_shape, dynamic_batch, fold_bn, weights, checkpoint, num_classes, class_names, metadata).

    An existing file at the destination is kept unless `overwrite`; every argument is checked
    before the checkpoint is read."""
    from fmb.inference.predict import load_classifier
    from fmb.models import cpu_fast_paths
    from fmb.training.memory import check_fits, model_activation_bytes

    if format not in FORMATS:
        raise choice_error("--format", format, list(FORMATS))
    if batch_size < 1:
        raise FmbError(f"--batch-size {batch_size}; expected 1 or more")
    if not (tolerance > 0):
        raise FmbError(f"--tolerance {tolerance}; expected a positive number such as 1e-3")
    if resolution is not None and resolution < 16:
        raise FmbError(f"--resolution {resolution}; expected 16 px or more (the network downsamples 32x), e.g. 224")
    if opset is not None and format != "onnx":
        raise FmbError(f"--opset applies to ONNX; expected --format onnx, or no --opset with --format {format}")
    if opset is not None:
        _check_opset(opset)
    path = Path(output).expanduser() if output else Path(checkpoint).with_suffix(FORMATS[format])
    _check_destination(path, overwrite)
    classifier = load_classifier(checkpoint, ema=ema)
    # The EfficientNet itself, without the Lightning wrapper; ordinary convs, so the exported
    # graph has no CPU-only small-map branches.
    original = net = cpu_fast_paths(classifier.model.model.eval(), enabled=False)
    if fold_bn:
        from fmb.models import fuse_bn
        net = fuse_bn(net).eval()
    size = int(resolution or classifier.eval_image_size)
    batch_sizes = [batch_size] + ([batch_size + 3] if dynamic_batch and format != "safetensors" else [])
    need = model_activation_bytes(**classifier.model_fields, image_size=size, batch_size=max(batch_sizes),
                                  training=False)
    check_fits(None, size, max(batch_sizes), "cpu", training=False, size_key="--resolution",
               batch_key="--batch-size", need=need)
    metadata = export_metadata(classifier, fold_bn=fold_bn, size=size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc, exit_code=2) from None

    generator = torch.Generator().manual_seed(0)
    samples = [torch.randn(b, 3, size, size, generator=generator) for b in batch_sizes]
    with torch.inference_mode():  # the un-folded model: the difference covers folding and export together
        expected = [original(x) for x in samples]

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=FORMATS[format], dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer, runner = _FORMATS[format]
        try:
            writer(net, samples[0], tmp, dynamic_batch=dynamic_batch, opset=opset, metadata=metadata)
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
        if not overwrite and path.exists():  # appeared while this export ran: still the user's file
            raise FmbError(f"--output {path} was created while exporting; kept it, and wrote nothing; expected "
                           "--overwrite to replace it")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"format": format, "path": str(path), "bytes": path.stat().st_size, "max_abs_diff": diff,
            "tolerance": tolerance, "batch_sizes": batch_sizes, "input_shape": [batch_sizes[0], 3, size, size],
            "dynamic_batch": dynamic_batch and format != "safetensors", "fold_bn": fold_bn,
            "weights": classifier.weights, "checkpoint": classifier.checkpoint,
            "num_classes": len(classifier.class_names), "class_names": classifier.class_names,
            "metadata": metadata}


def _check_opset(opset: int) -> None:
    """torch.onnx writes opset 18 and newer (it silently writes 18 for older requests), up
    to the newest the installed onnx package defines."""
    try:
        import onnx
        newest = onnx.defs.onnx_opset_version()
    except ImportError:
        raise FmbError("ONNX export needs onnx and onnxscript (and onnxruntime to check it); expected "
                       "pip install 'fmb[export]'") from None
    if isinstance(opset, bool) or not MIN_OPSET <= opset <= newest:
        nearest_opset = min(max(opset, MIN_OPSET), newest)
        raise FmbError(f"--opset {opset}; expected {MIN_OPSET} to {newest} (torch.onnx's oldest and the installed "
                       f"onnx's newest), e.g. --opset {nearest_opset}")


def _check_destination(path: Path, overwrite: bool) -> None:
    """The output is refused before any work: a directory, an existing file without
    --overwrite, a name too long for the disk, a folder that cannot be written."""
    from fmb.utils import check_writable

    if len(path.name.encode()) > MAX_NAME_BYTES:  # first: stat() of such a name is itself an OSError
        raise FmbError(f"--output {path.name[:40]}...: a file name of {len(path.name.encode())} bytes; expected at "
                       f"most {MAX_NAME_BYTES} bytes (the disk's limit, less room for the temp file)")
    if path.is_dir():
        raise FmbError(f"--output {path} is a directory; expected a file path such as {path / ('model' + path.suffix)}")
    if path.exists() and not overwrite:
        raise FmbError(f"--output {path} already exists; expected --overwrite to replace it, or another --output path")
    check_writable(path, "--output")


def _batch_dim(dynamic: bool):
    return ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None


# ---- ONNX ------------------------------------------------------------------------------
def _write_onnx(net, sample, path, *, dynamic_batch, opset, metadata, **_):
    try:
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
    except ImportError:
        raise FmbError("ONNX export needs onnx and onnxscript (and onnxruntime to check it); expected "
                       "pip install 'fmb[export]'") from None
    options = {"opset_version": opset} if opset else {}
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates every pass
        program = torch.onnx.export(net, (sample,), dynamo=True, input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=_batch_dim(dynamic_batch), verbose=False, **options)
    written = program.model.opset_imports.get("", None)
    if opset and written != opset:
        raise FmbError(f"--opset {opset}: torch.onnx wrote opset {written} instead; nothing was written; expected "
                       f"--opset {written}", exit_code=1)
    program.model.metadata_props.update(metadata)  # ONNX's own key/value store: any runtime reads it
    program.save(str(path))


def _run_onnx(path, samples, **_):
    try:
        import onnxruntime
    except ImportError:
        raise FmbError("checking an ONNX export needs onnxruntime; expected pip install 'fmb[export]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(session.run(None, {"images": x.numpy()})[0]) for x in samples]


# ---- torch.export ----------------------------------------------------------------------
def _write_pt2(net, sample, path, *, dynamic_batch, metadata, **_):
    program = torch.export.export(net, (sample,), dynamic_shapes=_batch_dim(dynamic_batch))
    torch.export.save(program, str(path), extra_files={PT2_METADATA: json.dumps(metadata)})


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
def _write_safetensors(net, sample, path, *, metadata, **_):
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(path), metadata=metadata)


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
