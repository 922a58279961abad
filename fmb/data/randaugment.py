"""RandAugment and AutoAugment on the official EfficientNet scale (google/automl
efficientnetv2/autoaugment.py).

torchvision's RandAugment spreads each op's range over 31 bins, so magnitude m means m/30 of
the range; the official code (and timm) mean level/10 of it. At the paper's magnitude 15
torchvision rotates up to 15 degrees where the official code rotates 45. Both classes here
keep torchvision's op kernels and swap in the official level-to-argument maps.

Ops and arguments at level L (all from `level_to_arg` and `distort_image_with_randaugment`):
  Rotate        +-30 * L/10 degrees            ShearX/Y      +-0.3 * L/10 (shear factor)
  TranslateX/Y  +-translate_const * L/10 pixels (absolute: 100 for RandAugment, 250 for AutoAugment)
  Color, Contrast, Brightness, Sharpness: factor 1.8 * L/10 + 0.1 (unsigned: L=5 is identity)
  Posterize     keep int(4 * L/10) bits        Solarize      threshold int(256 * L/10)
  SolarizeAdd   +int(110 * L/10) below 128     Cutout        square of side 2 * int(cutout_const * L/10)
  AutoContrast, Equalize, Invert: no argument
The level is a float: `distort_image_with_randaugment` takes `float(magnitude)`, and the
official progressive schedule hands it np.linspace(5, ram, stages) (6.67, 8.33, ...), so a
fractional level scales every op continuously (only the int() ops above truncate).
The official code's quirks are kept: Posterize keeps *fewer* bits at low levels (black at
L < 2.5) and Solarize is weaker as L grows (a no-op from L 10). Fill is grey 128 as in the
official code. Inputs are PIL images or uint8 tensors, where levels are in 0..255 units.
"""
from __future__ import annotations

import torch
from torchvision.transforms.v2 import AutoAugment, AutoAugmentPolicy, RandAugment
from torchvision.transforms.v2 import functional as F

MAX_LEVEL = 10.0  # official _MAX_LEVEL: level / 10 of each op's range at level 10


def _arg(scale: float, offset: float = 0.0, as_int: bool = False):
    """The official argument at a (float) level: offset + scale * level / 10, int() where the official
    code truncates."""
    def at(level: float) -> float:
        value = offset + scale * level / MAX_LEVEL
        return float(int(value)) if as_int else value
    return at


def official_space(translate_const: float, cutout_const: float) -> dict:
    """{op: (argument at a level or None, signed)}: `level_to_arg` with the given constants."""
    return {
        "AutoContrast": (None, False), "Equalize": (None, False), "Invert": (None, False),
        "Rotate": (_arg(30.0), True),
        "Posterize": (_arg(4.0, as_int=True), False),
        "Solarize": (_arg(256.0, as_int=True), False),
        # torchvision adds 1 to the enhance magnitude: 1 + (1.8 L/10 - 0.9) = 1.8 L/10 + 0.1
        "Color": (_arg(1.8, -0.9), False), "Contrast": (_arg(1.8, -0.9), False),
        "Brightness": (_arg(1.8, -0.9), False), "Sharpness": (_arg(1.8, -0.9), False),
        "ShearX": (_arg(0.3), True), "ShearY": (_arg(0.3), True),
        "TranslateX": (_arg(translate_const), True), "TranslateY": (_arg(translate_const), True),
        "Cutout": (_arg(cutout_const, as_int=True), False),
        "SolarizeAdd": (_arg(110.0, as_int=True), False),
    }


class _OfficialOps:
    """The official op semantics on top of torchvision's kernels, for a level-keyed space."""

    _AUGMENTATION_SPACE: dict

    def op_argument(self, op: str, level: float) -> float:
        """The unsigned argument `op` gets at `level` (0.0 for ops without one)."""
        at, _ = self._AUGMENTATION_SPACE[op]
        return 0.0 if at is None else at(level)

    def _apply_op(self, image, op: str, level: float):
        magnitude = self.op_argument(op, level)
        if self._AUGMENTATION_SPACE[op][1] and torch.rand(()) <= 0.5:  # official _randomly_negate_tensor
            magnitude = -magnitude
        return self._apply_image_or_video_transform(image, op, magnitude, interpolation=self.interpolation,
                                                    fill=self._fill)

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


class PaperRandAugment(_OfficialOps, RandAugment):
    """RandAugment whose `magnitude` is the official level (typically 5..15, at most 30; fractional
    levels are kept). Each of the `num_ops` ops is drawn uniformly from the 16 official ones and
    always applied (no Identity op), as `distort_image_with_randaugment` does."""

    _AUGMENTATION_SPACE = official_space(translate_const=100.0, cutout_const=40.0)

    def __init__(self, num_ops: int = 2, magnitude: float = 10.0, interpolation="nearest", fill=128):
        if isinstance(magnitude, bool) or not isinstance(magnitude, (int, float)) or not 0 <= magnitude <= 30:
            raise ValueError(f"magnitude must be an official level in 0..30, got {magnitude!r}")
        super().__init__(num_ops=num_ops, magnitude=0, interpolation=interpolation, fill=fill)
        self.magnitude = float(magnitude)  # torchvision's bin index, replaced by the level itself

    def forward(self, *inputs):
        flat_inputs, image = self._flatten_and_extract_image_or_video(inputs)
        for _ in range(self.num_ops):
            op, _ = self._get_random_item(self._AUGMENTATION_SPACE)
            image = self._apply_op(image, op, self.magnitude)
        return self._unflatten_and_insert_image_or_video(flat_inputs, image)


# autoaugment.py `policy_v0` (the policy `distort_image_with_autoaugment(image, 'v0')` applies;
# the V1-style configs' augname 'autoaug'): 25 sub-policies of (op, probability, level).
POLICY_V0 = [
    [("Equalize", 0.8, 1), ("ShearY", 0.8, 4)], [("Color", 0.4, 9), ("Equalize", 0.6, 3)],
    [("Color", 0.4, 1), ("Rotate", 0.6, 8)], [("Solarize", 0.8, 3), ("Equalize", 0.4, 7)],
    [("Solarize", 0.4, 2), ("Solarize", 0.6, 2)], [("Color", 0.2, 0), ("Equalize", 0.8, 8)],
    [("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)], [("ShearX", 0.2, 9), ("Rotate", 0.6, 8)],
    [("Color", 0.6, 1), ("Equalize", 1.0, 2)], [("Invert", 0.4, 9), ("Rotate", 0.6, 0)],
    [("Equalize", 1.0, 9), ("ShearY", 0.6, 3)], [("Color", 0.4, 7), ("Equalize", 0.6, 0)],
    [("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)], [("Solarize", 0.6, 8), ("Color", 0.6, 9)],
    [("Solarize", 0.2, 4), ("Rotate", 0.8, 9)], [("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)],
    [("ShearX", 0.0, 0), ("Solarize", 0.8, 4)], [("ShearY", 0.8, 0), ("Color", 0.6, 4)],
    [("Color", 1.0, 0), ("Rotate", 0.6, 2)], [("Equalize", 0.8, 4), ("Equalize", 0.0, 8)],
    [("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)], [("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)],
    [("Posterize", 0.8, 2), ("Solarize", 0.6, 10)], [("Solarize", 0.6, 8), ("Equalize", 0.6, 1)],
    [("Color", 0.8, 6), ("Rotate", 0.4, 5)],
]


class OfficialAutoAugment(_OfficialOps, AutoAugment):
    """AutoAugment as the official V1-style configs apply it (EfficientNetV2-B0..B3 and V1):
    policy v0 with the official level maps (translate 250 px and cutout 100 at level 10).

    torchvision's AutoAugment(IMAGENET) is another policy (the AutoAugment paper's ImageNet
    one: Posterize/Rotate first, no SolarizeAdd) on another scale (level 9 = the op's maximum,
    translate relative to the image), so only its kernels and sampling are used here: one
    sub-policy drawn uniformly, each op applied with its probability."""

    _AUGMENTATION_SPACE = official_space(translate_const=250.0, cutout_const=100.0)

    def __init__(self, interpolation="nearest", fill=128):
        super().__init__(policy=AutoAugmentPolicy.IMAGENET, interpolation=interpolation, fill=fill)
        self._policies = POLICY_V0

    def forward(self, *inputs):
        flat_inputs, image = self._flatten_and_extract_image_or_video(inputs)
        for op, probability, level in self._policies[int(torch.randint(len(self._policies), ()))]:
            if torch.rand(()) < probability:  # official: floor(uniform + prob), applied with probability prob
                image = self._apply_op(image, op, level)
        return self._unflatten_and_insert_image_or_video(flat_inputs, image)


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
