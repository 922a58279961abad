"""Transforms and collate: any image mode to RGB, sizes, normalization, MixUp/CutMix."""
import numpy as np
import pytest
import torch
from PIL import Image

from fmb.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, Collate, build_eval_transform, build_train_transform,
                                 decode_image, to_rgb)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "RGB"])
def test_every_mode_becomes_rgb(mode):
    image = to_rgb(Image.new(mode, (5, 3)))
    assert image.mode == "RGB" and image.size == (5, 3)


def test_sixteen_bit_grey_is_scaled_not_clipped():
    array = np.full((4, 4), 32768, dtype=np.uint16)  # mid grey in 16 bits
    rgb = np.asarray(to_rgb(Image.fromarray(array).convert("I;16")))
    assert 120 <= rgb.mean() <= 135


def test_transparent_pixels_go_on_white():
    rgb = np.asarray(to_rgb(Image.new("RGBA", (2, 2), (0, 0, 0, 0))))
    assert (rgb == 255).all()


def test_corrupt_bytes_raise():
    with pytest.raises(Exception):
        decode_image({"bytes": b"not an image", "path": None})


def test_small_images_are_upscaled_to_the_crop():
    tiny = Image.new("RGB", (3, 2), (10, 200, 30))
    assert build_train_transform(24, randaugment_magnitude=9)(tiny).shape == (3, 24, 24)
    assert build_eval_transform(24, crop_ratio=0.875)(tiny).shape == (3, 24, 24)


def test_eval_transform_normalizes_with_imagenet_statistics():
    grey = Image.new("RGB", (16, 16), (128, 128, 128))
    out = build_eval_transform(8, crop_ratio=1.0)(grey)
    assert out.dtype == torch.float32
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out[:, 4, 4], expected, atol=1e-4)


def test_uint8_transforms_leave_normalizing_to_the_collate():
    image = Image.new("RGB", (20, 20), (128, 128, 128))
    out = build_train_transform(16, randaugment_magnitude=5, normalize=False)(image)
    assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
    images, _ = Collate(num_classes=3, image_size=16)([(out, 0)])
    assert images.dtype == torch.float32 and images.shape == (1, 3, 16, 16)


def _batch(n=4, size=8):
    return [(torch.rand(3, size, size), i % 3) for i in range(n)]


def test_collate_without_mixing_gives_int_labels_and_drops_skipped():
    images, labels = Collate(num_classes=3, image_size=8)(_batch() + [None])
    assert images.shape == (4, 3, 8, 8) and labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize("mixup,cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_collate_mixing_gives_soft_labels(mixup, cutmix):
    torch.manual_seed(0)
    collate = Collate(num_classes=3, image_size=8, mixup_alpha=mixup, cutmix_alpha=cutmix)
    images, targets = collate(_batch())
    assert images.shape == (4, 3, 8, 8)
    assert targets.shape == (4, 3) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_collate_of_only_skipped_images_is_an_empty_batch():
    images, labels = Collate(num_classes=3, image_size=8)([None, None])
    assert images.shape == (0, 3, 8, 8) and labels.shape == (0,)
