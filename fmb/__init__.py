"""fmb: EfficientNet V1/V2 around the Fused-MBConv block, on PyTorch Lightning."""
from fmb.errors import FmbError
from fmb.models import create_model, list_models

__all__ = ["FmbError", "create_model", "list_models"]
__version__ = "0.1.0"
