"""Using a trained model: predict (top-k over images, folders or a dataset) and export
(ONNX, torch.export .pt2, safetensors, TorchScript — each checked by running it).

The functions share their submodules' names (`fmb.inference.predict` is the function once this
package is imported), so they are imported here rather than on first use; the command line
imports this package only inside the commands that need it."""
from __future__ import annotations

from fmb.inference.export import FORMATS, export_model
from fmb.inference.predict import Classifier, PredictResult, load_classifier, predict

__all__ = ["predict", "PredictResult", "load_classifier", "Classifier", "export_model", "FORMATS"]
