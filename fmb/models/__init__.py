"""Model family: blocks, stage specs, the network, weight import, BN folding.

Names are imported on first use, so the torch-free parts (stage specs, the published-weights
and variant tables behind `fmb models`) load without torch.
"""
import importlib

_HOME = {
    "FusedMBConv": "blocks", "MBConv": "blocks", "EfficientNet": "efficientnet",
    "EfficientNetFeatures": "efficientnet", "build_stages": "specs", "create_model": "factory",
    "list_models": "factory", "folding_pays": "fuse", "fuse_bn": "fuse", "cpu_fast_paths": "small_maps",
    "plain_convs": "small_maps", "VARIANTS": "specs", "StageSpec": "specs", "VariantSpec": "specs",
    "get_variant": "specs",
}
__all__ = sorted(_HOME)


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f"fmb.models.{_HOME[name]}"), name)
    raise AttributeError(f"module 'fmb.models' has no attribute {name!r}")
