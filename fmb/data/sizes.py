"""Train and eval image sizes: explicit ones win; otherwise the variant's, capped for small images."""
from __future__ import annotations

from fmb.errors import FmbError

UPSCALE_LIMIT = 4  # upscaling small images further adds compute, not information


def _round8(x: float) -> int:
    return max(16, int(round(x / 8)) * 8)


def resolve_image_sizes(image_size: int | None, eval_image_size: int | None,
                        variant_sizes: tuple[int, int] | None, native) -> tuple[int, int]:
    """(train, eval) px. `variant_sizes` is the model's (train, eval) pair; `native` a callable
    giving the data's typical short side (measured only when it is needed).

    The eval size keeps the variant's train/eval ratio (V2-S: 300 → 384), as the paper
    evaluates at a larger size than it trains.
    """
    if variant_sizes is None and (image_size is None or eval_image_size is None):
        raise FmbError("data.image_size and data.eval_image_size are null and no model sizes were given; "
                       "expected both sizes set, e.g. data.image_size=224 data.eval_image_size=224")
    train = image_size
    if train is None:
        train = variant_sizes[0]
        small = native()
        if small:
            train = min(train, _round8(max(32, small * UPSCALE_LIMIT)))
    evaluate = eval_image_size
    if evaluate is None:
        v_train, v_eval = variant_sizes
        evaluate = v_eval if train == v_train else _round8(train * v_eval / v_train)
    return int(train), int(evaluate)
