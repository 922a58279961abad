"""Published ImageNet weights that fit fmb's variants, and the preprocessing each was trained for.

Plain data, no torch import: `fmb models --pretrained` prints it at once, and
`model.pretrained=true` takes each variant's first entry. The values are those of the
sources' own records (timm's `pretrained_cfg`, torchvision's `Weights.transforms`); a Hub
repo's config.json, where it is cached, is read in preference (fmb/models/pretrained.py).

Defaults: the original authors' TensorFlow-trained weights in timm's port (padding "same"),
pretrained on ImageNet-21k and fine-tuned on 1k where they exist (V2-S/M/L/XL, B3), Noisy
Student (JFT + ImageNet) for V1, ImageNet-1k for V2-B0..B2.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # scales pixels to [-1, 1], as the official TF code


@dataclass(frozen=True)
class Published:
    spec: str  # the model.pretrained value
    variant: str  # the fmb variant it fits
    trained_on: str
    train_size: int
    eval_size: int
    crop_ratio: float  # eval centre crop (size / resize)
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def padding(self) -> str:
        # timm's tf_* ports are TensorFlow-trained: they need TF "same" padding
        return "same" if self.spec.startswith("hf-hub:timm/tf_") else "symmetric"

    @property
    def origin(self) -> str:
        if self.spec.startswith("torchvision:"):
            return "torchvision"
        return "timm-tf" if self.padding == "same" else "timm"


_DATA = {"in1k": "ImageNet-1k", "in21k": "ImageNet-21k", "in21k_ft_in1k": "ImageNet-21k, fine-tuned on 1k",
         "ns_jft_in1k": "JFT-300M + ImageNet-1k (Noisy Student)", "ap_in1k": "ImageNet-1k (AdvProp)",
         "aa_in1k": "ImageNet-1k (AutoAugment)", "ra_in1k": "ImageNet-1k (RandAugment)",
         "ra2_in1k": "ImageNet-1k (RandAugment, timm)", "ft_in1k": "ImageNet-1k (timm)",
         "sw_in12k_ft_in1k": "ImageNet-12k, fine-tuned on 1k (timm)",
         "IMAGENET1K_V1": "ImageNet-1k (torchvision)", "IMAGENET1K_V2": "ImageNet-1k (torchvision, new recipe)"}


def _timm(arch: str, tag: str, variant: str, train: int, eval_: int, crop: float, norm=IMAGENET) -> Published:
    return Published(f"hf-hub:timm/{arch}.{tag}", variant, _DATA[tag], train, eval_, crop, "bicubic", *norm)


def _tv(enum: str, tag: str, variant: str, train: int, crop: int, resize: int, interp: str, norm=IMAGENET):
    return Published(f"torchvision:{enum}.{tag}", variant, _DATA[tag], train, crop, crop / resize, interp, *norm)


def _v2(size: str, train: int, eval_: int, tv_enum: str | None, tv_interp="bilinear", tv_norm=IMAGENET):
    v, arch = f"efficientnetv2_{size}", f"tf_efficientnetv2_{size}"
    rows = [_timm(arch, "in21k_ft_in1k", v, train, eval_, 1.0, INCEPTION)]
    if size != "xl":
        rows.append(_timm(arch, "in1k", v, train, eval_, 1.0, INCEPTION))
    if tv_enum:
        rows.append(_tv(tv_enum, "IMAGENET1K_V1", v, train, eval_, eval_, tv_interp, tv_norm))
    return rows + [_timm(arch, "in21k", v, train, eval_, 1.0, INCEPTION)]


def _v2_base(n: int, train: int, eval_: int, crop: float) -> list[Published]:
    v, arch = f"efficientnetv2_b{n}", f"tf_efficientnetv2_b{n}"
    rows = [_timm(arch, "in1k", v, train, eval_, crop)]
    if n == 3:  # the only B-series V2 with ImageNet-21k weights: they lead
        rows = [_timm(arch, "in21k_ft_in1k", v, train, eval_, 0.9, INCEPTION), *rows,
                _timm(arch, "in21k", v, train, eval_, crop, INCEPTION)]
    return rows


# (size, crop of timm's tf_ ports, torchvision (crop, resize, interpolation), timm's own (tag, train, eval, crop))
_V1 = {
    0: (224, 0.875, (224, 256, "bicubic"), ("ra_in1k", 224, 224, 0.875)),
    1: (240, 0.882, (240, 256, "bicubic"), ("ft_in1k", 224, 256, 1.0)),
    2: (260, 0.89, (288, 288, "bicubic"), ("ra_in1k", 256, 288, 1.0)),
    3: (300, 0.904, (300, 320, "bicubic"), ("ra2_in1k", 288, 320, 1.0)),
    4: (380, 0.922, (380, 384, "bicubic"), ("ra2_in1k", 320, 384, 1.0)),
    5: (456, 0.934, (456, 456, "bicubic"), ("sw_in12k_ft_in1k", 448, 448, 1.0)),
    6: (528, 0.942, (528, 528, "bicubic"), None),
    7: (600, 0.949, (600, 600, "bicubic"), None),
}


def _v1(n: int) -> list[Published]:
    size, crop, (tv_crop, tv_resize, tv_interp), own = _V1[n]
    v, arch = f"efficientnet_b{n}", f"tf_efficientnet_b{n}"
    tags = ["ns_jft_in1k"] + (["in1k"] if n <= 5 else []) + ["ap_in1k", "aa_in1k"]
    rows = [_timm(arch, t, v, size, size, crop, INCEPTION if t == "ap_in1k" else IMAGENET) for t in tags]
    if own:
        tag, train, eval_, own_crop = own
        rows.append(_timm(v, tag, v, train, eval_, own_crop))
    rows.append(_tv(f"EfficientNet_B{n}_Weights", "IMAGENET1K_V1", v, size, tv_crop, tv_resize, tv_interp))
    if n == 1:
        rows.append(_tv("EfficientNet_B1_Weights", "IMAGENET1K_V2", v, size, 240, 255, "bilinear"))
    return rows


PUBLISHED: dict[str, list[Published]] = {
    "efficientnetv2_s": _v2("s", 300, 384, "EfficientNet_V2_S_Weights"),
    "efficientnetv2_m": _v2("m", 384, 480, "EfficientNet_V2_M_Weights"),
    "efficientnetv2_l": _v2("l", 384, 480, "EfficientNet_V2_L_Weights", "bicubic", INCEPTION),
    "efficientnetv2_xl": _v2("xl", 384, 512, None),
    "efficientnetv2_b0": _v2_base(0, 192, 224, 0.875),
    "efficientnetv2_b1": _v2_base(1, 192, 240, 0.882),
    "efficientnetv2_b2": _v2_base(2, 208, 260, 0.89),
    "efficientnetv2_b3": _v2_base(3, 240, 300, 0.904),
    **{f"efficientnet_b{n}": _v1(n) for n in range(8)},
}


def default_weights(variant: str) -> Published:
    """What `pretrained=True` loads for `variant`."""
    from fmb.models.specs import get_variant

    return PUBLISHED[get_variant(variant).name][0]


def find_published(spec: str) -> Published | None:
    """The table's record of `spec` (a Hub revision suffix `@...` ignored), or None."""
    bare = spec.split("@", 1)[0]
    return next((p for rows in PUBLISHED.values() for p in rows if p.spec == bare), None)


def all_specs() -> list[str]:
    return [p.spec for rows in PUBLISHED.values() for p in rows]
