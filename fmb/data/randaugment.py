"""RandAugment on the official EfficientNetV2 scale (google/automl efficientnetv2/autoaugment.py).

torchvision's RandAugment spreads each op's range over 31 bins, so magnitude m means m/30 of
the range; the official code (and timm) mean level/10 of it. At the paper's magnitude 15
torchvision rotates up to 15 degrees where the official code rotates 45. `PaperRandAugment`
keeps torchvision's sampling and op kernels and swaps in the official level-to-argument maps.

Ops and arguments at level L (all from `level_to_arg` and `distort_image_with_randaugment`):
  Rotate        +-30 * L/10 degrees            ShearX/Y      +-0.3 * L/10 (shear factor)
  TranslateX/Y  +-100 * L/10 pixels (absolute, translate_const=100, not relative to size)
  Color, Contrast, Brightness, Sharpness: factor 1.8 * L/10 + 0.1 (unsigned: L=5 is identity)
  Posterize     keep int(4 * L/10) bits        Solarize      threshold int(256 * L/10)
  SolarizeAdd   +int(110 * L/10) below 128     Cutout        square of side 2 * int(40 * L/10)
  AutoContrast, Equalize, Invert: no argument
The official code's quirks are kept: Posterize keeps *fewer* bits at low levels (black at
L < 2.5) and Solarize is weaker as L grows (a no-op from L 10). Each of the two ops per image
is drawn uniformly from these 16 and always applied (no Identity op); fill is grey 128 as
in the official code. Inputs are PIL images or uint8 tensors, where levels are in 0..255 units.
"""
from __future__ import annotations

import torch
from torchvision.transforms.v2 import RandAugment
from torchvision.transforms.v2 import functional as F

MAX_LEVEL = 10.0  # official _MAX_LEVEL: level / 10 of each op's range at level 10


def _levels(scale: float, offset: float = 0.0, as_int: bool = False):
    """Magnitude table indexed by level (0..num_bins-1): offset + scale * level / 10."""
    def table(num_bins, height, width):
        values = offset + scale * torch.arange(num_bins, dtype=torch.float64) / MAX_LEVEL
        return values.int() if as_int else values
    return table


class PaperRandAugment(RandAugment):
    """RandAugment whose `magnitude` is the official level (typically 5..15, at most 30)."""

    _AUGMENTATION_SPACE = {
        "AutoContrast": (lambda num_bins, height, width: None, False),
        "Equalize": (lambda num_bins, height, width: None, False),
        "Invert": (lambda num_bins, height, width: None, False),
        "Rotate": (_levels(30.0), True),
        "Posterize": (_levels(4.0, as_int=True), False),
        "Solarize": (_levels(256.0, as_int=True), False),
        # torchvision adds 1 to the enhance magnitude: 1 + (1.8 L/10 - 0.9) = 1.8 L/10 + 0.1
        "Color": (_levels(1.8, -0.9), False),
        "Contrast": (_levels(1.8, -0.9), False),
        "Brightness": (_levels(1.8, -0.9), False),
        "Sharpness": (_levels(1.8, -0.9), False),
        "ShearX": (_levels(0.3), True),
        "ShearY": (_levels(0.3), True),
        "TranslateX": (_levels(100.0), True),
        "TranslateY": (_levels(100.0), True),
        "Cutout": (_levels(40.0, as_int=True), False),
        "SolarizeAdd": (_levels(110.0, as_int=True), False),
    }

    def __init__(self, num_ops: int = 2, magnitude: int = 10, num_magnitude_bins: int = 31,
                 interpolation="nearest", fill=128):
        if not isinstance(magnitude, int) or not 0 <= magnitude < num_magnitude_bins:
            raise ValueError(f"magnitude must be an integer level in 0..{num_magnitude_bins - 1}, got {magnitude}")
        super().__init__(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=num_magnitude_bins,
                         interpolation=interpolation, fill=fill)

    def _apply_image_or_video_transform(self, image, transform_id, magnitude, interpolation, fill):
        if transform_id == "Posterize" and magnitude >= 8:  # keeping 8 or more bits keeps the image
            return image
        if transform_id == "Solarize":  # threshold in pixel units; above 255 nothing is inverted
            return image if magnitude > 255 else F.solarize(image, threshold=int(magnitude))
        if transform_id in _OWN_OPS or (transform_id == "Posterize" and magnitude < 1):  # PIL: 1..8 bits only
            is_pil = not isinstance(image, torch.Tensor)
            pixels = F.pil_to_tensor(image) if is_pil else image
            pixels = _OWN_OPS.get(transform_id, _black)(pixels, int(magnitude))
            return F.to_pil_image(pixels) if is_pil else pixels
        return super()._apply_image_or_video_transform(image, transform_id, magnitude, interpolation, fill)


def _cutout(image: torch.Tensor, pad: int) -> torch.Tensor:
    """Official cutout: a grey (128) square of side 2*pad at a uniform centre, clipped at the edges."""
    height, width = image.shape[-2:]
    cy, cx = int(torch.randint(height, ())), int(torch.randint(width, ()))
    out = image.clone()
    out[..., max(0, cy - pad):cy + pad, max(0, cx - pad):cx + pad] = 128
    return out


def _solarize_add(image: torch.Tensor, addition: int, threshold: int = 128) -> torch.Tensor:
    """Official solarize_add: add `addition` (clipped to 0..255) to pixels below `threshold`."""
    added = (image.to(torch.int16) + addition).clamp(0, 255).to(image.dtype)
    return torch.where(image < threshold, added, image)


def _black(image: torch.Tensor, _bits: int) -> torch.Tensor:
    """Official posterize keeping 0 bits (level < 2.5): every pixel becomes 0."""
    return torch.zeros_like(image)


_OWN_OPS = {"Cutout": _cutout, "SolarizeAdd": _solarize_add}  # not in torchvision's RandAugment
