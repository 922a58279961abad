"""Transforms and collate: any image mode to RGB, sizes, normalization, MixUp/CutMix."""
import numpy as np
import pytest
import torch
from PIL import Image

from fmb.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, AugmentState, Collate, StateTransform,
                                 build_eval_transform, build_train_transform, decode_image, to_rgb)
from fmb.errors import FmbError


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


def test_state_transform_follows_state_changes():
    state = AugmentState(16, 12)
    train, evaluate = StateTransform(state, train=True), StateTransform(state, train=False)
    image = Image.new("RGB", (20, 20))
    assert train(image).shape[-1] == 16 and evaluate(image).shape[-1] == 12
    state.update(image_size=8, randaugment_magnitude=5)
    assert train(image).shape[-1] == 8 and evaluate(image).shape[-1] == 12


def test_state_rejects_bad_values():
    state = AugmentState(16, 16)
    with pytest.raises(FmbError, match="randaugment_magnitude"):
        state.update(randaugment_magnitude=31)
    with pytest.raises(FmbError, match="mixup_alpha"):
        state.update(mixup_alpha=-1)
    with pytest.raises(FmbError, match="image_size"):
        state.update(image_size=0)


def _batch(n=4, size=8):
    return [(torch.rand(3, size, size), i % 3) for i in range(n)]


def test_collate_without_mixing_gives_int_labels_and_drops_skipped():
    images, labels = Collate(AugmentState(8, 8), num_classes=3, mix=True)(_batch() + [None])
    assert images.shape == (4, 3, 8, 8) and labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 0]


@pytest.mark.parametrize("mixup,cutmix", [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_collate_mixing_gives_soft_labels(mixup, cutmix):
    torch.manual_seed(0)
    collate = Collate(AugmentState(8, 8, mixup_alpha=mixup, cutmix_alpha=cutmix), num_classes=3, mix=True)
    images, targets = collate(_batch())
    assert images.shape == (4, 3, 8, 8)
    assert targets.shape == (4, 3) and targets.dtype == torch.float32
    assert torch.allclose(targets.sum(1), torch.ones(4))


def test_eval_collate_never_mixes():
    collate = Collate(AugmentState(8, 8, mixup_alpha=1.0), num_classes=3, mix=False)
    assert collate(_batch())[1].dtype == torch.int64
