"""Every kind of data.source, column detection, and every bad input as a one-line FmbError."""
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from fmb.config import AugConfig, DataConfig  # noqa: E402
from fmb.errors import unwrap_worker_error  # noqa: E402
from fmb.data import ImageDataModule, digits_dataset  # noqa: E402
from fmb.errors import FmbError  # noqa: E402

MODES = ["L", "LA", "P", "RGBA", "CMYK", "I;16", "RGB"]


def write_folder(root, classes=("cat", "dog"), per_class=7):
    """An image folder with one sub-folder per class, mixed modes and sizes."""
    for c, name in enumerate(classes):
        os.makedirs(root / name)
        for i in range(per_class):
            mode, size = MODES[i % len(MODES)], (4 + 3 * i, 6 + i)
            if mode == "I;16":
                image = Image.fromarray(np.full(size[::-1], 1000 * (i + 1), dtype=np.uint16))
            else:
                image = Image.new(mode, size, color=(c * 100) if mode in ("L", "P") else None)
            image.save(root / name / f"{i}.{'jpg' if mode == 'CMYK' else 'png'}")
    return root


def small_dataset(n=20, classes=4, label_feature="classlabel", size=6):
    images = [Image.fromarray(np.full((size, size + i % 3, 3), i * 10, dtype=np.uint8)) for i in range(n)]
    labels = [i % classes for i in range(n)]
    label_type = datasets.ClassLabel(names=[f"c{i}" for i in range(classes)])
    if label_feature == "int":
        label_type = datasets.Value("int64")
    elif label_feature == "str":
        label_type, labels = datasets.Value("string"), [f"k{v}" for v in labels]
    elif label_feature == "float":
        label_type, labels = datasets.Value("float32"), [float(v) for v in labels]
    return datasets.Dataset.from_dict({"image": images, "label": labels},
                                      features=datasets.Features({"image": datasets.Image(), "label": label_type}))


def module(source, tmp_path, **kwargs):
    defaults = dict(image_size=16, eval_image_size=16, batch_size=4, num_workers=0, cache_dir=str(tmp_path / "cache"))
    return ImageDataModule(DataConfig(source=str(source), **{**defaults, **kwargs}), AugConfig())


def test_image_folder_with_mixed_modes_and_sizes(tmp_path):
    dm = module(write_folder(tmp_path / "pets"), tmp_path, val_fraction=0.3)
    dm.setup("fit")
    assert dm.class_names == ["cat", "dog"] and dm.num_classes == 2
    assert dm.split_sizes() == {"train": 9, "val": 5}  # datasets rounds the held-out share up: 0.3 x 14 → 5
    seen = []
    for images, labels in dm.train_dataloader():
        assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32 and labels.dtype == torch.int64
        seen += labels.tolist()
    assert len(seen) == 8 and set(seen) <= {0, 1}  # drop_last on train
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 16, 16)
    assert dm.native_image_size is not None and dm.native_image_size >= 6


def test_parquet_with_integer_labels(tmp_path):
    small_dataset(label_feature="int").to_parquet(str(tmp_path / "part.parquet"))
    dm = module(tmp_path / "part.parquet", tmp_path)
    assert dm.num_classes == 4 and dm.class_names == ["0", "1", "2", "3"]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and labels.max() < 4


def test_parquet_glob_with_string_labels_are_encoded(tmp_path):
    ds = small_dataset(label_feature="str")
    ds.select(range(10)).to_parquet(str(tmp_path / "a.parquet"))
    ds.select(range(10, 20)).to_parquet(str(tmp_path / "b.parquet"))
    dm = module(tmp_path / "*.parquet", tmp_path)
    assert dm.class_names == ["k0", "k1", "k2", "k3"]
    assert sum(dm.split_sizes().values()) == 20
    _, labels = next(iter(dm.val_dataloader()))
    assert labels.dtype == torch.int64


def test_save_to_disk_dict_uses_its_splits(tmp_path):
    datasets.DatasetDict({"train": small_dataset(20), "validation": small_dataset(8), "test": small_dataset(4)}) \
        .save_to_disk(str(tmp_path / "saved"))
    dm = module(tmp_path / "saved", tmp_path)
    dm.setup("test")
    assert dm.split_sizes() == {"train": 20, "val": 8, "test": 4}
    assert dm.class_names == ["c0", "c1", "c2", "c3"]
    assert len(list(dm.test_dataloader())) == 1


def test_csv_with_image_paths(tmp_path):
    folder = write_folder(tmp_path / "pets")
    rows = ["file,label"] + [f"{folder / c / f'{i}.png'},{c}" for c in ("cat", "dog") for i in (0, 1, 3, 5)]
    (tmp_path / "list.csv").write_text("\n".join(rows))
    dm = module(tmp_path / "list.csv", tmp_path, image_column="file", val_fraction=0.25)
    assert dm.class_names == ["cat", "dog"]
    images, _ = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16)


def test_digits_are_built_once_and_cached(tmp_path):
    ds = digits_dataset(tmp_path)
    assert len(ds) == 1797 and ds.features["label"].names == [str(d) for d in range(10)]
    assert isinstance(ds.features["image"], datasets.Image) and ds[0]["image"].size == (8, 8)
    stamp = os.path.getmtime(tmp_path / "digits-v1" / "dataset_info.json")
    digits_dataset(tmp_path)
    assert os.path.getmtime(tmp_path / "digits-v1" / "dataset_info.json") == stamp
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".digits-")]  # no half-written leftovers
    dm = module("digits", tmp_path, cache_dir=str(tmp_path))
    assert dm.num_classes == 10 and dm.native_image_size == 8
    assert dm.split_sizes() == {"train": 1617, "val": 180}


def test_synthetic_needs_no_files(tmp_path):
    dm = module("synthetic", tmp_path, synthetic_size=40, synthetic_classes=5)
    assert dm.num_classes == 5 and dm.native_image_size is None
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 16, 16) and labels.dtype == torch.int64
    assert len(dm.train_dataloader()) == 10


# ---- bad input ------------------------------------------------------------------------------
def one_line(error):
    assert "\n" not in str(error.value)
    return str(error.value)


def test_hub_id_offline_says_how_to_use_a_local_copy(tmp_path):
    with pytest.raises(FmbError) as error:
        module("some-org/not-cached-set", tmp_path).setup()
    assert "some-org/not-cached-set" in one_line(error) and "data.source=/path/to/folder" in str(error.value)


def test_missing_local_path(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FmbError, match="does not exist") as error:
        module(tmp_path / "imagse", tmp_path).setup()
    assert "images" in one_line(error)


def test_no_image_column_lists_columns(tmp_path):
    datasets.Dataset.from_dict({"x": [1, 2], "label": [0, 1]}).to_parquet(str(tmp_path / "t.parquet"))
    with pytest.raises(FmbError, match="no image column") as error:
        module(tmp_path / "t.parquet", tmp_path).setup()
    assert "x:int64" in one_line(error) and "data.image_column" in str(error.value)


def test_several_image_columns(tmp_path):
    ds = small_dataset(20).add_column("thumb", [None] * 20).cast_column("thumb", datasets.Image())
    ds.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(FmbError, match="several image columns") as error:
        module(tmp_path / "two", tmp_path).setup()
    assert "image, thumb" in one_line(error) and "data.image_column" in str(error.value)
    dm = module(tmp_path / "two", tmp_path, image_column="image")
    assert dm.num_classes == 4


def test_unknown_column_override_names_nearest(tmp_path):
    small_dataset(8).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(FmbError, match="did you mean 'label'"):
        module(tmp_path / "ds", tmp_path, label_column="lable").setup()


def test_unusable_label_type(tmp_path):
    small_dataset(8, label_feature="float").save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(FmbError, match="label column 'label' has type float32") as error:
        module(tmp_path / "ds", tmp_path).setup()
    one_line(error)


def test_missing_split_lists_splits(tmp_path):
    datasets.DatasetDict({"train": small_dataset(8), "test": small_dataset(4)}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(FmbError, match="expected one of train, test") as error:
        module(tmp_path / "ds", tmp_path, val_split="validaton").setup()
    one_line(error)
    with pytest.raises(FmbError, match="did you mean 'train'"):
        module(tmp_path / "ds", tmp_path, train_split="trian").setup()


def test_empty_split(tmp_path):
    (tmp_path / "ds").mkdir()
    small_dataset(8).to_parquet(str(tmp_path / "ds" / "train.parquet"))
    small_dataset(8).select([]).to_parquet(str(tmp_path / "ds" / "validation.parquet"))
    with pytest.raises(FmbError, match="split 'validation' .* is empty") as error:
        module(tmp_path / "ds", tmp_path).setup()
    one_line(error)
    datasets.DatasetDict({"train": small_dataset(8), "test": small_dataset(8).select([])}) \
        .save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(FmbError, match="split 'test' .* is empty"):
        module(tmp_path / "saved", tmp_path).setup()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1.5])
def test_val_fraction_outside_open_interval(tmp_path, fraction):
    with pytest.raises(FmbError, match=r"val_fraction.*\(0, 1\)"):
        module("digits", tmp_path, val_fraction=fraction)


def test_val_fraction_too_large_for_the_data(tmp_path):
    small_dataset(8).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(FmbError, match="leaves an empty training or held-out set"):
        module(tmp_path / "ds", tmp_path, val_fraction=0.99).setup()


def test_a_class_too_small_to_stratify_still_gets_a_validation_set(tmp_path):
    small_dataset(8).save_to_disk(str(tmp_path / "ds"))
    dm = module(tmp_path / "ds", tmp_path, val_fraction=0.01)  # one example, fewer than the classes
    dm.setup()
    assert dm.split_sizes() == {"train": 7, "val": 1}


def test_bad_option_values(tmp_path):
    with pytest.raises(FmbError, match="did you mean 'skip'"):
        module("digits", tmp_path, on_bad_image="skp")
    with pytest.raises(FmbError, match="batch_size"):
        module("digits", tmp_path, batch_size=0)
    with pytest.raises(FmbError, match="crop_ratio"):
        module("digits", tmp_path, crop_ratio=1.5)


def corrupt_set(tmp_path, bad=(3,)):
    ds = small_dataset(12, classes=2).cast_column("image", datasets.Image(decode=False))
    table = ds.to_dict()
    for i in bad:
        table["image"][i] = {"bytes": b"\x89PNG broken", "path": None}
    datasets.Dataset.from_dict(table, features=ds.features).save_to_disk(str(tmp_path / "bad"))
    return tmp_path / "bad"


def test_corrupt_image_error_names_the_index(tmp_path):
    dm = module(corrupt_set(tmp_path), tmp_path, val_fraction=0.5, batch_size=2)  # every row read: no drop_last
    dm.setup("fit")
    with pytest.raises(FmbError, match="corrupt image at index 3 of split 'train'") as error:
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            for _ in loader:
                pass
    assert "data.on_bad_image=skip" in one_line(error)


def test_corrupt_image_error_from_a_worker_stays_one_line(tmp_path):
    dm = module(corrupt_set(tmp_path), tmp_path, val_fraction=0.5, batch_size=2, num_workers=1, persistent_workers=False)
    with pytest.raises(FmbError, match="corrupt image at index 3") as error:
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            for _ in loader:
                pass
    # torch re-raises it with the worker's traceback as its text; the CLI and train() unwrap it
    assert "\n" not in str(unwrap_worker_error(error.value))


def test_corrupt_images_skipped_and_counted(tmp_path, caplog):
    dm = module(corrupt_set(tmp_path, bad=(3, 7)), tmp_path, on_bad_image="skip", val_fraction=0.5, batch_size=6)
    dm.setup("fit")
    with caplog.at_level("WARNING"):
        sizes = [len(images) for images, _ in dm.train_dataloader()]
        sizes += [len(images) for images, _ in dm.val_dataloader()]
    assert sum(sizes) == 10 and dm.skipped_images == 2
