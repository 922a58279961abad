"""Progressive learning: the paper's per-stage values, their scaling, and their effect in training."""
import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback

from fmb.config import load_config
from fmb.data import ImageDataModule
from fmb.training.module import ImageClassifier
from fmb.training.progressive import ProgressiveLearning, plan_stages


def test_v2s_at_imagenet_scale_is_table_6():
    plan = plan_stages("efficientnetv2_s", max_epochs=350, stages=4, max_image_size=300)
    assert [v.image_size for v in plan] == [128, 185, 243, 300]
    assert [v.randaugment_magnitude for v in plan] == pytest.approx([5, 8.333, 11.667, 15], abs=1e-3)
    assert [v.mixup_alpha for v in plan] == [0, 0, 0, 0]
    assert [v.dropout for v in plan] == pytest.approx([0.1, 0.1667, 0.2333, 0.3], abs=1e-4)
    assert plan[0].first_epoch == 0 and plan[-1].last_epoch == 349
    assert all(a.last_epoch + 1 == b.first_epoch for a, b in zip(plan, plan[1:]))


@pytest.mark.parametrize("variant, size, mixup, dropout", [
    ("efficientnetv2_m", (128, 380), (0, 0.2), (0.1, 0.4)),
    ("efficientnetv2_l", (128, 380), (0, 0.4), (0.1, 0.5)),
    ("efficientnetv2_xl", (128, 380), (0, 0.4), (0.1, 0.5)),
])
def test_m_and_l_presets(variant, size, mixup, dropout):
    plan = plan_stages(variant, max_epochs=8, stages=4, max_image_size=size[1])
    assert (plan[0].image_size, plan[-1].image_size) == size
    assert (plan[0].mixup_alpha, plan[-1].mixup_alpha) == mixup
    assert (plan[0].dropout, plan[-1].dropout) == dropout


def test_sizes_scale_to_small_native_resolution():
    plan = plan_stages("efficientnetv2_s", max_epochs=8, stages=4, max_image_size=32)
    assert [v.image_size for v in plan] == [16, 21, 27, 32]  # CIFAR is not trained at 300 px
    explicit = plan_stages("efficientnetv2_s", 8, 4, 32, {"min_image_size": 24, "max_dropout": 0.5})
    assert explicit[0].image_size == 24 and explicit[-1].dropout == 0.5


def test_official_schedule_follows_google_automl():
    """main.py: size int(128 + (300 - 128) * (i + 1) / 4), RandAugment linspace(5, 10, 4),
    mixup = cutmix linspace(0, alpha, 4), dropout not scheduled (effnetv2_configs.py values)."""
    plan = plan_stages("efficientnetv2_s", max_epochs=350, stages=4, max_image_size=300, schedule="official")
    assert [v.image_size for v in plan] == [171, 214, 257, 300]
    assert [v.randaugment_magnitude for v in plan] == pytest.approx([5, 6.667, 8.333, 10], abs=1e-3)
    assert all(v.dropout is None and v.mixup_alpha == v.cutmix_alpha == 0 for v in plan)
    large = plan_stages("efficientnetv2_l", max_epochs=8, stages=4, max_image_size=384, schedule="official")
    assert [v.image_size for v in large] == [192, 256, 320, 384]
    assert [v.cutmix_alpha for v in large] == pytest.approx([0, 0.1667, 0.3333, 0.5], abs=1e-4)
    assert large[-1].randaugment_magnitude == 20


def test_official_levels_are_numpy_linspace_unrounded():
    # main.py: ram_list = np.linspace(5, config.data.ram, total_stages), each handed on as a float;
    # mixup_list / cutmix_list = np.linspace(0, alpha, total_stages)
    np = pytest.importorskip("numpy")
    for variant, size, level, mix in (("efficientnetv2_s", 300, 10, 0.0), ("efficientnetv2_m", 384, 15, 0.2)):
        plan = plan_stages(variant, max_epochs=8, stages=4, max_image_size=size, schedule="official")
        assert [v.randaugment_magnitude for v in plan] == pytest.approx(list(np.linspace(5, level, 4)), abs=1e-12)
        assert [v.mixup_alpha for v in plan] == pytest.approx(list(np.linspace(0, mix, 4)), abs=1e-12)
        assert not any(v.autoaugment for v in plan)


@pytest.mark.parametrize("variant, size, sizes", [
    ("efficientnetv2_b0", 192, [144, 160, 176, 192]), ("efficientnetv2_b3", 240, [156, 184, 212, 240]),
    ("efficientnet_b0", 192, [144, 160, 176, 192]), ("efficientnet_b4", 192, [144, 160, 176, 192]),
])
def test_official_schedule_gives_b0_to_b3_and_v1_autoaugment_not_the_randaugment_ramp(variant, size, sizes):
    # effnetv2_configs.py: V2-B0..B3 are (..., randaug 0, mixup 0, 'effnetv1_autoaug'), V1 'effnetv1_autoaug';
    # main.py: int(ibase + (train size - ibase) * (i + 1) / 4) with ibase 128 (hparams.py data.ibase)
    plan = plan_stages(variant, max_epochs=8, stages=4, max_image_size=size, schedule="official")
    assert all(v.autoaugment and v.randaugment_magnitude == 0 for v in plan)
    assert all(v.mixup_alpha == v.cutmix_alpha == 0 for v in plan)
    assert [v.image_size for v in plan] == sizes
    paper = plan_stages(variant, max_epochs=8, stages=4, max_image_size=size, schedule="paper")
    assert not any(v.autoaugment for v in paper)  # the paper schedule has no B0-B3 row: S's ramp, documented


def test_never_an_empty_stage():
    plan = plan_stages("efficientnetv2_s", max_epochs=3, stages=4, max_image_size=64)
    assert len(plan) == 3 and [(v.first_epoch, v.last_epoch) for v in plan] == [(0, 0), (1, 1), (2, 2)]


class Record(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.current_epoch, batch[0].shape[-1], pl_module.model.dropout.p))


def test_stage_values_reach_the_batches_and_the_dropout(image_folder):
    """The plain Lightning way: the callback plans from trainer.datamodule, the datamodule
    builds a new train loader when the stage changes (reload_dataloaders_every_n_epochs)."""
    cfg = load_config([], [f"data.source={image_folder}", "data.image_size=32", "data.eval_image_size=32",
                           "data.batch_size=8", "data.num_workers=0", "data.val_fraction=0.25",
                           "model.width_mult=0.25", "model.depth_mult=0.25", "progressive.enabled=true",
                           "progressive.stages=2", "trainer.max_epochs=2"])
    dm = ImageDataModule(cfg.data, cfg.aug, seed=0)
    dm.setup("fit")
    module = ImageClassifier(cfg, dm.num_classes)
    record, progressive = Record(), ProgressiveLearning(cfg.progressive, cfg.model.variant)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, reload_dataloaders_every_n_epochs=1,
                        callbacks=[progressive, record])
    trainer.fit(module, datamodule=dm)
    by_epoch = {epoch: (size, p) for epoch, size, p in record.seen}
    assert by_epoch == {0: (16, 0.1), 1: (32, 0.3)}
    assert len({(e, s) for e, s, _ in record.seen}) == 2  # every batch of an epoch at its stage's size
    assert trainer.callback_metrics["progressive/image_size"] == 32
    assert [v["image_size"] for v in progressive.describe()] == [16, 32]
