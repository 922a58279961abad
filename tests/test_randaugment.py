"""RandAugment and AutoAugment on the official EfficientNet scale: magnitude is the official
level (level / 10), fractional levels kept; AutoAugment is the official policy v0
(google/automl efficientnetv2/autoaugment.py)."""
import pytest
import torch
from PIL import Image

from fmb.data.randaugment import POLICY_V0, OfficialAutoAugment, PaperRandAugment


def _bound(op: str, level: float) -> float:
    return PaperRandAugment(magnitude=level).op_argument(op, level)


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
    assert aug.op_argument("TranslateX", 15) == pytest.approx(150.0)  # pixels, whatever the image size
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
        for op in aug._AUGMENTATION_SPACE:
            magnitude = aug.op_argument(op, level)
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
    with pytest.raises(ValueError, match="official level"):
        PaperRandAugment(magnitude=31)


def _applied(aug, monkeypatch, op=None, draws=40):
    """(op, signed argument) pairs the transform hands to torchvision's kernels."""
    calls = []
    original = aug._apply_image_or_video_transform

    def spy(image, transform_id, magnitude, **kw):
        calls.append((transform_id, magnitude))
        return original(image, transform_id, magnitude, **kw)

    monkeypatch.setattr(aug, "_apply_image_or_video_transform", spy)
    if op is not None:
        monkeypatch.setattr(aug, "_get_random_item", lambda space: (op, space[op]))
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    for _ in range(draws):
        aug(image)
    return calls


@pytest.mark.parametrize("level", [6.666666666666667, 8.333333333333334, 11.666666666666666])
def test_fractional_levels_reach_the_ops_unrounded(level, monkeypatch):
    # The official progressive schedule hands np.linspace(5, ram, 4) to
    # distort_image_with_randaugment, which uses float(magnitude): rotate by 30 * L / 10
    # degrees, shear 0.3 * L / 10, enhance 1.8 * L / 10 + 0.1, Posterize int(4 * L / 10) bits.
    angles = [m for _, m in _applied(PaperRandAugment(num_ops=1, magnitude=level), monkeypatch, "Rotate")]
    assert [abs(a) for a in angles] == pytest.approx([3.0 * level] * len(angles), abs=1e-9)
    assert _bound("ShearX", level) == pytest.approx(0.03 * level)
    assert 1 + _bound("Color", level) == pytest.approx(0.18 * level + 0.1)
    assert _bound("Posterize", level) == int(0.4 * level)


def test_autoaugment_is_the_official_policy_v0_not_torchvisions_imagenet_policy():
    # autoaugment.py policy_v0, first and last sub-policies and the count
    assert POLICY_V0[0] == [("Equalize", 0.8, 1), ("ShearY", 0.8, 4)]
    assert POLICY_V0[-1] == [("Color", 0.8, 6), ("Rotate", 0.4, 5)] and len(POLICY_V0) == 25
    from torchvision.transforms.v2 import AutoAugment
    torchvision_policy = AutoAugment()._policies
    assert [tuple(p[:2] for p in sub) for sub in POLICY_V0] != [tuple(p[:2] for p in sub) for sub in torchvision_policy]
    aug = OfficialAutoAugment()
    assert aug._policies is POLICY_V0
    # distort_image_with_autoaugment: translate_const=250, cutout_const=100 (RandAugment: 100, 40)
    assert aug.op_argument("TranslateY", 9) == pytest.approx(225.0)
    assert aug.op_argument("Rotate", 8) == pytest.approx(24.0)  # torchvision's level 8 of 10 bins: 26.7
    assert aug.op_argument("Solarize", 10) == 256 and aug.op_argument("SolarizeAdd", 7) == 77


def test_autoaugment_applies_one_sub_policy_with_its_probabilities(monkeypatch):
    aug = OfficialAutoAugment()
    aug._policies = [[("Rotate", 1.0, 5), ("Equalize", 0.0, 3)]]  # always, never
    calls = _applied(aug, monkeypatch, draws=20)
    assert [op for op, _ in calls] == ["Rotate"] * 20
    assert [abs(m) for _, m in calls] == pytest.approx([15.0] * 20) and min(m for _, m in calls) < 0
    out = OfficialAutoAugment()(torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8))
    assert out.shape == (3, 24, 24) and out.dtype == torch.uint8
