"""fmb: EfficientNet V1/V2 around the Fused-MBConv block, on PyTorch Lightning.

`create_model` and `list_models` import torch on first use, so `fmb --help` starts fast.
"""
from fmb.errors import FmbError

__all__ = ["FmbError", "create_model", "list_models"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in ("create_model", "list_models"):
        import fmb.models
        return getattr(fmb.models, name)
    raise AttributeError(f"module 'fmb' has no attribute {name!r}")
