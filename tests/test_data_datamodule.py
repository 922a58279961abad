"""The datamodule: splits, changing augmentation between epochs, streaming shards over ranks
and workers, Lightning integration, and building from config."""
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import datasets  # noqa: E402
import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.utils.data  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from PIL import Image  # noqa: E402

import fmb.data.datamodule as datamodule_module  # noqa: E402
from fmb.data import FmbDataLoader, ImageDataModule, build_datamodule, stratified_split  # noqa: E402
from fmb.errors import FmbError  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"


def unique_label_set(n):
    """n tiny images, each its own class, so a label identifies the example."""
    images = [Image.fromarray(np.full((4, 5, 3), i % 256, dtype=np.uint8)) for i in range(n)]
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"e{i}" for i in range(n)])})
    return datasets.Dataset.from_dict({"image": images, "label": list(range(n))}, features=features)


def module(source, tmp_path, **kwargs):
    defaults = dict(image_size=8, batch_size=4, num_workers=0, cache_dir=str(tmp_path / "cache"))
    return ImageDataModule(source=str(source), **{**defaults, **kwargs})


def test_stratified_carve_is_seeded_disjoint_and_complete():
    labels = np.repeat(np.arange(5), [10, 20, 30, 7, 3])
    train, val = stratified_split(labels, 0.2, seed=3)
    assert len(val) == 14 and len(np.intersect1d(train, val)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(70))
    assert np.bincount(labels[val], minlength=5).tolist()[:3] == [2, 4, 6]
    again, _ = stratified_split(labels, 0.2, seed=3)
    other, _ = stratified_split(labels, 0.2, seed=4)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_digits_carve_matches_across_modules(tmp_path):
    first, second = module("digits", tmp_path, seed=1), module("digits", tmp_path, seed=1)
    first.setup("fit"), second.setup("fit")
    assert np.array_equal(first._splits["val"][1], second._splits["val"][1])
    labels = np.asarray(first._splits["train"][0]["label"])[first._splits["val"][1]]
    assert set(np.bincount(labels)) <= {17, 18, 19}  # ~10% of each digit's ~180


def test_eval_size_and_batches(tmp_path):
    dm = module("digits", tmp_path, cache_dir=str(tmp_path), image_size=12, eval_image_size=20, batch_size=32)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert len(train) == 1617 // 32 and len(val) == -(-180 // 32)  # drop_last on train only
    images, labels = next(iter(train))
    assert images.shape == (32, 3, 12, 12) and labels.dtype == torch.int64
    images, labels = next(iter(val))
    assert images.shape == (32, 3, 20, 20) and labels.dtype == torch.int64
    assert abs(float(images.mean())) < 3  # normalized, not 0..255


def test_changed_augmentation_reaches_persistent_workers_next_epoch(tmp_path):
    dm = module("digits", tmp_path, cache_dir=str(tmp_path), num_workers=2, persistent_workers=True, batch_size=256)
    loader = dm.train_dataloader()
    first = {tuple(images.shape[-2:]) for images, _ in loader}
    dm.set_augmentation(image_size=16, randaugment_magnitude=9, mixup_alpha=0.4, cutmix_alpha=1.0)
    batches = list(loader)  # same loader, same worker processes
    assert first == {(8, 8)}
    assert {tuple(images.shape[-2:]) for images, _ in batches} == {(16, 16)}
    assert all(targets.shape == (256, 10) and targets.dtype == torch.float32 for _, targets in batches)
    dm.set_augmentation(mixup_alpha=0.0, cutmix_alpha=0.0)
    assert next(iter(loader))[1].dtype == torch.int64


# ---- streaming ------------------------------------------------------------------------------
def stream_module(tmp_path, n, **kwargs):
    datasets.DatasetDict({"train": unique_label_set(n), "validation": unique_label_set(4)}) \
        .save_to_disk(str(tmp_path / "set"))
    return module(tmp_path / "set", tmp_path, streaming=True, **kwargs)


def simulate(monkeypatch, dm, rank, world, workers, role="train"):
    """Labels one rank yields with ``workers`` loader workers, run one after another here."""
    monkeypatch.setattr(datamodule_module, "_rank_and_world", lambda trainer: (rank, world))
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
    loader = dm.train_dataloader()
    epoch0 = torch.cat([labels for _, labels in loader]).tolist()
    epoch1 = torch.cat([labels for _, labels in loader]).tolist()
    assert dm.state.epoch == 1 and epoch0 != epoch1 and sorted(epoch0) != epoch0
    dm.set_epoch(0)
    assert torch.cat([labels for _, labels in loader]).tolist() == epoch0


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
    assert isinstance(rebuilt, FmbDataLoader) and rebuilt.sampler is sampler and rebuilt.fmb_hooks is loader.fmb_hooks
    assert next(iter(rebuilt))[0].shape == (4, 3, 8, 8)


class _TinyModel(L.LightningModule):
    def __init__(self, datamodule):
        super().__init__()
        self.datamodule, self.layer, self.sizes = datamodule, torch.nn.Linear(3, datamodule.num_classes), []

    def on_train_epoch_start(self):  # how progressive learning is meant to call it
        self.datamodule.set_augmentation(image_size=8 + 4 * self.current_epoch)

    def training_step(self, batch, _):
        images, labels = batch
        self.sizes.append((self.current_epoch, images.shape[-1]))
        return torch.nn.functional.cross_entropy(self.layer(images.mean((2, 3))), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("streaming", [False, True])
def test_trainer_sees_new_size_each_epoch(tmp_path, streaming):
    unique_label_set(32).save_to_disk(str(tmp_path / "set"))
    dm = module(tmp_path / "set", tmp_path, streaming=streaming, val_split=None)
    model = _TinyModel(dm)
    trainer = L.Trainer(max_epochs=3, limit_train_batches=2, limit_val_batches=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(model, datamodule=dm)
    assert sorted(set(model.sizes)) == [(0, 8), (1, 12), (2, 16)]
    if streaming:
        assert dm.state.epoch == 2


# ---- config ---------------------------------------------------------------------------------
def test_build_datamodule_from_config(tmp_path):
    data = OmegaConf.create({"source": "digits", "image_size": 12, "batch_size": 8, "num_workers": 0,
                             "cache_dir": str(tmp_path), "val_split": None, "eval_image_size": None})
    aug = OmegaConf.create({"randaugment_magnitude": 5, "mixup_alpha": 0.2, "cutmix_alpha": 0.0,
                            "label_smoothing": 0.1})
    dm = build_datamodule(data, aug, seed=7)
    assert dm.seed == 7 and dm.batch_size == 8 and dm.eval_image_size == 12
    assert dm.state.get("mixup_alpha") == pytest.approx(0.2)
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 12, 12) and targets.shape == (8, 10)


def test_build_datamodule_rejects_unknown_keys():
    with pytest.raises(FmbError, match="did you mean 'data.image_size'"):
        build_datamodule({"source": "digits", "img_size": 3}, {}, seed=0)
    with pytest.raises(FmbError, match="aug.mixup_alpha"):
        build_datamodule({"source": "digits"}, {"mixup": 0.2}, seed=0)


@pytest.mark.parametrize("name", ["digits", "cifar10", "cifar100", "food101", "imagenet"])
def test_data_configs_build(name):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert set(cfg.data) >= {"source", "name", "train_split", "val_split", "test_split", "val_fraction",
                             "image_column", "label_column", "image_size", "eval_image_size", "batch_size",
                             "num_workers", "streaming"}
    dm = build_datamodule(cfg.data, {}, seed=0)  # builds without touching the network
    assert dm.source == cfg.data.source
