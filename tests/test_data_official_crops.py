"""The official EfficientNetV2 crops (google/automl efficientnetv2/preprocessing.py) against
references: TensorFlow's sampler semantics (sample_distorted_bounding_box_op.cc
`GenerateRandomCrop`) and TF2's tf.image.resize bilinear, which is half-pixel-centred and
unantialiased — torch.nn.functional.interpolate(mode="bilinear", align_corners=False)."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import RandomResizedCrop

from fmb.data.official_crops import OfficialEvalResize, TFRandomResizedCrop, tf_generate_crop


def _crops(transform, height, width, n):
    image = torch.zeros(3, height, width)
    return [transform.make_params([image]) for _ in range(n)]


def test_tf_sampler_draws_the_height_uniformly_where_torchvision_draws_the_area():
    # Square image, aspect ratio fixed at 1: TensorFlow draws the side uniformly between
    # round(sqrt(0.05 * 100 * 100)) = 22 and 100 (mean 61), where 22 (484 px < 500) is bumped
    # to 23 by its rounding fix-up; torchvision draws the area uniformly in 0.05..1 (mean
    # side 100 * E[sqrt(U(0.05, 1))] = 69.4).
    torch.manual_seed(0)
    tf = TFRandomResizedCrop(8, scale=(0.05, 1.0), ratio=(1.0, 1.0))
    sides = [p["height"] for p in _crops(tf, 100, 100, 1500)]
    assert min(sides) == 23 and max(sides) == 100
    assert sum(sides) / len(sides) == pytest.approx(61.0, abs=2.5)
    torchvision = RandomResizedCrop(8, scale=(0.05, 1.0), ratio=(1.0, 1.0))
    tv_sides = [p["height"] for p in _crops(torchvision, 100, 100, 1500)]
    assert sum(tv_sides) / len(tv_sides) == pytest.approx(69.4, abs=2.5)


def test_tf_sampler_keeps_the_official_area_and_aspect_ranges():
    torch.manual_seed(1)
    crop = TFRandomResizedCrop(8)  # defaults: the official area 0.05..1, TF's aspect 0.75..1.33
    assert crop.scale == (0.05, 1.0) and crop.ratio == (0.75, 1.33) and crop.max_attempts == 100
    for p in _crops(crop, 300, 400, 500):
        area = p["height"] * p["width"] / (300 * 400)
        assert 0.05 <= area <= 1.0
        assert 0.75 - 1 / p["height"] <= p["width"] / p["height"] <= 1.33 + 1 / p["height"]  # width = round(h * ratio)
        # random->Uniform(H - h) draws from [0, H - h): a crop shorter than the image never touches its bottom
        assert p["top"] + p["height"] < 300 or p["height"] == 300
        assert p["left"] + p["width"] < 400 or p["width"] == 400


def test_tf_sampler_falls_back_to_the_whole_image():
    # A 3 x 300 strip holds no crop of area >= 45 px with an aspect ratio in 0.75..1.33:
    # TensorFlow returns the whole image, torchvision a centre crop of ratio 4/3.
    torch.manual_seed(0)
    assert _crops(TFRandomResizedCrop(8), 3, 300, 1)[0] == dict(top=0, left=0, height=3, width=300)
    assert tf_generate_crop(300, 3, 0.05, 1.0, 1.0) is None
    tv = _crops(RandomResizedCrop(8, ratio=(0.75, 1.33)), 3, 300, 1)[0]
    assert tv["width"] < 300


def test_tf_sampler_rounds_as_generate_random_crop():
    # min side round(sqrt(0.5 * 10 * 10 / 1.3)) = 6, max side capped by the width at
    # int((10 + 0.5 - 1e-7) / 1.3) = 8; width round(h * 1.3). Side 6 gives 6 x 8 = 48 px < 50,
    # which the fix-up turns into 7 x 9: so 7 x 9 twice as often as 8 x 10, and never 6 x 8.
    torch.manual_seed(0)
    seen = [tf_generate_crop(10, 10, 0.5, 1.0, 1.3)[2:] for _ in range(600)]
    assert set(seen) == {(7, 9), (8, 10)}
    assert seen.count((7, 9)) / len(seen) == pytest.approx(2 / 3, abs=0.07)


def test_train_crop_resizes_bilinear_without_antialiasing():
    torch.manual_seed(0)
    image = torch.rand(3, 64, 48)
    crop = TFRandomResizedCrop(16, interpolation="bilinear")
    params = crop.make_params([image])
    out = crop.transform(image, params)
    window = image[:, params["top"]:params["top"] + params["height"], params["left"]:params["left"] + params["width"]]
    reference = F.interpolate(window[None], size=(16, 16), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(out, reference, atol=1e-5)


def _grid(height, width):
    torch.manual_seed(0)
    return torch.rand(3, height, width)


def test_eval_at_384_resizes_the_whole_image_to_a_square():
    # preprocess_for_eval: no 'crop' from 320 px, tf.image.resize(image, [384, 384])
    image = _grid(400, 600)
    out = OfficialEvalResize(384)(image)
    reference = F.interpolate(image[None], size=(384, 384), mode="bilinear", align_corners=False)[0]
    assert out.shape == (3, 384, 384) and torch.allclose(out, reference, atol=1e-5)
    antialiased = F.interpolate(image[None], size=(384, 384), mode="bilinear", align_corners=False, antialias=True)[0]
    assert not torch.allclose(out, antialiased, atol=1e-3)  # TF's resize does not antialias


def test_eval_below_320_crops_size_over_size_plus_32_of_the_short_side():
    # at 300 px on 400 x 500: crop int(300 / 332 * 400) = 361 px at ((400 - 361) // 2, (500 - 361) // 2)
    image = _grid(400, 500)
    out = OfficialEvalResize(300)(image)
    window = image[:, 19:19 + 361, 69:69 + 361]
    reference = F.interpolate(window[None], size=(300, 300), mode="bilinear", align_corners=False)[0]
    assert out.shape == (3, 300, 300) and torch.allclose(out, reference, atol=1e-5)
    assert OfficialEvalResize(224).make_params([_grid(256, 300)])["height"] == 224  # 224 / 256 of 256
