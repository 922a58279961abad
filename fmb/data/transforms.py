"""Image decoding, per-image transforms and the batch collate, torchvision.transforms.v2 only.

The train transform and the collate are built for one set of values (image size,
RandAugment level, MixUp/CutMix alphas); progressive learning changes them by having the
datamodule build a new train loader when its stage changes.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image as PILImage
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from fmb.data.mixing import OfficialMixing
from fmb.data.official_crops import OfficialEvalResize, TFRandomResizedCrop
from fmb.data.randaugment import OfficialAutoAugment, PaperRandAugment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The official V2 pipeline scales to [-1, 1] with (x - 128) / 128 (preprocessing.py
# `preprocess_image`), which is mean = std = 128/255 on the 0..1 scale.
OFFICIAL_MEAN = OFFICIAL_STD = (128 / 255,) * 3


def preprocessing_kwargs(data) -> dict:
    """The keywords `build_train_transform`, `build_eval_transform` and `Collate` take from a
    DataConfig (data.mean, data.std, data.interpolation, data.preprocessing)."""
    return {"mean": tuple(data.mean), "std": tuple(data.std), "interpolation": data.interpolation,
            "preprocessing": data.preprocessing}


def to_rgb(image: PILImage.Image) -> PILImage.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) as 8-bit RGB.

    Transparent pixels go on white; 16-bit and 32-bit grey are scaled to 0..255 rather
    than clipped, so a 16-bit scan does not come out all white.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            array = array / 257.0
        elif array.size and (array.max() > 255 or array.min() < 0):
            low, high = array.min(), array.max()
            array = (array - low) * (255.0 / max(high - low, 1e-12))
        return PILImage.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = PILImage.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PILImage.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


JPEG_START, JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"


def _complete_jpeg(value) -> bytes | None:
    """The bytes of `value` when it is a whole JPEG (bytes or a path), else None.

    A file that does not end with the JPEG end marker is left to PIL: libjpeg fills a
    truncated file with grey and only warns, where PIL's load() raises, so a cut-off download
    stays a reported bad image."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str):
        if not value.lower().endswith((".jpg", ".jpeg")):
            return None
        with open(value, "rb") as f:
            value = f.read()
    if isinstance(value, (bytes, bytearray)) and value[:3] == JPEG_START and value.rstrip(b"\0")[-2:] == JPEG_END:
        return bytes(value)
    return None


def decode_image(value) -> PILImage.Image | torch.Tensor:
    """An RGB image from what a `datasets` Image(decode=False) column holds (bytes/path dict),
    a PIL image, or a path. Raises on unreadable data; the caller decides what that means.

    A whole JPEG is decoded by `torchvision.io.decode_jpeg` to a uint8 [3, H, W] tensor
    (1.5–1.9x the images/s per core of PIL through the train transform at 224–300 px,
    docs/benchmarks.md); anything else, or a JPEG libjpeg refuses, by PIL as an RGB PIL image. The
    transforms take either."""
    data = None if isinstance(value, PILImage.Image) else _complete_jpeg(value)
    if data is not None:
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except (ImportError, RuntimeError):
            # a torchvision without it (deprecated in 0.29 in favour of TorchCodec), or a JPEG
            # flavour it refuses: PIL decides below
            pass
    if isinstance(value, PILImage.Image):
        image = value
    elif isinstance(value, dict):
        if value.get("bytes"):
            image = PILImage.open(io.BytesIO(value["bytes"]))
        elif value.get("path"):
            image = PILImage.open(value["path"])
        else:
            raise ValueError("image entry has neither bytes nor a path")
    elif isinstance(value, (bytes, bytearray)):
        image = PILImage.open(io.BytesIO(value))
    elif isinstance(value, str):
        image = PILImage.open(value)
    else:
        raise ValueError(f"unsupported image value of type {type(value).__name__}")
    image.load()  # decode now, so a truncated file fails here and not inside a transform
    return to_rgb(image)


def image_sides(image: PILImage.Image | torch.Tensor) -> tuple[int, int]:
    """(height, width) of what `decode_image` returns."""
    return tuple(image.shape[-2:]) if isinstance(image, torch.Tensor) else (image.height, image.width)


def _tail(normalize: bool, mean, std) -> list:
    # normalize=False stops at uint8 tensors: the collate converts and normalizes the whole
    # batch at once, which is several times cheaper than doing it image by image
    if not normalize:
        return [T.ToImage()]
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))]


def normalize_batch(images: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 [B,3,H,W] → float32 scaled to 0..1 and normalized with `mean`/`std` (0..1 scale)."""
    mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return images.to(torch.float32).sub_(mean).div_(std)  # in place: one float buffer per batch


def build_train_transform(image_size: int, randaugment_magnitude: float = 0.0, normalize: bool = True,
                          crop_scale_min: float = 0.08, hflip: bool = True, *, interpolation: str = "bicubic",
                          mean=IMAGENET_MEAN, std=IMAGENET_STD, preprocessing: str = "fmb",
                          autoaugment: bool = False) -> T.Compose:
    """Random crop → flip → RandAugment(2, m) when m > 0 (or the official AutoAugment) → float
    → normalize.

    `crop_scale_min` is the smallest crop area (0.08 is ImageNet's, 0.05 the official V2 code's;
    tiny images such as digits need more of the object kept); `hflip=False` for data where
    mirroring changes the class (digits, text). `preprocessing="official"` samples the crop as
    TensorFlow does and resizes without antialiasing (fmb/data/official_crops.py); PIL inputs
    become tensors first so the resize is torchvision's, not PIL's always-antialiased one."""
    mode = InterpolationMode(interpolation)
    if preprocessing == "official":
        steps = [T.ToImage(), TFRandomResizedCrop(image_size, scale=(crop_scale_min, 1.0), interpolation=mode)]
    else:
        steps = [T.RandomResizedCrop(image_size, scale=(crop_scale_min, 1.0), interpolation=mode, antialias=True)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    if autoaugment:
        steps.append(OfficialAutoAugment())
    elif randaugment_magnitude > 0:
        steps.append(PaperRandAugment(num_ops=2, magnitude=float(randaugment_magnitude)))
    return T.Compose(steps + _tail(normalize, mean, std))


def build_eval_transform(image_size: int, crop_ratio: float = 0.875, normalize: bool = True, *,
                         interpolation: str = "bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                         preprocessing: str = "fmb") -> T.Compose:
    """fmb: resize the short side to image_size / crop_ratio, then centre-crop image_size.
    official: below 320 px a centre crop of image_size / (image_size + 32) of the short side,
    from 320 px the whole image, resized to a square without antialiasing (`crop_ratio` unused)."""
    mode = InterpolationMode(interpolation)
    if preprocessing == "official":
        return T.Compose([T.ToImage(), OfficialEvalResize(image_size, interpolation=mode)] + _tail(normalize, mean, std))
    resize = int(math.floor(image_size / crop_ratio))
    return T.Compose([T.Resize(resize, interpolation=mode, antialias=True),
                      T.CenterCrop(image_size)] + _tail(normalize, mean, std))


class Collate:
    """Stack (uint8 image, label) pairs into a float batch normalized with `mean`/`std`,
    dropping the None a skipped bad image leaves; with `mixup_alpha`/`cutmix_alpha` (train
    batches) apply MixUp or CutMix, which turns the labels into soft labels of shape
    [B, num_classes]: torchvision's, one of them per batch with one λ, or with
    `preprocessing="official"` the official half/half split with a λ per image
    (fmb/data/mixing.py)."""

    def __init__(self, num_classes: int, image_size: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, *,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, preprocessing: str = "fmb", interpolation: str | None = None):
        # interpolation is accepted (and unused) so one preprocessing_kwargs() dict serves every builder
        self.image_size, self.mean, self.std = image_size, tuple(mean), tuple(std)
        if preprocessing == "official" and (mixup_alpha > 0 or cutmix_alpha > 0):
            self.mixer = OfficialMixing(num_classes, mixup_alpha, cutmix_alpha)
            return
        choices = []
        if mixup_alpha > 0:
            choices.append(T.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            choices.append(T.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mixer = None if not choices else choices[0] if len(choices) == 1 else T.RandomChoice(choices)

    def __call__(self, batch):
        batch = [item for item in batch if item is not None]
        if not batch:
            return torch.empty(0, 3, self.image_size, self.image_size), torch.empty(0, dtype=torch.int64)
        images = torch.stack([image for image, _ in batch])
        if images.dtype == torch.uint8:
            images = normalize_batch(images, self.mean, self.std)
        labels = torch.as_tensor([label for _, label in batch], dtype=torch.int64)
        if self.mixer is not None:
            images, labels = self.mixer(images, labels)
        return images, labels
