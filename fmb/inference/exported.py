"""What an exported file says about its inputs and outputs, and running it.

`fmb export` writes the same metadata into every format (safetensors' header, ONNX's
metadata_props, a .pt2's `fmb.json` extra file): class names, the eval size, the
preprocessing (crop, interpolation, mean/std) and the model's fields. `fmb predict` reads it
back here, so an exported file is predicted with the preprocessing it was trained with.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from fmb.errors import FmbError

EXPORTED_SUFFIXES = (".onnx", ".pt2")
PT2_METADATA = "fmb.json"  # the extra file of a .pt2 that holds the metadata


def export_metadata(classifier, *, fold_bn: bool, size: int) -> dict[str, str]:
    """Everything that rebuilds the network and its input pipeline, as strings (what
    safetensors and ONNX metadata take): fmb's model section, classes, BN eps/momentum, the
    sizes, the eval crop and interpolation, mean/std and which weights these are."""
    hp = classifier.model.hparams
    prep = classifier.preprocessing
    return {"format": "fmb", "model": json.dumps(hp["config"]["model"]), "num_classes": str(hp["num_classes"]),
            "class_names": json.dumps(classifier.class_names), "bn": json.dumps(hp.get("bn_kwargs")),
            "image_size": str(classifier.train_image_size), "eval_image_size": str(size),
            "crop_ratio": str(classifier.crop_ratio), "mean": json.dumps(list(prep["mean"])),
            "std": json.dumps(list(prep["std"])), "interpolation": str(prep["interpolation"]),
            "preprocessing": str(prep["preprocessing"]), "weights": classifier.weights,
            "input": "images: float32 [batch, 3, eval_image_size, eval_image_size], RGB, normalised with mean/std",
            "output": "logits: float32 [batch, num_classes], in class_names order",
            "fold_bn": json.dumps(fold_bn)}


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata `export_metadata` wrote into an .onnx or .pt2 file."""
    if path.suffix == ".onnx":
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
            raise FmbError(f"{path} is not a readable ONNX file ({type(exc).__name__}); expected a file written by "
                           "fmb export") from None
        meta = {p.key: p.value for p in model.metadata_props}
    else:
        extra = {PT2_METADATA: ""}
        try:
            torch.export.load(str(path), extra_files=extra)
        except Exception as exc:  # noqa: BLE001
            raise FmbError(f"{path} is not a readable torch.export file ({type(exc).__name__}); expected a file "
                           "written by fmb export") from None
        meta = json.loads(extra[PT2_METADATA]) if extra[PT2_METADATA] else {}
    if meta.get("format") != "fmb" or "class_names" not in meta:
        raise FmbError(f"{path} carries no fmb metadata (class names, preprocessing); expected a file written by "
                       "fmb export, or the run's .ckpt")
    return meta


def exported_runner(path: Path, device: torch.device, precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """batch → logits for an exported file: ONNX through onnxruntime, .pt2 through torch.export."""
    if path.suffix == ".onnx":
        if precision != "fp32":
            raise FmbError(f"--precision {precision}: an ONNX export runs in the precision it was written in; "
                           "expected --precision fp32")
        try:
            import onnxruntime
        except ImportError:
            raise FmbError("predicting with an ONNX file needs onnxruntime; expected pip install 'fmb[export]'"
                           ) from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        session = onnxruntime.InferenceSession(str(path), providers=providers)
        name = session.get_inputs()[0].name
        return lambda batch: torch.from_numpy(session.run(None, {name: batch.float().numpy()})[0])
    from fmb.inference.device import autocast

    module = torch.export.load(str(path)).module().to(device)

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(precision, device):
            return module(batch.to(device))
    return run
