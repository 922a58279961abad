"""Training runs end to end on CPU: run dir contents, train→eval round trip, resume, EMA, errors.

CLI calls run in this process (the `run_cli` fixture); tests/test_training_config.py holds the
subprocess smoke test of the console entry point."""
import json
import pytest
import torch

from conftest import copy_run, tiny_train_overrides
from fmb.config import load_config
from fmb.errors import FmbError
from fmb.training.evaluate import evaluate
from fmb.training.run import train


@pytest.fixture
def trained(finished_run):
    """(summary, run dir) of the session's tiny two-epoch run, for the checks that only read it."""
    return finished_run.summary, finished_run.run_dir


def test_run_dir_holds_config_checkpoints_metrics_summary(trained):
    summary, run_dir = trained
    assert summary["status"] == "completed" and summary["epochs"] == 2
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last.ckpt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert not list(run_dir.rglob("*.tmp"))  # atomic writes leave no temp files behind
    saved = json.loads((run_dir / "summary.json").read_text())
    assert saved["val_top1"] == summary["val_top1"] and 0 <= saved["val_top1"] <= 1
    assert saved["global_batch_size"] == 8 and saved["params"] > 0 and saved["train_images_per_sec"] > 0
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert "val/top1" in header and "train/loss_step" in header and "lr-" in header


def test_eval_of_checkpoint_matches_logged_val_top1(trained):
    summary, run_dir = trained
    result = evaluate(run_dir / "checkpoints" / "last.ckpt")
    assert result["top1"] == pytest.approx(summary["val_top1"], abs=1e-6)
    assert result["examples"] == 9  # 25% of 36 images, stratified
    assert len(result["per_class"]) == 3 and sum(c["support"] for c in result["per_class"]) == 9


def test_eval_cli_json_and_confusion(run_cli, trained, tmp_path):
    _, run_dir = trained
    out = run_cli("eval", str(run_dir / "checkpoints" / "last.ckpt"), "--json", str(tmp_path / "e.json"),
                  "--confusion", str(tmp_path / "cm.png"))
    assert out.returncode == 0, out.stderr
    result = json.loads((tmp_path / "e.json").read_text())
    assert {"top1", "top5", "loss", "per_class", "examples", "split"} <= set(result)
    assert result["top5"] is None  # only 3 classes
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_resume_continues_epochs_and_optimizer_state(run_cli, finished_run, tmp_path):
    straight = finished_run.summary  # the same run (data, seed, config) straight through its two epochs
    first = train(load_config([], tiny_train_overrides(finished_run.images, tmp_path / "split")))
    assert first["epochs"] == 1
    # The first run stopped after one epoch (as if interrupted); resume it with the full budget.
    out = run_cli("train", "--resume", str(tmp_path / "split"), "trainer.max_epochs=2")
    assert out.returncode == 0, out.stderr
    resumed = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert resumed["epochs"] == 2 and resumed["global_step"] == straight["global_step"]
    ckpt = torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=True)
    steps = {int(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()}
    assert steps == {straight["global_step"]}  # AdamW state carried over, not restarted
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 2
    rows = (tmp_path / "split" / "metrics.csv").read_text().splitlines()
    assert sum(r.startswith(("0,", "1,")) and "," in r for r in rows) >= 2  # both epochs' history kept
    # Same seed, same data order: the resumed run ends where the uninterrupted one did.
    assert resumed["val_top1"] == pytest.approx(straight["val_top1"], abs=1e-6)


def test_fast_dev_run_through_the_cli(run_cli, image_folder, tmp_path):
    out = run_cli("train", *tiny_train_overrides(image_folder, tmp_path / "fdr", **{"trainer.fast_dev_run": True}))
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "fdr" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 1


@pytest.mark.slow
def test_resume_from_a_checkpoint_file(run_cli, trained, tmp_path):
    _, run_dir = trained
    copy = copy_run(run_dir, tmp_path / "copy")
    best = next((copy / "checkpoints").glob("best-*.ckpt"))
    before = (copy / "summary.json").read_bytes()
    out = run_cli("train", "--resume", str(best), "trainer.max_epochs=3")
    assert out.returncode == 0, out.stderr
    older = best.name == "best-epoch000.ckpt"  # older than last.ckpt: continued in a branch of the run
    where = copy.with_name(f"copy-from-{best.stem}") if older else copy
    summary = json.loads((where / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["run_dir"] == str(where)
    if older:
        assert (copy / "summary.json").read_bytes() == before


def test_ema_weights_differ_from_raw_and_eval_can_pick_either(finished_run):
    summary, last = finished_run.summary, finished_run.checkpoint  # trained with ema.enabled=true
    assert summary["val_raw_top1"] is not None  # validation reports the raw model too
    ckpt = torch.load(last, weights_only=True)
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if k.endswith("weight"))
    with_ema = evaluate(last, ema=True)
    without = evaluate(last, ema=False)
    assert with_ema["top1"] == pytest.approx(summary["val_top1"], abs=1e-6)
    assert without["top1"] == pytest.approx(summary["val_raw_top1"], abs=1e-6)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(run_cli, finished_run, tmp_path,
                                                                         monkeypatch):
    from fmb.training.module import ImageClassifier
    run_dir = copy_run(finished_run.run_dir, tmp_path / "nan")  # two epochs done
    before = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    changed = run_cli("train", "--resume", str(run_dir), "trainer.max_epochs=3", "optim.name=sgd")
    assert changed.returncode == 2 and "optim.name changed (adamw → sgd)" in changed.stderr

    honest_loss = ImageClassifier.loss

    def diverging_loss(self, logits, targets):  # the third epoch blows up at its first step
        loss = honest_loss(self, logits, targets)
        return loss * float("nan") if self.trainer.current_epoch >= 2 else loss

    monkeypatch.setattr(ImageClassifier, "loss", diverging_loss)
    step = finished_run.summary["global_step"]  # the steps of the two finished epochs: 0 .. step-1
    with pytest.raises(FmbError, match=rf"loss became nan at step {step} \(epoch 2\)") as info:
        train(load_config([str(run_dir / "config.yaml")], ["trainer.max_epochs=3"]), resume=run_dir)
    assert info.value.exit_code == 1
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == before
    # The resume failed before its first checkpoint: the run's files are as they were.
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert "loss became nan" in (run_dir / "error.log").read_text()


def test_bad_inputs_through_the_cli(run_cli, image_folder, tmp_path):
    missing = run_cli("train", "--resume", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "config.yaml").write_text("{}\n")
    empty = run_cli("train", "--resume", str(tmp_path / "empty_run"))
    assert empty.returncode == 2 and "no checkpoints/last.ckpt" in empty.stderr
    not_ckpt = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, not_ckpt)
    foreign = run_cli("eval", str(not_ckpt))
    assert foreign.returncode == 2 and "not an fmb checkpoint" in foreign.stderr
    for result in (missing, empty, foreign):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_checkpoint_classes_must_match_the_data(trained, tmp_path):
    _, run_dir = trained
    from conftest import write_image_folder
    other = write_image_folder(tmp_path / "other", classes=("a", "b", "c", "d"), per_class=4)
    with pytest.raises(FmbError, match="trained on 3 classes.*has 4"):
        evaluate(run_dir / "checkpoints" / "last.ckpt", data_overrides=[f"source={other}"])


def test_run_dir_holding_a_run_is_never_mixed_with_another(run_cli, trained):
    summary, run_dir = trained
    before = (run_dir / "summary.json").read_bytes()
    again = run_cli("train", "model.width_mult=0.25", "model.depth_mult=0.25", f"run.dir={run_dir}")
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--resume" in again.stderr
    finished = run_cli("train", "--resume", str(run_dir))  # already at its max_epochs
    assert finished.returncode == 2 and "pass trainer.max_epochs=3" in finished.stderr
    assert (run_dir / "summary.json").read_bytes() == before


def test_a_crash_inside_training_is_a_failed_run_in_one_line(image_folder, tmp_path, monkeypatch):
    from fmb.training.module import ImageClassifier

    def broken_step(self, batch, batch_idx):
        raise RuntimeError("boom")

    monkeypatch.setattr(ImageClassifier, "training_step", broken_step)
    monkeypatch.delenv("FMB_DEBUG", raising=False)
    with pytest.raises(FmbError, match="run failed in .*RuntimeError: boom") as info:
        train(load_config([], tiny_train_overrides(image_folder, tmp_path / "crash")))
    assert info.value.exit_code == 1
    assert json.loads((tmp_path / "crash" / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_holdout_chooses_the_checkpoint_and_the_reported_split_never_does(image_folder, tmp_path):
    from conftest import write_image_folder
    images = write_image_folder(tmp_path / "more", per_class=20)
    summary = train(load_config([], tiny_train_overrides(images, tmp_path / "h", **{"data.holdout_fraction": 0.2,
                                                                                     "trainer.max_epochs": 2})))
    assert summary["select_top1"] is not None and summary["val_top1"] is not None
    ckpt = torch.load(tmp_path / "h" / "checkpoints" / "last.ckpt", weights_only=True)
    monitors = [c["monitor"] for k, c in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert "select/top1" in monitors and "val/top1" not in monitors
    # train 60 → 45 after the 25% validation carve → 36 after the 20% holdout; the val split is unchanged
    result = evaluate(tmp_path / "h" / "checkpoints" / "last.ckpt")
    assert result["examples"] == 15 and result["top1"] == pytest.approx(summary["val_top1"], abs=1e-6)


def test_a_checkpoint_in_the_older_hyperparameter_layout_still_evaluates(trained, tmp_path):
    """Older fmb checkpoints kept model_kwargs/optim/data/run_config hyperparameters and
    aug.hflip; they are read in today's shape and give the same result."""
    from fmb.config import to_dict
    _, run_dir = trained
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    config = ckpt["hyper_parameters"]["config"]
    old = json.loads(json.dumps(config))
    old["aug"]["hflip"] = old["data"].pop("hflip")
    old["aug"]["crop_scale_min"] = old["data"].pop("crop_scale_min")
    m = config["model"]
    ckpt["hyper_parameters"] = {
        "model_kwargs": {"name": m["variant"], "blocks": m["blocks"], "stage_overrides": None,
                         "width_mult": m["width_mult"], "depth_mult": m["depth_mult"], "drop_rate": m["drop_rate"],
                         "drop_path_rate": m["drop_path_rate"], "padding": m["padding"]},
        "num_classes": ckpt["hyper_parameters"]["num_classes"], "class_names": ckpt["hyper_parameters"]["class_names"],
        "optim": old["optim"], "sched": old["sched"], "label_smoothing": old["aug"]["label_smoothing"],
        "channels_last": False, "compile": False, "data": old["data"], "run_config": old}
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert evaluate(tmp_path / "old.ckpt")["top1"] == evaluate(run_dir / "checkpoints" / "last.ckpt")["top1"]
    assert to_dict(load_config([])) != old  # (the shapes really differ)
