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
