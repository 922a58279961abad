"""Progressive learning with adaptive regularization (EfficientNetV2, Section 4.2).

Training is split into stages; each trains at an image size with regularization that grows
with it. Weights carry over; only the data pipeline (and, for `paper`, dropout) changes.
Two schedules, `progressive.schedule`:

- `paper` (Table 6): every value interpolated linearly from its minimum in the first stage
  to its maximum in the last: S 128→300 px, RandAugment 5→15, mixup 0, dropout 0.1→0.3;
  M 128→380, 5→20, 0→0.2, 0.1→0.4; L 128→380, 5→25, 0→0.4, 0.1→0.5.
- `official` (google/automl efficientnetv2/main.py and effnetv2_configs.py): stage i of n
  trains at int(128 + (size - 128) * (i + 1) / n) px (so the first stage is already above
  128), RandAugment from 5 to the variant's level (S 10, M 15, L/XL 20) as
  np.linspace(5, level, n) — fractional levels (6.67, 8.33) reach the ops unrounded —, mixup
  and cutmix both from 0 to the variant's alpha (S 0, M 0.2, L/XL 0.5); dropout stays the
  model's. V2-B0..B3 (and V1) train with the AutoAugment policy v0 instead of RandAugment
  and without mixing (augname 'effnetv1_autoaug', ram and mixup 0 in effnetv2_configs.py):
  only their image size ramps. The official V1 configs set no stages at all; fmb ramps the
  size when progressive learning is on and keeps V2-B's AutoAugment.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from fmb.config.schema import ProgressiveConfig

# Table 6: (min, max) per variant size. B0-B3 and V1 use S's; XL uses L's.
PAPER = {
    "s": {"image_size": (128, 300), "randaugment": (5, 15), "mixup": (0.0, 0.0), "dropout": (0.1, 0.3)},
    "m": {"image_size": (128, 380), "randaugment": (5, 20), "mixup": (0.0, 0.2), "dropout": (0.1, 0.4)},
    "l": {"image_size": (128, 380), "randaugment": (5, 25), "mixup": (0.0, 0.4), "dropout": (0.1, 0.5)},
}
# The official code: ImageNet's base size 128, train size, RandAugment level, mixup = cutmix alpha.
OFFICIAL = {
    "s": {"image_size": (128, 300), "randaugment": (5, 10), "mix": (0.0, 0.0)},
    "m": {"image_size": (128, 384), "randaugment": (5, 15), "mix": (0.0, 0.2)},
    "l": {"image_size": (128, 384), "randaugment": (5, 20), "mix": (0.0, 0.5)},
}
# V2-B0..B3 train at 192/192/208/240 from the same base 128, with AutoAugment and no mixing;
# V1 has no official stages and takes B0's sizes.
OFFICIAL_B_TRAIN_SIZE = {"b0": 192, "b1": 192, "b2": 208, "b3": 240}
MIN_IMAGE_SIZE = 16


def size_class(variant: str) -> str:
    suffix = variant.rsplit("_", 1)[-1]
    return "m" if suffix == "m" else "l" if suffix in ("l", "xl") else "s"


def official_autoaugment(variant: str) -> bool:
    """V2-B0..B3 and V1: the official configs' augname is 'effnetv1_autoaug' (effnetv2_configs.py)."""
    return variant.startswith("efficientnet_b") or variant.rsplit("_", 1)[-1] in ("b0", "b1", "b2", "b3")


@dataclass(frozen=True)
class StageValues:
    stage: int  # from 1
    first_epoch: int
    last_epoch: int  # inclusive
    image_size: int
    randaugment_magnitude: float
    mixup_alpha: float
    dropout: float | None  # None: the model's own (official schedule)
    cutmix_alpha: float | None = None  # None: aug.cutmix_alpha throughout (paper schedule)
    autoaugment: bool = False  # the official AutoAugment v0 replaces RandAugment (official schedule, B0-B3/V1)


def _lerp(bounds: tuple[float, float], i: int, n: int) -> float:
    low, high = bounds
    return high if n == 1 else low + (high - low) * i / (n - 1)


def plan_stages(variant: str, max_epochs: int, stages: int, max_image_size: int,
                overrides: dict | None = None, schedule: str = "paper") -> list[StageValues]:
    """The per-stage values for a run of `max_epochs` whose last stage trains at `max_image_size`.

    The schedule's sizes are scaled so its max lands on `max_image_size` with its min/max
    ratio kept (S: 128→300 at ImageNet scale; CIFAR trained at 32 px gets 14→32, floored at
    16 px), unless `overrides` gives min/max values explicitly.
    """
    table = (PAPER if schedule == "paper" else OFFICIAL)[size_class(variant)]
    if schedule == "official" and official_autoaugment(variant):
        suffix = variant.rsplit("_", 1)[-1]
        table = {"image_size": (128, OFFICIAL_B_TRAIN_SIZE.get(suffix, 192)), "randaugment": (0, 0), "mix": (0.0, 0.0)}
    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    low, high = table["image_size"]
    top = int(o.get("max_image_size", max_image_size))
    bottom = min(top, int(o.get("min_image_size", max(MIN_IMAGE_SIZE, round(top * low / high)))))
    randaugment = (o.get("min_randaugment", table["randaugment"][0]), o.get("max_randaugment", table["randaugment"][1]))
    n = max(1, min(stages, max_epochs))  # never an empty stage
    plan = []
    for i in range(n):
        first, last = i * max_epochs // n, (i + 1) * max_epochs // n - 1
        if schedule == "paper":
            values = dict(
                image_size=int(round(_lerp((bottom, top), i, n))),
                mixup_alpha=round(_lerp((o.get("min_mixup", table["mixup"][0]),
                                         o.get("max_mixup", table["mixup"][1])), i, n), 4),
                dropout=round(_lerp((o.get("min_dropout", table["dropout"][0]),
                                     o.get("max_dropout", table["dropout"][1])), i, n), 4))
        else:
            mix = _lerp((o.get("min_mixup", table["mix"][0]), o.get("max_mixup", table["mix"][1])), i, n)
            values = dict(image_size=int(bottom + (top - bottom) * (i + 1) / n), mixup_alpha=mix, cutmix_alpha=mix,
                          dropout=None)
            if official_autoaugment(variant):
                values.update(mixup_alpha=0.0, cutmix_alpha=0.0, autoaugment=True)
        # Not rounded: the official code hands np.linspace(5, level, n) to RandAugment as floats.
        magnitude = 0.0 if values.get("autoaugment") else _lerp(randaugment, i, n)
        plan.append(StageValues(stage=i + 1, first_epoch=first, last_epoch=last, randaugment_magnitude=magnitude,
                                **values))
    return plan


class ProgressiveLearning(Callback):
    """Plans the stages at setup from `trainer.datamodule` (its resolved train size) and the
    run's epochs, then gives each epoch its stage: image size, RandAugment and mixup to the
    datamodule (which builds a new train loader for them) and dropout to the model.

    Lightning asks for the epoch's train loader before `on_train_epoch_start`, so the next
    epoch's values are set at the end of the previous one, at setup (fresh run) and from
    the checkpoint (resume).
    """

    def __init__(self, cfg: ProgressiveConfig, variant: str):
        self.cfg, self.variant = cfg, variant
        self.plan: list[StageValues] = []

    def values_for(self, epoch: int) -> StageValues:
        for values in self.plan:
            if values.first_epoch <= epoch <= values.last_epoch:
                return values
        return self.plan[-1]

    def _apply(self, trainer, pl_module, epoch: int) -> StageValues:
        values = self.values_for(epoch)
        # autoaugment only where a stage uses it, so a datamodule without that stage value still serves the rest
        extra = {"autoaugment": True} if values.autoaugment else {}
        trainer.datamodule.set_train_stage(image_size=values.image_size,
                                           randaugment_magnitude=values.randaugment_magnitude,
                                           mixup_alpha=values.mixup_alpha, cutmix_alpha=values.cutmix_alpha, **extra)
        if values.dropout is not None:
            pl_module.model.set_drop_rate(values.dropout)
        return values

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        datamodule.setup("fit")
        bounds = {f.name: getattr(self.cfg, f.name) for f in fields(self.cfg) if f.name.startswith(("min_", "max_"))}
        self.plan = plan_stages(self.variant, trainer.max_epochs, self.cfg.stages, datamodule.image_size, bounds,
                                self.cfg.schedule)
        rank_zero_info(f"progressive ({self.cfg.schedule}): " + ", ".join(
            f"stage {v.stage}: epochs {v.first_epoch}-{v.last_epoch} {v.image_size}px "
            + ("AutoAugment v0 " if v.autoaugment else f"RA{v.randaugment_magnitude:.4g} ") +
            f"mixup {v.mixup_alpha:g}" + ("" if v.cutmix_alpha is None else f" cutmix {v.cutmix_alpha:g}")
            + ("" if v.dropout is None else f" dropout {v.dropout:g}") for v in self.plan))
        self._apply(trainer, pl_module, 0)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        # The epoch a resumed run starts with: Lightning counts an epoch whose batches were
        # all processed as done, even if the checkpoint was written during its validation.
        progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
        self._apply(trainer, pl_module, int(progress.get("processed", checkpoint.get("epoch", 0))))

    def on_train_epoch_start(self, trainer, pl_module):
        values = self.values_for(trainer.current_epoch)
        for key, value in (("stage", values.stage), ("image_size", values.image_size),
                           ("randaugment", values.randaugment_magnitude), ("mixup", values.mixup_alpha),
                           ("dropout", values.dropout), ("cutmix", values.cutmix_alpha)):
            if value is None:
                continue
            pl_module.log(f"progressive/{key}", float(value), prog_bar=key in ("stage", "image_size"),
                          rank_zero_only=True)

    def on_train_epoch_end(self, trainer, pl_module):
        self._apply(trainer, pl_module, trainer.current_epoch + 1)

    def describe(self) -> list[dict]:
        return [asdict(v) for v in self.plan]
