"""fmb predict: top-k over files, folders and datasets; broken images reported, counted, skipped;
the same preprocessing as fmb eval; predict_step for Trainer.predict."""
import csv
import json
import shutil

import pytest
import torch

from fmb.errors import FmbError
from fmb.inference.predict import predict


def test_predict_folder_with_a_broken_image(run_cli, tiny_checkpoint, tmp_path):
    ckpt, _, images = tiny_checkpoint
    folder = tmp_path / "photos"
    shutil.copytree(images, folder)
    (folder / "dog" / "broken.png").write_bytes(b"\x89PNG but not really")
    (folder / "notes.txt").write_text("not an image, not counted")
    out_csv, out_json = tmp_path / "p.csv", tmp_path / "p.json"
    result = run_cli("predict", ckpt, folder, "--top-k", "2", "--csv", out_csv, "--json", out_json, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "broken.png" in result.stderr and "1 unreadable image(s) skipped" in result.stderr
    assert "top-1" in result.stdout and "top-2" in result.stdout
    payload = json.loads(out_json.read_text())
    assert payload["images"] == 36 and payload["skipped_count"] == 1
    assert payload["skipped"][0]["input"].endswith("broken.png") and payload["weights"] == "ema"
    for row in payload["predictions"]:
        probs = [t["prob"] for t in row["top"]]
        assert len(probs) == 2 and probs[0] >= probs[1] and 0.0 < sum(probs) <= 1.0 + 1e-6
        assert {t["label"] for t in row["top"]} <= {"cat", "dog", "owl"}
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 36 and list(rows[0]) == ["input", "label_1", "prob_1", "label_2", "prob_2"]
    assert [r["input"] for r in rows] == [p["input"] for p in payload["predictions"]]


@pytest.mark.slow
def test_predict_uses_the_eval_preprocessing(tiny_checkpoint):
    """Accuracy of predict's top-1 over the folder (class = sub-folder) equals fmb eval's over
    the same 36 images, and with --no-ema too: same transform, same weights."""
    from fmb.training.evaluate import evaluate

    ckpt, _, images = tiny_checkpoint
    for ema in (True, False):
        result = predict(ckpt, [images], top_k=1, device="cpu", ema=ema)
        hits = [p["top"][0]["label"] == p["input"].split("/")[-2] for p in result.predictions]
        evaluated = evaluate(ckpt, split="train", ema=ema, device="cpu")
        assert evaluated["images"] == len(hits) == 36
        assert sum(hits) / len(hits) == pytest.approx(evaluated["top1"], abs=1e-6)
        assert result.weights == evaluated["weights"] == ("ema" if ema else "raw")


@pytest.mark.slow
def test_predict_files_and_a_saved_dataset(tiny_checkpoint, tmp_path):
    import datasets

    ckpt, _, images = tiny_checkpoint
    saved = tmp_path / "saved"
    ds = datasets.load_dataset("imagefolder", data_dir=str(images), split="train")
    datasets.DatasetDict({"train": ds, "test": ds.select(range(5))}).save_to_disk(str(saved))
    files = [images / "cat" / "0.png", images / "owl" / "3.png"]
    result = predict(ckpt, [*files, saved], top_k=5, batch_size=4, device="cpu", precision="bf16")
    names = [p["input"] for p in result.predictions]
    assert names[:2] == [str(f) for f in files]
    assert names[2:] == [f"{saved}[test][{i}]" for i in range(5)]  # the test split by default
    assert result.top_k == 3  # capped at the number of classes
    assert len(predict(ckpt, [saved], split="train", device="cpu").predictions) == 36
    with pytest.raises(FmbError, match="has no split 'nope'; expected one of train, test"):
        predict(ckpt, [saved], split="nope", device="cpu")
    with pytest.raises(FmbError, match="does not exist"):
        predict(ckpt, [tmp_path / "missing.png"], device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FmbError, match="holds no images"):
        predict(ckpt, [tmp_path / "empty"], device="cpu")


def test_predict_step_in_trainer_predict(tiny_checkpoint):
    import lightning as L

    from fmb.data import ImageDataModule
    from fmb.training.evaluate import load_checkpoint, restore_module

    ckpt, _, _ = tiny_checkpoint
    module = restore_module(load_checkpoint(ckpt))
    datamodule = ImageDataModule(module.cfg.data, module.cfg.aug)
    datamodule.setup("validate")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    batches = trainer.predict(module, dataloaders=datamodule.val_dataloader())
    probs = torch.cat(batches)
    assert probs.shape == (9, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(9))


def test_only_unreadable_images_is_an_error(run_cli, tiny_checkpoint, tmp_path):
    ckpt, _, _ = tiny_checkpoint
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"not an image")
    out = run_cli("predict", ckpt, tmp_path / "a.png", tmp_path / "b.jpg", "--device", "cpu",
                  "--json", tmp_path / "p.json")
    assert out.returncode == 2, out.stderr
    assert "none of the 2 image(s) could be read (first: " in " ".join(out.stderr.split())
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "p.json").exists()


def test_a_size_that_cannot_fit_is_refused_before_any_image(tiny_checkpoint, tmp_path):
    ckpt, _, images = tiny_checkpoint
    with pytest.raises(FmbError, match=r"activations of one inference batch at --resolution 100000 with "
                                       r"--batch-size 32 need about [\d,.]+ GiB, more than the") as info:
        predict(ckpt, [images], device="cpu", resolution=100000)
    assert info.value.exit_code == 2
    with pytest.raises(FmbError, match="--resolution 8; expected 16 px or more"):
        predict(ckpt, [images], device="cpu", resolution=8)


def _probs(result):
    return {p["input"]: {t["label"]: t["prob"] for t in p["top"]} for p in result.predictions}


@pytest.mark.slow
def test_predict_from_exported_files_uses_their_metadata(tiny_checkpoint, exported, tmp_path):
    """An .onnx (through onnxruntime) and a .pt2 predict what the checkpoint predicts, with
    the class names and preprocessing their metadata carries: change the metadata's mean/std
    and crop, and the predictions follow that preprocessing, not a default."""
    import onnx

    from fmb.data.transforms import build_eval_transform, decode_image
    from fmb.training.evaluate import load_checkpoint, restore_module

    ckpt, _, images = tiny_checkpoint
    files = [images / "cat" / "0.png", images / "dog" / "1.png", images / "owl" / "2.png"]
    expected = _probs(predict(ckpt, files, device="cpu"))
    for fmt in ("onnx", "pt2"):
        got = predict(exported[fmt][0], files, device="cpu")
        assert got.weights == "ema" and got.top_k == 3
        for name, probs in _probs(got).items():
            assert probs.keys() == expected[name].keys()  # the checkpoint's class names
            for label, p in probs.items():
                assert p == pytest.approx(expected[name][label], abs=1e-5)
    model = onnx.load(str(exported["onnx"][0]))
    changed = {"mean": "[0.5, 0.5, 0.5]", "std": "[0.5, 0.5, 0.5]", "crop_ratio": "0.5", "interpolation": "bilinear"}
    for prop in model.metadata_props:
        prop.value = changed.get(prop.key, prop.value)
    onnx.save(model, str(tmp_path / "changed.onnx"))
    got = _probs(predict(tmp_path / "changed.onnx", files, device="cpu"))
    network = restore_module(load_checkpoint(ckpt)).model.eval()
    transform = build_eval_transform(32, 0.5, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)
    with torch.inference_mode():
        probs = network(torch.stack([transform(decode_image(str(f))) for f in files])).softmax(-1)
    names = ["cat", "dog", "owl"]
    for f, row in zip(files, probs):
        for label, p in got[str(f)].items():
            assert p == pytest.approx(float(row[names.index(label)]), abs=1e-5)
    assert any(abs(got[str(f)]["cat"] - expected[str(f)]["cat"]) > 1e-4 for f in files)  # it did change
    with pytest.raises(FmbError, match="--resolution 64: .* was exported for 32 px"):
        predict(exported["onnx"][0], files, device="cpu", resolution=64)
    with pytest.raises(FmbError, match="--precision bf16: an ONNX export runs in the precision it was written in"):
        predict(exported["onnx"][0], files, device="cpu", precision="bf16")
    (tmp_path / "plain.onnx").write_bytes(b"nope")
    with pytest.raises(FmbError, match="is not a readable ONNX file"):
        predict(tmp_path / "plain.onnx", files, device="cpu")
