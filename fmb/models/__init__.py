"""Model family: blocks, stage specs, the network, weight import, BN folding."""
from fmb.models.blocks import FusedMBConv, MBConv
from fmb.models.efficientnet import EfficientNet, EfficientNetFeatures
from fmb.models.factory import build_stages, create_model, list_models
from fmb.models.fuse import folding_pays, fuse_bn
from fmb.models.small_maps import cpu_fast_paths, plain_convs
from fmb.models.specs import VARIANTS, StageSpec, VariantSpec, get_variant

__all__ = [
    "EfficientNet", "EfficientNetFeatures", "FusedMBConv", "MBConv", "StageSpec", "VariantSpec", "VARIANTS",
    "build_stages", "cpu_fast_paths", "create_model", "folding_pays", "fuse_bn", "get_variant", "list_models",
    "plain_convs",
]
