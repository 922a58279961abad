"""Progressive learning with adaptive regularization (EfficientNetV2, Section 4.2, Table 6).

Training is split into stages; stage i trains at an image size, RandAugment magnitude,
mixup alpha and dropout interpolated linearly from their minimum (first stage) to their
maximum (last stage). Weights carry over; only the data pipeline and dropout change.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from fmb.config.schema import ProgressiveConfig

# Table 6: (min, max) per variant size. B0-B3 and V1 use S's; XL uses L's.
PRESETS = {
    "s": {"image_size": (128, 300), "randaugment": (5, 15), "mixup": (0.0, 0.0), "dropout": (0.1, 0.3)},
    "m": {"image_size": (128, 380), "randaugment": (5, 20), "mixup": (0.0, 0.2), "dropout": (0.1, 0.4)},
    "l": {"image_size": (128, 380), "randaugment": (5, 25), "mixup": (0.0, 0.4), "dropout": (0.1, 0.5)},
}
MIN_IMAGE_SIZE = 16


def preset_for(variant: str) -> dict:
    suffix = variant.rsplit("_", 1)[-1]
    return PRESETS["m" if suffix == "m" else "l" if suffix in ("l", "xl") else "s"]


@dataclass(frozen=True)
class StageValues:
    stage: int  # from 1
    first_epoch: int
    last_epoch: int  # inclusive
    image_size: int
    randaugment_magnitude: float
    mixup_alpha: float
    dropout: float


def _lerp(bounds: tuple[float, float], i: int, n: int) -> float:
    low, high = bounds
    return high if n == 1 else low + (high - low) * i / (n - 1)


def plan_stages(variant: str, max_epochs: int, stages: int, max_image_size: int,
                overrides: dict | None = None) -> list[StageValues]:
    """The per-stage values for a run of `max_epochs` whose last stage trains at `max_image_size`.

    The preset's sizes are scaled so its max lands on `max_image_size` with the paper's
    min/max ratio kept (S: 128→300 at ImageNet scale; CIFAR trained at 32 px gets 14→32,
    floored at 16 px), unless `overrides` gives min/max values explicitly.
    """
    preset, o = preset_for(variant), {k: v for k, v in (overrides or {}).items() if v is not None}
    low, high = preset["image_size"]
    top = int(o.get("max_image_size", max_image_size))
    bottom = int(o.get("min_image_size", max(MIN_IMAGE_SIZE, round(top * low / high))))
    bounds = {
        "image_size": (min(bottom, top), top),
        "randaugment": (o.get("min_randaugment", preset["randaugment"][0]), o.get("max_randaugment", preset["randaugment"][1])),
        "mixup": (o.get("min_mixup", preset["mixup"][0]), o.get("max_mixup", preset["mixup"][1])),
        "dropout": (o.get("min_dropout", preset["dropout"][0]), o.get("max_dropout", preset["dropout"][1])),
    }
    n = max(1, min(stages, max_epochs))  # never an empty stage
    plan = []
    for i in range(n):
        first, last = i * max_epochs // n, (i + 1) * max_epochs // n - 1
        plan.append(StageValues(
            stage=i + 1, first_epoch=first, last_epoch=last,
            image_size=int(round(_lerp(bounds["image_size"], i, n))),
            randaugment_magnitude=round(_lerp(bounds["randaugment"], i, n), 3),
            mixup_alpha=round(_lerp(bounds["mixup"], i, n), 4),
            dropout=round(_lerp(bounds["dropout"], i, n), 4),
        ))
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
        trainer.datamodule.set_train_stage(image_size=values.image_size,
                                           randaugment_magnitude=values.randaugment_magnitude,
                                           mixup_alpha=values.mixup_alpha)
        pl_module.model.set_drop_rate(values.dropout)
        return values

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        datamodule.setup("fit")
        bounds = {f.name: getattr(self.cfg, f.name) for f in fields(self.cfg) if f.name.startswith(("min_", "max_"))}
        self.plan = plan_stages(self.variant, trainer.max_epochs, self.cfg.stages, datamodule.image_size, bounds)
        rank_zero_info("progressive: " + ", ".join(
            f"stage {v.stage}: epochs {v.first_epoch}-{v.last_epoch} {v.image_size}px RA{v.randaugment_magnitude:g} "
            f"mixup {v.mixup_alpha:g} dropout {v.dropout:g}" for v in self.plan))
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
                           ("dropout", values.dropout)):
            pl_module.log(f"progressive/{key}", float(value), prog_bar=key in ("stage", "image_size"),
                          rank_zero_only=True)

    def on_train_epoch_end(self, trainer, pl_module):
        self._apply(trainer, pl_module, trainer.current_epoch + 1)

    def describe(self) -> list[dict]:
        return [asdict(v) for v in self.plan]
