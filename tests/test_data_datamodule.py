"""The datamodule: splits, a new train loader per progressive stage, streaming shards over
ranks and workers, Lightning integration, and building from config sections."""
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import itertools  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import datasets  # noqa: E402
import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.utils.data  # noqa: E402
from PIL import Image  # noqa: E402

from fmb.config import AugConfig, DataConfig, load_config  # noqa: E402
from fmb.data import ImageDataModule  # noqa: E402
from fmb.errors import FmbError  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"


def unique_label_set(n):
    """n tiny images, each its own class, so a label identifies the example."""
    images = [Image.fromarray(np.full((4, 5, 3), i % 256, dtype=np.uint8)) for i in range(n)]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"e{i}" for i in range(n)])})
    return datasets.Dataset.from_dict({"image": images, "label": list(range(n))}, features=features)


def module(source, tmp_path, seed=0, aug=None, **data):
    defaults = dict(image_size=16, eval_image_size=16, batch_size=4, num_workers=0, cache_dir=str(tmp_path / "cache"))
    return ImageDataModule(DataConfig(source=str(source), **{**defaults, **data}), AugConfig(**(aug or {})), seed=seed)


def _val_rows(dm):
    hf, _, rows = dm.splits["val"]
    return hf.select(rows)


def _val_images(dm):
    return sorted(bytes(row["bytes"]) for row in _val_rows(dm)["image"])


def test_carve_is_stratified_and_follows_the_split_seed_not_the_run_seed(tmp_path):
    first, second = module("digits", tmp_path, seed=1), module("digits", tmp_path, seed=2)
    first.setup("fit"), second.setup("fit")
    assert _val_images(first) == _val_images(second)  # every run seed: the same validation images
    labels = np.asarray(_val_rows(first)["label"])
    assert len(labels) == 180 and set(np.bincount(labels)) <= {17, 18, 19}  # ~10% of each digit's ~180
    other = module("digits", tmp_path, split_seed=5)
    other.setup("fit")
    assert _val_images(other) != _val_images(first)
    assert first.split_sizes() == {"train": 1617, "val": 180}


def test_integer_and_string_labels_are_carved_too(tmp_path):
    images = [Image.fromarray(np.full((4, 4, 3), i, dtype=np.uint8)) for i in range(40)]
    for labels in ([i % 4 for i in range(40)], [f"c{i % 4}" for i in range(40)]):
        datasets.Dataset.from_dict({"image": images, "label": labels}).save_to_disk(str(tmp_path / "plain"))
        dm = module(tmp_path / "plain", tmp_path, val_fraction=0.25)
        dm.setup("fit")
        val = np.bincount(_val_rows(dm)["label"], minlength=4)
        assert dm.num_classes == 4 and val.sum() == 10 and set(val) <= {2, 3}
        import shutil
        shutil.rmtree(tmp_path / "plain")


def test_a_class_label_with_one_class_in_use_is_refused(tmp_path):
    images = [Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8))] * 8
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    datasets.Dataset.from_dict({"image": images, "label": [1] * 8}, features=features).save_to_disk(str(tmp_path / "cl"))
    with pytest.raises(FmbError, match=r"has the same label \(b\); expected at least 2 classes in use"):
        module(tmp_path / "cl", tmp_path).setup("fit")


def test_one_class_is_refused(tmp_path):
    images = [Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8))] * 8
    datasets.Dataset.from_dict({"image": images, "label": [0] * 8}).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(FmbError, match="expected at least 2 classes"):
        module(tmp_path / "one", tmp_path).setup("fit")


def test_eval_size_and_batches(tmp_path):
    dm = module("digits", tmp_path, cache_dir=str(tmp_path), image_size=16, eval_image_size=20, batch_size=32)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert len(train) == 1617 // 32 and len(val) == -(-180 // 32)  # drop_last on train only
    images, labels = next(iter(train))
    assert images.shape == (32, 3, 16, 16) and labels.dtype == torch.int64
    images, labels = next(iter(val))
    assert images.shape == (32, 3, 20, 20) and labels.dtype == torch.int64
    assert abs(float(images.mean())) < 3  # normalized, not 0..255


@pytest.mark.slow
def test_a_new_stage_gets_a_new_train_loader_and_an_unchanged_one_keeps_it(tmp_path):
    dm = module("digits", tmp_path, cache_dir=str(tmp_path), num_workers=1, persistent_workers=True, batch_size=256)
    loader = dm.train_dataloader()
    # two batches of each epoch: every batch of a stage goes through the same transform
    assert {tuple(images.shape[-2:]) for images, _ in itertools.islice(loader, 2)} == {(16, 16)}
    assert dm.train_dataloader() is loader  # same values: the same loader and its workers
    dm.set_train_stage(image_size=24, randaugment_magnitude=9, mixup_alpha=0.4)
    changed = dm.train_dataloader()
    batches = list(itertools.islice(changed, 2))
    assert changed is not loader and {tuple(images.shape[-2:]) for images, _ in batches} == {(24, 24)}
    assert all(targets.shape == (256, 10) and targets.dtype == torch.float32 for _, targets in batches)
    dm.set_train_stage(mixup_alpha=0.0)
    assert next(iter(dm.train_dataloader()))[1].dtype == torch.int64


# ---- streaming ------------------------------------------------------------------------------
def stream_module(tmp_path, n, **kwargs):
    datasets.DatasetDict({"train": unique_label_set(n), "validation": unique_label_set(4)}) \
        .save_to_disk(str(tmp_path / "set"))
    return module(tmp_path / "set", tmp_path, streaming=True, **kwargs)


def simulate(monkeypatch, dm, rank, world, workers, role="train"):
    """Labels one rank yields with ``workers`` loader workers, run one after another here."""
    monkeypatch.setattr(dm, "_rank_and_world", lambda: (rank, world))
    dataset = dm._dataset(role)
    out = []
    for worker in range(workers):
        info = SimpleNamespace(id=worker, num_workers=workers, seed=0, dataset=dataset)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)
        out.append([label for _, label in dataset])
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: None)
    return out


@pytest.mark.parametrize("n,world,workers", [(48, 2, 2), (50, 2, 2), (45, 3, 1)])
def test_stream_shards_are_disjoint_complete_and_equal(tmp_path, monkeypatch, n, world, workers):
    dm = stream_module(tmp_path, n)
    dm.setup("fit")
    per_rank = [simulate(monkeypatch, dm, rank, world, workers) for rank in range(world)]
    steps = (n // world) // 4
    seen = [label for rank in per_rank for worker in rank for label in worker]
    assert len(seen) == len(set(seen))  # disjoint over ranks and workers
    assert len(seen) >= n - world * 4  # complete up to the truncation to equal full batches
    for rank in per_rank:  # every rank: the same number of full batches
        assert sum(len(worker) for worker in rank) == steps * 4
        assert all(len(worker) % 4 == 0 for worker in rank)


def test_stream_validation_is_one_complete_pass(tmp_path, monkeypatch):
    datasets.DatasetDict({"train": unique_label_set(16), "validation": unique_label_set(10)}) \
        .save_to_disk(str(tmp_path / "dd"))
    dm = module(tmp_path / "dd", tmp_path, streaming=True)
    seen = [label for rank in range(2) for worker in simulate(monkeypatch, dm, rank, 2, 1, role="val")
            for label in worker]
    assert sorted(seen) == list(range(10))


def test_stream_reshuffles_each_epoch(tmp_path):
    dm = stream_module(tmp_path, 40, shuffle_buffer=40, batch_size=8)
    epochs = []
    for epoch in (0, 1, 0):
        dm.trainer = SimpleNamespace(current_epoch=epoch, global_rank=0, world_size=1)
        epochs.append(torch.cat([labels for _, labels in dm.train_dataloader()]).tolist())
    assert epochs[0] != epochs[1] and sorted(epochs[0]) != epochs[0] and epochs[2] == epochs[0]


@pytest.mark.slow
def test_stream_from_one_parquet_file_uses_one_worker(tmp_path):
    unique_label_set(24).to_parquet(str(tmp_path / "one.parquet"))
    dm = module(tmp_path / "one.parquet", tmp_path, streaming=True, num_workers=2)
    loader = dm.train_dataloader()
    assert loader.num_workers == 1 and len(loader) == len(list(loader))


# ---- Lightning ------------------------------------------------------------------------------
def test_lightning_can_inject_a_distributed_sampler(tmp_path):
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import DistributedSampler

    dm = module("digits", tmp_path, cache_dir=str(tmp_path))
    loader = dm.train_dataloader()
    sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=1, shuffle=True)
    rebuilt = _update_dataloader(loader, sampler)
    assert rebuilt.sampler is sampler and next(iter(rebuilt))[0].shape == (4, 3, 16, 16)


class _TinyModel(L.LightningModule):
    def __init__(self, datamodule):
        super().__init__()
        self.datamodule, self.layer, self.sizes = datamodule, torch.nn.Linear(3, datamodule.num_classes), []

    def on_train_epoch_end(self):  # how progressive learning calls it: values for the next epoch
        self.datamodule.set_train_stage(image_size=16 + 4 * (self.current_epoch + 1))

    def training_step(self, batch, _):
        images, labels = batch
        self.sizes.append((self.current_epoch, images.shape[-1]))
        return torch.nn.functional.cross_entropy(self.layer(images.mean((2, 3))), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("streaming", [False, True])
def test_trainer_sees_new_size_each_epoch(tmp_path, streaming):
    unique_label_set(32).cast_column("label", datasets.Value("int64")).map(lambda row: {"label": row["label"] % 4}) \
        .save_to_disk(str(tmp_path / "set"))
    dm = module(tmp_path / "set", tmp_path, streaming=streaming, val_split=None, val_fraction=0.25)
    model = _TinyModel(dm)
    trainer = L.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, accelerator="cpu", reload_dataloaders_every_n_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert sorted(set(model.sizes)) == [(0, 16), (1, 20), (2, 24)]


# ---- config ---------------------------------------------------------------------------------
def test_datamodule_takes_the_config_sections_whole(tmp_path):
    cfg = load_config([], ["data.source=digits", "data.image_size=24", "data.batch_size=8", "data.num_workers=0",
                           f"data.cache_dir={tmp_path}", "aug.randaugment_magnitude=5", "aug.mixup_alpha=0.2"])
    dm = ImageDataModule(cfg.data, cfg.aug, seed=7, variant_sizes=(300, 384))
    dm.setup("fit")
    assert dm.seed == 7 and (dm.image_size, dm.eval_image_size) == (24, 32)  # eval scaled as V2-S's 300→384
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 24, 24) and targets.shape == (8, 10)


def test_null_sizes_follow_the_variant_capped_for_small_images(tmp_path):
    dm = ImageDataModule(DataConfig(source="digits", cache_dir=str(tmp_path)), AugConfig(), variant_sizes=(300, 384))
    dm.setup("fit")
    assert (dm.image_size, dm.eval_image_size) == (32, 40)  # 8 px digits: at most 4x upscaled
    with pytest.raises(FmbError, match="no model sizes"):
        ImageDataModule(DataConfig(source="digits", cache_dir=str(tmp_path)), AugConfig()).setup("fit")


@pytest.mark.parametrize("name", ["digits", "cifar10", "cifar100", "food101", "imagenet"])
def test_data_presets_build(name):
    cfg = load_config([], [f"data={name}"])
    dm = ImageDataModule(cfg.data, cfg.aug, seed=0, variant_sizes=(300, 384))  # builds without the network
    assert dm.data.source == cfg.data.source


def test_a_run_loads_its_source_once(image_folder, tmp_path, monkeypatch):
    """fmb prepares the data before the Trainer exists and Lightning prepares it again in fit():
    `datasets` lists the folder's files once, not on each of those calls and again in setup."""
    import fmb.data.datamodule
    import fmb.data.splits
    from conftest import tiny_train_overrides
    from fmb.data.sources import load_source
    from fmb.training.run import train

    loads = []

    def counted(*args, **kwargs):
        loads.append(args[0])
        return load_source(*args, **kwargs)
    for home in (fmb.data.datamodule, fmb.data.splits):
        monkeypatch.setattr(home, "load_source", counted)
    summary = train(load_config([], tiny_train_overrides(image_folder, tmp_path / "run",
                                                         **{"trainer.fast_dev_run": True})))
    assert summary["status"] == "completed"
    assert loads == [str(image_folder)]
