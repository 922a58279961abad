"""The crops of the official EfficientNetV2 input pipeline (google/automl
efficientnetv2/preprocessing.py), as torchvision.transforms.v2 transforms.

Train (`preprocess_for_train`): `tf.image.sample_distorted_bounding_box(area_range=(0.05, 1),
min_object_covered=0)` with TensorFlow's defaults (aspect ratio 0.75..1.33, 100 attempts, the
whole image when all fail), then `tf.image.resize` to a square (bilinear, no antialiasing).
TensorFlow samples differently from torchvision's RandomResizedCrop: the aspect ratio is
uniform (not log-uniform) and the crop *height* is uniform between the heights of the
smallest and largest allowed areas, so small crops are more frequent than under
torchvision's uniform area (mean area at 0.05..1 on a square image about 0.42 against
0.525; on a 4:3 image, where large crops do not fit, 0.35 against 0.42). `TFRandomResizedCrop` keeps
torchvision's resize kernel and swaps in TensorFlow's sampler (`GenerateRandomCrop` in
tensorflow/core/kernels/image/sample_distorted_bounding_box_op.cc).

Eval (`preprocess_for_eval`): below 320 px a centre square of size/(size + 32) of the short
side is cropped and resized to size x size; from 320 px the whole image is resized to
size x size (squashed, not cropped). V2-S evaluates at 384: no crop at all.
"""
from __future__ import annotations

import torch
from torchvision.transforms.v2 import RandomResizedCrop, Transform
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

OFFICIAL_AREA = (0.05, 1.0)  # preprocessing.py preprocess_for_train area_range
TF_ASPECT_RATIO = (0.75, 1.33)  # sample_distorted_bounding_box's default aspect_ratio_range
TF_MAX_ATTEMPTS = 100  # and its default max_attempts
NO_CROP_FROM = 320  # preprocess_for_eval: transformations = 'crop' if image_size < 320 else ''
CROP_PADDING = 32  # ratio = image_size / (image_size + 32)


def _uniform_int(n: int) -> int:
    """TensorFlow's random->Uniform(n): an integer in [0, n)."""
    return int(torch.randint(n, ()))


def tf_generate_crop(width: int, height: int, min_area: float, max_area: float,
                     aspect_ratio: float) -> tuple[int, int, int, int] | None:
    """(top, left, crop height, crop width) as TensorFlow's `GenerateRandomCrop`, or None where it
    fails. Python's round() rounds half to even, as lrintf does."""
    min_area, max_area = min_area * width * height, max_area * width * height
    crop_h = round((min_area / aspect_ratio) ** 0.5)
    max_h = round((max_area / aspect_ratio) ** 0.5)
    if round(max_h * aspect_ratio) > width:
        max_h = int((width + 0.5 - 1e-7) / aspect_ratio)
        if round(max_h * aspect_ratio) > width:
            max_h -= 1
    max_h = min(max_h, height)
    crop_h = min(crop_h, max_h)
    if crop_h < max_h:
        crop_h += _uniform_int(max_h - crop_h + 1)
    crop_w = round(crop_h * aspect_ratio)
    area = crop_w * crop_h
    if area < min_area:  # rounding: one row more
        crop_h += 1
        crop_w = round(crop_h * aspect_ratio)
        area = crop_w * crop_h
    if area > max_area:  # rounding: one row less
        crop_h -= 1
        crop_w = round(crop_h * aspect_ratio)
        area = crop_w * crop_h
    if area < min_area or area > max_area or crop_w > width or crop_h > height or crop_w <= 0 or crop_h <= 0:
        return None
    top = _uniform_int(height - crop_h) if crop_h < height else 0
    left = _uniform_int(width - crop_w) if crop_w < width else 0
    return top, left, crop_h, crop_w


class TFRandomResizedCrop(RandomResizedCrop):
    """RandomResizedCrop with TensorFlow's `sample_distorted_bounding_box` sampling."""

    def __init__(self, size, scale=OFFICIAL_AREA, ratio=TF_ASPECT_RATIO, interpolation="bilinear",
                 antialias=False, max_attempts: int = TF_MAX_ATTEMPTS):
        super().__init__(size, scale=scale, ratio=ratio, interpolation=interpolation, antialias=antialias)
        self.max_attempts = max_attempts

    def make_params(self, flat_inputs) -> dict:
        height, width = query_size(flat_inputs)
        low, high = self.ratio
        for _ in range(self.max_attempts):
            aspect_ratio = float(torch.rand(())) * (high - low) + low
            crop = tf_generate_crop(width, height, self.scale[0], self.scale[1], aspect_ratio)
            if crop is not None:
                top, left, crop_h, crop_w = crop
                return dict(top=top, left=left, height=crop_h, width=crop_w)
        return dict(top=0, left=0, height=height, width=width)


class OfficialEvalResize(Transform):
    """`preprocess_for_eval`: centre square of size/(size + 32) of the short side below 320 px,
    the whole image from 320 px; either resized to size x size."""

    def __init__(self, size: int, interpolation="bilinear", antialias: bool = False):
        super().__init__()
        self.size, self.interpolation, self.antialias = int(size), interpolation, antialias

    def make_params(self, flat_inputs) -> dict:
        height, width = query_size(flat_inputs)
        if self.size >= NO_CROP_FROM:
            return dict(top=0, left=0, height=height, width=width)
        side = int(self.size / (self.size + CROP_PADDING) * min(height, width))
        return dict(top=(height - side) // 2, left=(width - side) // 2, height=side, width=side)

    def transform(self, inpt, params: dict):
        return self._call_kernel(F.resized_crop, inpt, **params, size=[self.size, self.size],
                                 interpolation=self.interpolation, antialias=self.antialias)
