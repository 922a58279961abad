"""RandAugment on the official EfficientNetV2 scale: magnitude is the official level (level / 10)."""
import pytest
import torch
from PIL import Image

from fmb.data.randaugment import PaperRandAugment


def _bound(op: str, level: int) -> float:
    aug = PaperRandAugment(magnitude=level)
    table, _ = aug._AUGMENTATION_SPACE[op]
    return float(table(aug.num_magnitude_bins, 224, 224)[aug.magnitude])


@pytest.mark.parametrize("op, level, expected", [
    ("Rotate", 10, 30.0), ("Rotate", 15, 45.0), ("ShearX", 15, 0.45), ("ShearY", 10, 0.3),
    ("TranslateX", 15, 150.0), ("TranslateY", 10, 100.0), ("Posterize", 10, 4), ("Solarize", 5, 128),
    ("SolarizeAdd", 10, 110), ("Cutout", 10, 40),
])
def test_magnitude_is_the_official_level(op, level, expected):
    assert _bound(op, level) == pytest.approx(expected)
    assert PaperRandAugment._AUGMENTATION_SPACE[op][1] == (op in ("Rotate", "ShearX", "ShearY",
                                                                  "TranslateX", "TranslateY"))


def test_enhance_factor_is_official_and_translate_is_absolute():
    # torchvision applies 1 + magnitude: the official factor 1.8 * level / 10 + 0.1
    for level, factor in ((0, 0.1), (5, 1.0), (10, 1.9), (15, 2.8)):
        assert 1 + _bound("Brightness", level) == pytest.approx(factor)
    aug = PaperRandAugment(magnitude=15)
    small, large = (float(aug._AUGMENTATION_SPACE["TranslateX"][0](31, s, s)[15]) for s in (32, 600))
    assert small == large == pytest.approx(150.0)
    assert "Identity" not in aug._AUGMENTATION_SPACE and len(aug._AUGMENTATION_SPACE) == 16


def test_sampled_rotation_reaches_the_bound(monkeypatch):
    # Sample the op RandAugment actually applies: with magnitude 10, |angle| is always 30.
    angles = []
    aug = PaperRandAugment(num_ops=1, magnitude=10)
    original = aug._apply_image_or_video_transform

    def spy(image, transform_id, magnitude, **kw):
        if transform_id == "Rotate":
            angles.append(magnitude)
        return original(image, transform_id, magnitude, **kw)

    monkeypatch.setattr(aug, "_apply_image_or_video_transform", spy)
    monkeypatch.setattr(aug, "_get_random_item", lambda space: ("Rotate", space["Rotate"]))
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    for _ in range(20):
        aug(image)
    assert {abs(a) for a in angles} == {30.0} and min(angles) < 0 < max(angles)


def test_every_op_runs_on_tensors_and_pil_at_any_level():
    torch.manual_seed(0)
    tensor = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8)
    pil = Image.fromarray(tensor.permute(1, 2, 0).numpy())
    for level in (0, 5, 10, 15, 30):
        aug = PaperRandAugment(magnitude=level)
        for op, (table, signed) in aug._AUGMENTATION_SPACE.items():
            values = table(aug.num_magnitude_bins, 20, 24)
            magnitude = 0.0 if values is None else float(values[level])
            for image in (tensor, pil):
                out = aug._apply_image_or_video_transform(image, op, magnitude, interpolation=aug.interpolation,
                                                          fill=aug._fill)
                assert type(out) is type(image)
        assert aug(tensor).shape == tensor.shape and aug(tensor).dtype == torch.uint8


def test_official_op_semantics():
    aug = PaperRandAugment(magnitude=10)
    image = torch.tensor([[[0, 100, 127, 128, 200, 250]]], dtype=torch.uint8).expand(3, 1, 6)
    add = aug._apply_image_or_video_transform(image, "SolarizeAdd", 110.0, interpolation=None, fill=None)
    assert add[0, 0].tolist() == [110, 210, 237, 128, 200, 250]  # only pixels below 128, clipped
    assert torch.equal(aug._apply_image_or_video_transform(image, "Solarize", 256.0, interpolation=None, fill=None),
                       image)  # level 10 and above: threshold 256, a no-op as in the official code
    with pytest.raises(ValueError, match="integer level"):
        PaperRandAugment(magnitude=31)
