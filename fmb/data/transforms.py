"""Image transforms and the batch collate, torchvision.transforms.v2 only.

The knobs progressive learning turns between epochs (train image size, RandAugment
magnitude, MixUp/CutMix alphas) live in an ``AugmentState``: a few numbers in shared
memory. Loader workers hold the same storage, and every transform and collate rebuilds its
torchvision pipeline when the state's version changes, so a change made in the main
process reaches running workers (persistent or not) without rebuilding the dataset.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.utils.data
from PIL import Image as PILImage
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from fmb.errors import FmbError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_RANDAUGMENT_MAGNITUDE = 30  # RandAugment's default 31 magnitude bins: 0..30
MAX_SKIP_SLOTS = 65  # slot 0: the main process, slot 1 + k: loader worker k

_FIELDS = ("version", "image_size", "eval_image_size", "randaugment_magnitude",
           "mixup_alpha", "cutmix_alpha", "epoch")


def check_augmentation(image_size=None, eval_image_size=None, randaugment_magnitude=None,
                       mixup_alpha=None, cutmix_alpha=None, crop_ratio=None) -> None:
    """Raise FmbError for a value no transform can use."""
    for name, value in (("data.image_size", image_size), ("data.eval_image_size", eval_image_size)):
        if value is not None and (int(value) != value or value < 1):
            raise FmbError(f"{name}={value} is not a positive whole number of pixels; expected e.g. 224")
    if randaugment_magnitude is not None and not 0 <= randaugment_magnitude <= MAX_RANDAUGMENT_MAGNITUDE:
        raise FmbError(f"aug.randaugment_magnitude={randaugment_magnitude} is out of range; expected 0 "
                       f"(off) to {MAX_RANDAUGMENT_MAGNITUDE}, e.g. 9")
    for name, value in (("aug.mixup_alpha", mixup_alpha), ("aug.cutmix_alpha", cutmix_alpha)):
        if value is not None and value < 0:
            raise FmbError(f"{name}={value} is negative; expected 0 (off) or a positive alpha, e.g. 0.2")
    if crop_ratio is not None and not 0 < crop_ratio <= 1:
        raise FmbError(f"data.crop_ratio={crop_ratio} is outside (0, 1]; expected e.g. 0.875")


class AugmentState:
    """Augmentation settings shared between the main process and loader workers.

    Backed by a shared-memory tensor: with fork the workers inherit the storage, with spawn
    torch's pickler hands over a handle to it, so both see the main process's writes.
    """

    def __init__(self, image_size: int, eval_image_size: int, randaugment_magnitude: float = 0.0,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        check_augmentation(image_size, eval_image_size, randaugment_magnitude, mixup_alpha, cutmix_alpha)
        self._values = torch.zeros(len(_FIELDS), dtype=torch.float64).share_memory_()
        # bad images skipped, one slot per process so workers never race on a counter
        self.skipped = torch.zeros(MAX_SKIP_SLOTS, dtype=torch.int64).share_memory_()
        self.update(image_size=image_size, eval_image_size=eval_image_size,
                    randaugment_magnitude=randaugment_magnitude, mixup_alpha=mixup_alpha,
                    cutmix_alpha=cutmix_alpha)

    def update(self, **values) -> None:
        """Set the given fields (None leaves a field as it is) and bump the version."""
        check_augmentation(**{k: v for k, v in values.items() if k != "epoch"})
        for name, value in values.items():
            if value is not None:
                self._values[_FIELDS.index(name)] = float(value)
        self._values[0] += 1

    def get(self, name: str) -> float:
        return float(self._values[_FIELDS.index(name)])

    @property
    def version(self) -> int:
        return int(self._values[0])

    @property
    def image_size(self) -> int:
        return int(self.get("image_size"))

    @property
    def eval_image_size(self) -> int:
        return int(self.get("eval_image_size"))

    @property
    def epoch(self) -> int:
        return int(self.get("epoch"))

    def count_skipped(self) -> None:
        info = torch.utils.data.get_worker_info()
        slot = 0 if info is None else 1 + info.id % (MAX_SKIP_SLOTS - 1)
        self.skipped[slot] += 1

    def total_skipped(self) -> int:
        return int(self.skipped.sum())


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


def decode_image(value) -> PILImage.Image:
    """A PIL image from what a `datasets` Image(decode=False) column holds (bytes/path dict),
    a PIL image, or a path. Raises on unreadable data; the caller decides what that means."""
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


def _tail(normalize: bool) -> list:
    # normalize=False stops at uint8 tensors: the collate converts and normalizes the whole
    # batch at once, which is several times cheaper than doing it image by image
    if not normalize:
        return [T.ToImage()]
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] → float32 scaled to 0..1 and normalized with the ImageNet statistics."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return images.to(torch.float32).sub_(mean).div_(std)  # in place: one float buffer per batch


def build_train_transform(image_size: int, randaugment_magnitude: float = 0.0, normalize: bool = True,
                          crop_scale_min: float = 0.08, hflip: bool = True) -> T.Compose:
    """RandomResizedCrop → flip → RandAugment(2, m) when m > 0 → float → ImageNet normalize.

    `crop_scale_min` is the smallest crop area (0.08 is ImageNet's; tiny images such as
    digits need more of the object kept); `hflip=False` for data where mirroring changes
    the class (digits, text)."""
    steps = [T.RandomResizedCrop(image_size, scale=(crop_scale_min, 1.0), interpolation=InterpolationMode.BICUBIC,
                                 antialias=True)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    if randaugment_magnitude > 0:
        steps.append(T.RandAugment(num_ops=2, magnitude=int(round(randaugment_magnitude))))
    return T.Compose(steps + _tail(normalize))


def build_eval_transform(image_size: int, crop_ratio: float = 0.875, normalize: bool = True) -> T.Compose:
    """Resize the short side to image_size / crop_ratio, then center-crop image_size."""
    resize = int(math.floor(image_size / crop_ratio))
    return T.Compose([T.Resize(resize, interpolation=InterpolationMode.BICUBIC, antialias=True),
                      T.CenterCrop(image_size)] + _tail(normalize))


class StateTransform:
    """Per-image transform that follows an AugmentState (rebuilt when its version changes).
    It yields uint8 tensors; `Collate` normalizes the batch."""

    def __init__(self, state: AugmentState, train: bool, crop_ratio: float = 0.875, crop_scale_min: float = 0.08,
                 hflip: bool = True):
        self.state, self.train, self.crop_ratio = state, train, crop_ratio
        self.crop_scale_min, self.hflip = crop_scale_min, hflip
        self._version, self._transform = -1, None

    def current(self) -> T.Compose:
        version = self.state.version
        if version != self._version:
            if self.train:
                self._transform = build_train_transform(self.state.image_size,
                                                        self.state.get("randaugment_magnitude"), normalize=False,
                                                        crop_scale_min=self.crop_scale_min, hflip=self.hflip)
            else:
                self._transform = build_eval_transform(self.state.eval_image_size, self.crop_ratio, normalize=False)
            self._version = version
        return self._transform

    def __call__(self, image: PILImage.Image) -> torch.Tensor:
        return self.current()(image)

    def __getstate__(self):  # workers rebuild the pipeline from the shared state
        return {**self.__dict__, "_version": -1, "_transform": None}


class Collate:
    """Stack (image, label) pairs, convert uint8 images to normalized float32, dropping the None a skipped bad image leaves; on train
    batches apply MixUp / CutMix (one of them, chosen at random, when both are on), which
    turns the int64 labels into float soft labels of shape [B, num_classes]."""

    def __init__(self, state: AugmentState, num_classes: int, mix: bool):
        self.state, self.num_classes, self.mix = state, num_classes, mix
        self._version, self._mixer = -1, None

    def mixer(self):
        version = self.state.version
        if version != self._version:
            mixup, cutmix = self.state.get("mixup_alpha"), self.state.get("cutmix_alpha")
            choices = []
            if mixup > 0:
                choices.append(T.MixUp(alpha=mixup, num_classes=self.num_classes))
            if cutmix > 0:
                choices.append(T.CutMix(alpha=cutmix, num_classes=self.num_classes))
            self._mixer = None if not choices else choices[0] if len(choices) == 1 else T.RandomChoice(choices)
            self._version = version
        return self._mixer

    def __call__(self, batch):
        batch = [item for item in batch if item is not None]
        if not batch:
            size = self.state.image_size if self.mix else self.state.eval_image_size
            return torch.empty(0, 3, size, size), torch.empty(0, dtype=torch.int64)
        images = torch.stack([image for image, _ in batch])
        if images.dtype == torch.uint8:
            images = normalize_batch(images)
        labels = torch.as_tensor([label for _, label in batch], dtype=torch.int64)
        mixer = self.mixer() if self.mix else None
        if mixer is not None:
            images, labels = mixer(images, labels)
        return images, labels

    def __getstate__(self):
        return {**self.__dict__, "_version": -1, "_mixer": None}
