"""ImageClassifier: an fmb EfficientNet as a LightningModule (loss, metrics, optimizer, schedule)."""
from __future__ import annotations

import functools
import time

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from fmb.errors import FmbError
from fmb.models import create_model
from fmb.training.optim import build_optimizer, effective_lr, global_batch_size, lr_factor, param_groups


def accuracy_metrics(num_classes: int) -> MetricCollection:
    metrics = {"top1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes >= 5:  # top-5 means nothing with fewer classes
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics)


class ImageClassifier(L.LightningModule):
    """Everything needed to rebuild the model is in the hyperparameters, so a checkpoint
    alone is enough for `fmb eval` (plain Python types only: it loads with weights_only)."""

    def __init__(self, model_kwargs: dict, num_classes: int, class_names: list | None = None,
                 optim: dict | None = None, sched: dict | None = None, label_smoothing: float = 0.0,
                 channels_last: bool = False, compile: bool = False, data: dict | None = None,
                 run_config: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(**model_kwargs, num_classes=num_classes)
        self.optim_cfg = optim or {"name": "sgd", "lr": 0.1, "lr_per_256": True, "weight_decay": 0.0, "momentum": 0.9}
        self.sched_cfg = sched or {"name": "constant", "warmup_epochs": 0}
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Compile the forward only, kept out of the registered submodules so the state dict
        # holds one copy of the weights, under `model.`.
        self.__dict__["_compiled"] = torch.compile(self.model) if compile else None
        self.val_metrics = accuracy_metrics(num_classes).clone(prefix="val/")
        self.val_raw_metrics = accuracy_metrics(num_classes).clone(prefix="val_raw/")
        self.test_metrics = accuracy_metrics(num_classes).clone(prefix="test/")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.base_lr = None
        self._epoch_images, self._epoch_start = 0, None
        self.images_per_sec: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (self.model if self._compiled is None else self._compiled)(x)

    def loss(self, logits, targets):
        # Works for class indices and for MixUp/CutMix soft targets alike.
        return F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)

    # --- training -------------------------------------------------------------------
    def on_train_epoch_start(self):
        self._epoch_images, self._epoch_start = 0, time.perf_counter()

    def training_step(self, batch, batch_idx):
        images, targets = batch
        loss = self.loss(self(images), targets)
        if not torch.isfinite(loss):
            raise FmbError(
                f"loss became {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); "
                "training stopped, the last good checkpoint is kept (lower optim.lr or check the data)",
                exit_code=1,
            )
        self._epoch_images += images.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        return loss

    def on_train_epoch_end(self):
        elapsed = time.perf_counter() - (self._epoch_start or time.perf_counter())
        if elapsed > 0 and self._epoch_images:
            rate = self._epoch_images * self.trainer.world_size / elapsed
            self.images_per_sec.append(rate)
            self.log("train/images_per_sec", rate, sync_dist=True)  # mean of every rank's estimate

    # --- evaluation -----------------------------------------------------------------
    def _raw_model(self):
        """The un-averaged weights while EMA weights are swapped in for validation, else None."""
        if self.trainer.state.fn != "fit":
            return None
        for callback in self.trainer.callbacks:
            average = getattr(callback, "_average_model", None) if isinstance(callback, WeightAveraging) else None
            if average is not None:
                return average.module.eval()  # the copy keeps its training flag; BN must use running stats
        return None

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.val_loss.update(self.loss(logits, labels), weight=images.shape[0])
        self.val_metrics.update(logits, labels)
        raw = self._raw_model()
        if raw is not None:
            self.val_raw_metrics.update(raw(images), labels)

    def on_validation_epoch_end(self):
        # compute() already reduces the metric states over ranks (torchmetrics); sync_dist on
        # those equal values changes nothing and tells Lightning they are global.
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=True)
        self.log_dict(self.val_metrics.compute(), prog_bar=True, sync_dist=True)
        self.val_loss.reset()
        self.val_metrics.reset()
        if self._raw_model() is not None:
            self.log_dict(self.val_raw_metrics.compute(), sync_dist=True)
            self.val_raw_metrics.reset()

    def test_step(self, batch, batch_idx):
        images, labels = batch
        logits = self(images)
        self.test_loss.update(self.loss(logits, labels), weight=images.shape[0])
        self.test_metrics.update(logits, labels)

    def on_test_epoch_end(self):
        self.log("test/loss", self.test_loss.compute(), sync_dist=True)
        self.log_dict(self.test_metrics.compute(), sync_dist=True)
        self.test_loss.reset()
        self.test_metrics.reset()

    # --- optimization ---------------------------------------------------------------
    def configure_optimizers(self):
        cfg, sched = self.optim_cfg, self.sched_cfg
        per_device = (self.hparams.data or {}).get("batch_size", 1)
        self.base_lr = effective_lr(cfg["lr"], cfg.get("lr_per_256", True), global_batch_size(per_device, self.trainer))
        optimizer = build_optimizer(cfg["name"], param_groups(self.model, cfg["weight_decay"]),
                                    self.base_lr, cfg.get("momentum", 0.9))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        factor = functools.partial(
            lr_factor, name=sched["name"], total_steps=total, steps_per_epoch=max(1.0, total / epochs),
            warmup_epochs=sched.get("warmup_epochs", 0), decay_rate=sched.get("decay_rate", 0.97),
            decay_epochs=sched.get("decay_epochs", 2.4), min_lr_ratio=sched.get("min_lr_ratio", 0.0),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
