"""MixUp and CutMix on a batch as the official EfficientNetV2 input pipeline does them
(google/automl efficientnetv2/datasets.py, `ImageNetInput.mixing`, `mixup`, `cutmix`,
`cutmix_mask`).

torchvision's MixUp/CutMix draw one λ per batch and pair each image with its neighbour
(`roll(1)`); with both on, fmb's default collate picks one of them per batch. The official
code instead:
- with both alphas set, splits the batch half/half: MixUp on the first half, CutMix on the
  second, each half paired with itself reversed (`image[::-1]`);
- MixUp draws one λ ~ Beta(α, α) *per image* and keeps max(λ, 1 − λ), so every image keeps
  at least half of itself;
- CutMix draws one box *per image* (`cutmix_mask` runs in the per-image parser): centre
  uniform over the image, sides int(sqrt(1 − a) · side) with a ~ Beta(α, α), each half-side
  floored and the box clipped at the edges; the label weight of the partner is the box's
  actual share of the pixels.
Labels come in as class indices and leave as [B, num_classes] soft labels (label smoothing
is the loss's job, as in the official code).
"""
from __future__ import annotations

import torch


def _mixup(images: torch.Tensor, targets: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    n = images.shape[0]
    weight = torch.distributions.Beta(alpha, alpha).sample((n,))
    weight = torch.maximum(weight, 1.0 - weight)
    image_weight = weight.view(n, 1, 1, 1).to(images.dtype)
    images = images * image_weight + images.flip(0) * (1.0 - image_weight)
    label_weight = weight.view(n, 1)
    return images, targets * label_weight + targets.flip(0) * (1.0 - label_weight)


def cutmix_masks(n: int, height: int, width: int, alpha: float) -> torch.Tensor:
    """[n, 1, height, width] float masks, 1 inside each image's box (`cutmix_mask`, one per image)."""
    centre_x = torch.randint(0, width, (n,))
    centre_y = torch.randint(0, height, (n,))
    area = torch.distributions.Beta(alpha, alpha).sample((n,))
    ratio = torch.sqrt(1.0 - area)
    half_w = (ratio * width).to(torch.int64) // 2  # tf.cast truncates, then r_w // 2
    half_h = (ratio * height).to(torch.int64) // 2
    x1, x2 = (centre_x - half_w).clamp(0, width), (centre_x + half_w).clamp(0, width)
    y1, y2 = (centre_y - half_h).clamp(0, height), (centre_y + half_h).clamp(0, height)
    xs, ys = torch.arange(width), torch.arange(height)
    inside_x = (xs >= x1[:, None]) & (xs < x2[:, None])  # [n, width]
    inside_y = (ys >= y1[:, None]) & (ys < y2[:, None])  # [n, height]
    return (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1).float()


def _cutmix(images: torch.Tensor, targets: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    n, _, height, width = images.shape
    mask = cutmix_masks(n, height, width, alpha)
    share = mask.mean(dim=(1, 2, 3)).view(n, 1)  # the actual pixels taken from the partner
    images = (1.0 - mask.to(images.dtype)) * images + mask.to(images.dtype) * images.flip(0)
    return images, (1.0 - share) * targets + share * targets.flip(0)


class OfficialMixing:
    """Callable (images [B,3,H,W] float, labels [B] int) → (mixed images, soft labels [B, C])."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = torch.nn.functional.one_hot(labels, self.num_classes).to(torch.float32)
        if self.mixup_alpha and self.cutmix_alpha:
            half = images.shape[0] // 2
            first = _mixup(images[:half], targets[:half], self.mixup_alpha)
            second = _cutmix(images[half:], targets[half:], self.cutmix_alpha)
            return torch.cat([first[0], second[0]]), torch.cat([first[1], second[1]])
        if self.mixup_alpha:
            return _mixup(images, targets, self.mixup_alpha)
        if self.cutmix_alpha:
            return _cutmix(images, targets, self.cutmix_alpha)
        return images, labels
