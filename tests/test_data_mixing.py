"""MixUp/CutMix as the official EfficientNetV2 input pipeline (google/automl
efficientnetv2/datasets.py `ImageNetInput.mixing`, `mixup`, `cutmix`, `cutmix_mask`): with
both alphas the batch is split half/half, each half paired with itself reversed, MixUp with
a λ per image kept ≥ 0.5, CutMix with a box per image whose pixel share is the label weight."""
import pytest
import torch

from fmb.data.mixing import OfficialMixing, cutmix_masks
from fmb.data.transforms import Collate


def _batch(n=8, size=12):
    # image i is the constant i + 1, so each output pixel says which images it came from
    images = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()
    return images, torch.arange(n)


def test_both_alphas_split_the_batch_half_mixup_half_cutmix_with_a_lambda_per_image():
    torch.manual_seed(0)
    images, labels = _batch()
    mixed, targets = OfficialMixing(num_classes=8, mixup_alpha=0.2, cutmix_alpha=1.0)(images, labels)
    assert targets.shape == (8, 8) and torch.allclose(targets.sum(1), torch.ones(8))
    # first half: MixUp with image[:4][::-1] (0<->3, 1<->2), a λ per image, max(λ, 1 - λ)
    lambdas = []
    for i, partner in zip(range(4), (3, 2, 1, 0)):
        lam = targets[i, i].item()
        assert lam >= 0.5 and targets[i, partner].item() == pytest.approx(1 - lam, abs=1e-6)
        assert targets[i].sum().item() == pytest.approx(targets[i, i].item() + targets[i, partner].item(), abs=1e-6)
        assert torch.allclose(mixed[i], torch.full_like(mixed[i], lam * (i + 1) + (1 - lam) * (partner + 1)), atol=1e-5)
        lambdas.append(lam)
    assert len({round(v, 6) for v in lambdas}) == 4  # one λ per image, not one per batch
    # second half: CutMix with image[4:][::-1] (4<->7, 5<->6); pixels are own or partner's,
    # the partner's share of the pixels is the label weight, boxes differ per image
    shares = []
    for i, partner in zip(range(4, 8), (7, 6, 5, 4)):
        values = mixed[i, 0]
        assert set(values.unique().tolist()) <= {float(i + 1), float(partner + 1)}
        share = (values == partner + 1).float().mean().item()
        assert targets[i, partner].item() == pytest.approx(share, abs=1e-6)
        assert targets[i, i].item() == pytest.approx(1 - share, abs=1e-6)
        shares.append(share)
    assert len(set(shares)) > 1


def test_single_alphas_mix_the_whole_batch_with_its_reverse():
    torch.manual_seed(1)
    images, labels = _batch(6)
    _, targets = OfficialMixing(6, mixup_alpha=0.5)(images, labels)
    for i in range(6):
        assert targets[i, i] >= 0.5 and targets[i, i] + targets[i, 5 - i] == pytest.approx(1.0)
    mixed, targets = OfficialMixing(6, cutmix_alpha=1.0)(images, labels)
    for i in range(6):
        share = (mixed[i, 0] == 6 - i).float().mean().item()
        assert targets[i, 5 - i].item() == pytest.approx(share, abs=1e-6)


def test_cutmix_box_is_the_official_mask():
    # cutmix_mask: centre uniform, sides int(sqrt(1 - a) * side), half-sides floored, clipped
    torch.manual_seed(0)
    masks = cutmix_masks(2000, 20, 20, alpha=1.0)
    assert masks.shape == (2000, 1, 20, 20) and set(masks.unique().tolist()) <= {0.0, 1.0}
    for mask in masks[:50, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        if len(rows):  # one solid rectangle
            assert mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all() and mask.sum() == len(rows) * len(cols)
    # a ~ Beta(1, 1) = U(0, 1): unclipped boxes take 1 - a of the image, clipping at the edges
    # about halves that on average; the corners are reached (boxes are clipped, not moved)
    mean_share = masks.mean().item()
    assert 0.15 < mean_share < 0.45
    assert masks[:, 0, 0, 0].any() and masks[:, 0, -1, -1].any()


def test_collate_applies_the_official_split_only_when_asked():
    items = [(torch.full((3, 8, 8), float(i)), i) for i in range(4)]
    torch.manual_seed(0)
    _, official = Collate(4, 8, mixup_alpha=0.2, preprocessing="official")(items)
    own = official.diagonal()
    assert (own >= 0.5).all() and len({round(v, 6) for v in own.tolist()}) == 4  # a λ per image
    torch.manual_seed(0)
    _, library = Collate(4, 8, mixup_alpha=0.2)(items)  # torchvision's MixUp: one λ per batch
    assert len({round(v, 6) for v in library.diagonal().tolist()}) == 1
