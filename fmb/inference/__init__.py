"""Using a trained model: predict (top-k over images, folders or a dataset) and export
(ONNX, torch.export .pt2, safetensors, TorchScript — each checked by running it)."""
from __future__ import annotations

__all__ = ["predict", "PredictResult", "load_classifier", "Classifier", "export_model", "FORMATS"]


def __getattr__(name):  # torch and friends load on first use
    if name in ("predict", "PredictResult", "load_classifier", "Classifier"):
        from fmb.inference import predict as module
    elif name in ("export_model", "FORMATS"):
        from fmb.inference import export as module
    else:
        raise AttributeError(f"module 'fmb.inference' has no attribute {name!r}")
    return getattr(module, name)
