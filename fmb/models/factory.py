"""`create_model` / `list_models`: a variant name plus options → an EfficientNet."""
from __future__ import annotations

import warnings

from fmb.errors import FmbError, choice_error
from fmb.models.efficientnet import EfficientNet, EfficientNetFeatures
from fmb.models.layers import BN_MOMENTUM, DEFAULT_BN_EPS
from fmb.models.specs import VARIANTS, build_stages, round_channels

PADDINGS = ("symmetric", "same")


def list_models() -> list[str]:
    return list(VARIANTS)


def _check_rate(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise FmbError(f"invalid {name}={value!r}: expected a number in [0, 1)")
    return float(value)


def _padding_for(source, padding: str | None) -> str | None:
    """The weights' padding unless one is asked for; a contradiction is warned about, not overruled."""
    if padding is None or source.padding is None:
        return padding if padding is not None else source.padding
    if padding != source.padding:
        warnings.warn(f"padding='{padding}' kept, but {source.spec} was trained with padding='{source.padding}': "
                      "its logits will differ from the source's", stacklevel=3)
    return padding


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    blocks: str | None = None,
    stage_overrides: dict | None = None,
    width_mult: float | None = None,
    depth_mult: float | None = None,
    drop_rate: float | None = None,
    drop_path_rate: float | None = None,
    padding: str | None = None,
    pretrained: str | bool | None = None,
    in_chans: int = 3,
    features_only: bool = False,
    out_indices=None,
    bn_eps: float | None = None,
    bn_momentum: float | None = None,
):
    """Build an EfficientNet V1/V2 variant.

    blocks: placement string, one letter per stage (F = Fused-MBConv, M = MBConv).
    stage_overrides: `{stage_number: {field: value}}` on the base (unscaled) stage table.
    width_mult / depth_mult: multiply the variant's own coefficients.
    padding: "symmetric" or "same" (TensorFlow's); None = the weights' (same for TF-trained ones), else symmetric.
    pretrained: a torchvision / timm / fmb weights file (origin told by its keys), `hf-hub:ORG/NAME`
    (timm's format), `torchvision:ENUM.NAME`, or True for the variant's default published weights
    (fmb/models/published.py). Stages whose block type differs from the weights' start fresh;
    `model.pretrained_report` says which, and `model.pretrained_source` what the weights need.
    bn_eps / bn_momentum: default to the official values (eps 1e-3; momentum 0.01 for V1, 0.1
    for V2), or to those of the weights' origin when loading (see weights.py).
    """
    variant, stages, width = build_stages(name, blocks, stage_overrides, width_mult, depth_mult)
    source = None
    if pretrained is not None and pretrained is not False:
        from fmb.models.pretrained import resolve
        source = resolve(pretrained, variant.name)
        padding = _padding_for(source, padding)
    padding = "symmetric" if padding is None else padding
    if padding not in PADDINGS:
        raise choice_error("padding", padding, PADDINGS)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise FmbError(f"invalid num_classes={num_classes!r}: expected an integer >= 1 (0 for no classifier)")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise FmbError(f"invalid in_chans={in_chans!r}: expected an integer >= 1")

    state_dict = origin = None
    explicit_bn = bn_eps is not None or bn_momentum is not None
    if source is not None:
        from fmb.models.weights import read_checkpoint
        state_dict, origin = read_checkpoint(source, family=variant.family, padding=padding, variant=variant.name)
        bn_eps = origin.bn_eps if bn_eps is None else bn_eps
        bn_momentum = origin.bn_momentum if bn_momentum is None else bn_momentum
    model = EfficientNet(
        stages,
        stem_channels=round_channels(variant.stem_channels, width, variant.family),
        head_channels=round_channels(variant.head_channels, width, variant.family),
        num_classes=num_classes,
        in_chans=in_chans,
        drop_rate=variant.drop_rate if drop_rate is None else _check_rate("drop_rate", drop_rate),
        drop_path_rate=variant.drop_path_rate if drop_path_rate is None
        else _check_rate("drop_path_rate", drop_path_rate),
        bn_eps=DEFAULT_BN_EPS if bn_eps is None else bn_eps,
        bn_momentum=BN_MOMENTUM[variant.family] if bn_momentum is None else bn_momentum,
        padding=padding,
    )
    model.variant = variant.name
    model.bn_explicit = explicit_bn  # weights loaded later (weights.load_into) keep these BN values
    if state_dict is not None:
        from fmb.models.weights import load_into
        load_into(model, state_dict, origin, source=source.spec, set_bn=not explicit_bn)
        model.pretrained_source = source
    if features_only:
        n = len(stages)
        indices = tuple(range(1, n + 1)) if out_indices is None else tuple(out_indices)
        if not indices or any(not isinstance(i, int) or not 1 <= i <= n for i in indices):
            raise FmbError(f"invalid out_indices={out_indices!r}: expected stage numbers in 1..{n}")
        return EfficientNetFeatures(model, indices)
    return model
