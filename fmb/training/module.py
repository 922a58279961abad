"""ImageClassifier: an fmb EfficientNet as a LightningModule (loss, metrics, optimizer, schedule)."""
from __future__ import annotations

import functools
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from fmb.config import ModelConfig, TrainConfig, from_dict, to_dict
from fmb.errors import FmbError
from fmb.models import cpu_fast_paths, create_model
from fmb.models.freeze import freeze_stages
from fmb.device import machine
from fmb.training.auto import model_settings
from fmb.training.ema import WarmupEMAWeightAveraging
from fmb.training.optim import build_optimizer, effective_lr, global_batch_size, lr_factor, param_groups


def accuracy_metrics(num_classes: int) -> MetricCollection:
    metrics = {"top1": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
    if num_classes >= 5:  # top-5 means nothing with fewer classes
        metrics["top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    return MetricCollection(metrics)


def model_kwargs(model: ModelConfig) -> dict:
    """`create_model` keywords from the model section (its training-only keys left out)."""
    return {"name": model.variant, "blocks": model.blocks, "stage_overrides": dict(model.stage_overrides) or None,
            "width_mult": model.width_mult, "depth_mult": model.depth_mult, "drop_rate": model.drop_rate,
            "drop_path_rate": model.drop_path_rate, "padding": model.padding, "bn_eps": model.bn_eps,
            "bn_momentum": model.bn_momentum}


class ImageClassifier(L.LightningModule):
    """An fmb EfficientNet trained as `config` says (the whole run config, typed or as saved).

    The hyperparameters are that config as plain data, the classes and the BatchNorm eps and
    momentum of pretrained weights' origin, so a checkpoint alone rebuilds the module (it loads with
    weights_only=True). `config.data` must hold the resolved image sizes.
    """

    def __init__(self, config: TrainConfig | dict, num_classes: int, class_names: list | None = None,
                 bn_kwargs: dict | None = None):
        super().__init__()
        self.cfg = from_dict(config) if isinstance(config, dict) else config
        self.save_hyperparameters({"config": to_dict(self.cfg), "num_classes": num_classes,
                                   "class_names": class_names, "bn_kwargs": bn_kwargs})
        # The small-map conv paths are opted into here: they change no weight and no result
        # beyond float rounding, and only run on CPU maps where they measured faster.
        # The config's BatchNorm values (set from the pretrained weights' origin, or by the user) win
        # over `bn_kwargs`, which older checkpoints carry instead.
        kwargs = model_kwargs(self.cfg.model)
        kwargs.update({k: v for k, v in (bn_kwargs or {}).items() if kwargs.get(k) is None})
        self.model = cpu_fast_paths(create_model(**kwargs, num_classes=num_classes))
        self._frozen_modules = freeze_stages(self.model, self.cfg.model.freeze_stages)
        # `auto` values are decided for this machine (fmb train has already written them in).
        self.channels_last, compile_model, graphs = model_settings(self.cfg, machine())
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # Compile the training forward only, kept out of the registered submodules so the state
        # dict holds one copy of the weights, under `model.`. Progressive learning changes the
        # image size per stage: dynamic shapes let one graph serve every stage instead of
        # recompiling. Evaluation runs eager: no-grad mode and a ragged last batch would each cost
        # a recompile (~30 s each for V2-S on an H200) for a few batches per epoch.
        # CUDA graphs: the same compile in reduce-overhead mode, which replays the captured step
        # (fmb/training/auto.py's cuda_graphs decides it; shapes are static there).
        self.__dict__["_compiled"] = (
            torch.compile(self.model, mode="reduce-overhead", dynamic=False) if graphs
            else torch.compile(self.model, dynamic=True if self.cfg.progressive.enabled else None) if compile_model
            else None)
        self.val_metrics = accuracy_metrics(num_classes).clone(prefix="val/")
        self.val_raw_metrics = accuracy_metrics(num_classes).clone(prefix="val_raw/")
        self.select_metrics = accuracy_metrics(num_classes).clone(prefix="select/")
        self.test_metrics = accuracy_metrics(num_classes).clone(prefix="test/")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.base_lr = None
        self._epoch_images, self._epoch_start = 0, None
        self.images_per_sec: list[float] = []

    def train(self, mode: bool = True):
        super().train(mode)
        for module in getattr(self, "_frozen_modules", ()):  # frozen stages keep their BN statistics (fmb/models/freeze.py)
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        compiled = self._compiled is not None and self.training and torch.is_grad_enabled()
        return (self._compiled if compiled else self.model)(x)

    def loss(self, logits, targets):
        # Works for class indices and for MixUp/CutMix soft targets alike.
        return F.cross_entropy(logits, targets, label_smoothing=self.cfg.aug.label_smoothing)

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
            if isinstance(callback, WarmupEMAWeightAveraging) and callback.raw_model() is not None:
                return callback.raw_model().eval()  # the copy keeps its training flag; BN must use running stats
        return None

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        images, labels = batch
        logits = self(images)
        if dataloader_idx == 1:  # the held-out selection set (data.holdout_fraction)
            self.select_metrics.update(logits, labels)
            return
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
        if self.cfg.data.holdout_fraction:
            self.log_dict(self.select_metrics.compute(), sync_dist=True)
            self.select_metrics.reset()
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

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        """Class probabilities [B, num_classes] for `Trainer.predict`; a batch is images or
        (images, labels) as fmb's loaders give."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(images).float().softmax(dim=-1)

    # --- optimization ---------------------------------------------------------------
    def _fresh(self) -> tuple:
        """(is this parameter new, its lr factor): the layers pretrained weights did not provide."""
        report, factor = getattr(self.model, "pretrained_report", None), self.cfg.optim.head_lr_factor
        if report is None:
            if factor != 1.0:
                warnings.warn("optim.head_lr_factor has no effect without model.pretrained: every layer is new",
                              UserWarning, stacklevel=2)
            return None, 1.0
        if any(stage <= self.cfg.model.freeze_stages for stage in report.fresh):
            warnings.warn(f"model.freeze_stages={self.cfg.model.freeze_stages} freezes a stage that starts fresh "
                          f"({report.describe()}): it stays at its random initialisation", UserWarning, stacklevel=2)
        return report.is_fresh, factor

    def configure_optimizers(self):
        optim, sched = self.cfg.optim, self.cfg.sched
        self.base_lr = effective_lr(optim.lr, optim.lr_per_256, global_batch_size(self.cfg.data.batch_size, self.trainer))
        fused = all(p.device.type in ("cpu", "cuda") for p in self.model.parameters())  # Lightning moved them
        optimizer = build_optimizer(optim.name, param_groups(self.model, optim.weight_decay, *self._fresh()),
                                    self.base_lr, optim.momentum, fused=fused)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        factor = functools.partial(
            lr_factor, name=sched.name, total_steps=total, steps_per_epoch=max(1.0, total / epochs),
            warmup_epochs=sched.warmup_epochs, decay_rate=sched.decay_rate, decay_epochs=sched.decay_epochs,
            min_lr_ratio=sched.min_lr_ratio,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
