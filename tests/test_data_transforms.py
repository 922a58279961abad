"""Transforms and collate: any image mode to RGB, JPEGs through torchvision's decoder, sizes,
normalization, MixUp/CutMix."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from fmb.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, Collate, build_eval_transform, build_train_transform,
                                 decode_image, image_sides, to_rgb)


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


def jpeg_bytes(mode="RGB", size=(40, 30), quality=95) -> bytes:
    rng = np.random.default_rng(0)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    buffer = io.BytesIO()
    small.convert(mode).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def pil_decoded(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize("form", ["bytes", "dict", "path"])
def test_a_jpeg_is_decoded_by_torchvision_to_what_pil_sees(form, tmp_path):
    data = jpeg_bytes()
    (tmp_path / "a.jpg").write_bytes(data)
    value = {"bytes": data, "path": None} if form == "dict" else data if form == "bytes" else str(tmp_path / "a.jpg")
    image = decode_image(value)
    assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.shape == (3, 30, 40)
    assert image_sides(image) == (30, 40)
    difference = (image.int() - pil_decoded(data).int()).abs()
    assert difference.float().mean() < 1.0 and difference.max() <= 8  # the same libjpeg, up to IDCT rounding


def test_grey_and_cmyk_jpegs_come_out_rgb():
    for mode in ("L", "CMYK"):
        image = decode_image(jpeg_bytes(mode))
        assert image_sides(image) == (30, 40)
        assert (image.shape[0] if isinstance(image, torch.Tensor) else len(image.getbands())) == 3


def test_a_truncated_jpeg_is_still_a_bad_image():
    """libjpeg would fill the missing rows with grey and only warn; the PIL path raises."""
    data = jpeg_bytes(size=(200, 150))
    with pytest.raises(OSError):
        decode_image({"bytes": data[: len(data) // 2], "path": None})


def test_transforms_take_the_jpeg_tensor_as_they_take_pil():
    data = jpeg_bytes(size=(80, 60))
    tensor_in, pil_in = decode_image(data), Image.open(io.BytesIO(data)).convert("RGB")
    evaluate = build_eval_transform(32, crop_ratio=1.0)
    a, b = evaluate(tensor_in), evaluate(pil_in)
    assert a.shape == b.shape == (3, 32, 32) and (a - b).abs().mean() < 0.05  # normalized units
    train = build_train_transform(32, randaugment_magnitude=10, normalize=False)
    out = train(tensor_in)
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)


# --- the official EfficientNetV2 preprocessing (google/automl efficientnetv2/preprocessing.py) ----

def _paper_preset():
    from fmb.config import load_config
    from fmb.data.transforms import preprocessing_kwargs
    cfg = load_config(["experiment/imagenet_v2s_paper"])
    return cfg, preprocessing_kwargs(cfg.data)


def test_paper_preset_scales_to_minus_one_one_as_the_official_code():
    # preprocess_image: image = (image - 128.0) / 128.0
    _, kwargs = _paper_preset()
    pixels = torch.tensor([0, 1, 127, 128, 200, 255], dtype=torch.uint8).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    images, _ = Collate(num_classes=3, image_size=6, **kwargs)([(pixels[0], 0)])
    reference = (pixels.float() - 128.0) / 128.0
    assert torch.allclose(images, reference, atol=1e-6)
    grey = Image.new("RGB", (16, 16), (64, 64, 64))
    assert torch.allclose(build_eval_transform(8, normalize=True, **kwargs)(grey), torch.full((3, 8, 8), -0.5), atol=1e-6)


@pytest.mark.slow
def test_paper_preset_train_crop_is_the_official_area_sampler_and_bilinear():
    from torchvision.transforms import InterpolationMode

    from fmb.data.official_crops import TFRandomResizedCrop
    from fmb.data.randaugment import PaperRandAugment
    cfg, kwargs = _paper_preset()
    transform = build_train_transform(300, 20 / 3, normalize=False, crop_scale_min=cfg.data.crop_scale_min,
                                      hflip=cfg.data.hflip, **kwargs)
    crop = next(t for t in transform.transforms if isinstance(t, TFRandomResizedCrop))
    # sample_distorted_bounding_box(area_range=(0.05, 1.0)) with TF's aspect range; tf.image.resize bilinear
    assert crop.scale == (0.05, 1.0) and crop.ratio == (0.75, 1.33)
    assert crop.interpolation == InterpolationMode.BILINEAR and crop.antialias is False
    ra = next(t for t in transform.transforms if isinstance(t, PaperRandAugment))
    assert ra.magnitude == 20 / 3  # the official schedule's fractional level, not rounded to 7
    out = transform(Image.new("RGB", (500, 375), (10, 200, 30)))
    assert out.shape == (3, 300, 300) and out.dtype == torch.uint8


@pytest.mark.slow
def test_paper_preset_evaluates_the_whole_image_at_384():
    # preprocess_for_eval: no crop from 320 px; fmb's default would crop 0.875 and lose the corners
    cfg, kwargs = _paper_preset()
    assert cfg.data.eval_image_size == 384
    image = torch.zeros(3, 400, 600, dtype=torch.uint8)
    image[:, :40, :60] = 255  # a bright top-left corner, 10 % of each side
    official = build_eval_transform(384, cfg.data.crop_ratio, normalize=False, **kwargs)(image)
    default = build_eval_transform(384, cfg.data.crop_ratio, normalize=False)(image)
    assert official.shape == default.shape == (3, 384, 384)
    assert official[:, 0, 0].tolist() == [255, 255, 255] and official[:, 37, 37].tolist() == [255, 255, 255]
    assert default[:, 0, 0].tolist() == [0, 0, 0]


def test_default_preprocessing_is_unchanged_and_autoaugment_replaces_randaugment():
    from torchvision.transforms import InterpolationMode

    from fmb.data.official_crops import TFRandomResizedCrop
    from fmb.data.randaugment import OfficialAutoAugment, PaperRandAugment
    steps = build_train_transform(32, randaugment_magnitude=9).transforms
    assert not any(isinstance(t, TFRandomResizedCrop) for t in steps)
    assert steps[0].scale == (0.08, 1.0) and steps[0].interpolation == InterpolationMode.BICUBIC
    steps = build_train_transform(32, randaugment_magnitude=9, autoaugment=True).transforms
    assert any(isinstance(t, OfficialAutoAugment) for t in steps)
    assert not any(isinstance(t, PaperRandAugment) for t in steps)


def test_the_data_keys_reach_the_loaders(tmp_path):
    from fmb.config.schema import AugConfig, DataConfig
    from fmb.data import ImageDataModule
    from fmb.data.mixing import OfficialMixing
    from fmb.data.official_crops import OfficialEvalResize, TFRandomResizedCrop
    half = [128 / 255] * 3
    data = DataConfig(source="digits", cache_dir=str(tmp_path), image_size=16, eval_image_size=16, batch_size=8,
                      num_workers=0, preprocessing="official", mean=half, std=half, interpolation="bilinear")
    dm = ImageDataModule(data, AugConfig(mixup_alpha=0.2, cutmix_alpha=0.2))
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    val = val[0] if isinstance(val, list) else val
    assert any(isinstance(t, TFRandomResizedCrop) for t in train.dataset.transform.transforms)
    assert any(isinstance(t, OfficialEvalResize) for t in val.dataset.transform.transforms)
    assert isinstance(train.collate_fn.mixer, OfficialMixing) and train.collate_fn.mean == tuple(half)
