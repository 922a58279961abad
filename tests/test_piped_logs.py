"""Piped output (a file, `| tee`, a SLURM log): every printed path and command whole, no table
cell cut, no progress-bar frames, none of Lightning's tips."""
import re
import shlex

import yaml

from conftest import tiny_train_overrides

# Deep enough that an 80-column layout would have broken it.
DEEP = "a-rather-long-folder-name-that-someone-uses-for-experiments/" * 3


def _check_whole(text: str) -> None:
    assert "…" not in text, text  # no cut cell
    assert not re.search(r"━ +\d+/\d+", text), text  # no progress-bar frame ("━━━━ 2/5")
    assert "Tip:" not in text and "TPU available" not in text


def test_piped_train_prints_its_paths_and_next_command_whole(run_cli, image_folder, tmp_path):
    run_dir = tmp_path / DEEP / "run"
    result = run_cli("train", *tiny_train_overrides(image_folder, run_dir, **{
        "trainer.limit_train_batches": 1, "trainer.limit_val_batches": 1, "trainer.enable_progress_bar": True}))
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    _check_whole(text)
    assert f"run dir: {run_dir}" in text
    hint = next(line for line in result.stdout.splitlines() if line.startswith("next: "))
    eval_command = hint.removeprefix("next: ").split("   |   ")[0]
    assert shlex.split(eval_command)[:2] == ["fmb", "eval"]
    assert shlex.split(eval_command)[2].startswith(str(run_dir / "checkpoints"))  # one argument, whole


def test_piped_compare_blocks_and_ablate_tables_keep_every_cell(run_cli, tmp_path):
    result = run_cli("profile", "--width-mult", "0.25", "--depth-mult", "0.25", "--num-classes", "10", "-r", "32",
                     "-b", "2", "--warmup", "0", "--iters", "1", "--mode", "infer", "--compare-blocks")
    assert result.returncode == 0, result.stderr
    _check_whole(result.stdout + result.stderr)
    assert "verdict" in result.stdout

    preset = tmp_path / DEEP / "preset.yaml"
    preset.parent.mkdir(parents=True)
    preset.write_text(yaml.safe_dump({
        "model": {"variant": "efficientnetv2_b0", "width_mult": 0.25, "depth_mult": 0.25},
        "data": {"source": "digits", "image_size": 32, "batch_size": 16, "num_workers": 0},
        "ablate": {"seeds": [0], "profile": {"resolution": 32, "batch_size": 2, "device": "cpu", "warmup": 0,
                                             "iters": 1, "num_classes": 10}}}))
    out = tmp_path / DEEP / "study"
    result = run_cli("ablate", "-c", str(preset), "--placements", "MMMMMM,FFFMMM", "--profile-only", "--out", str(out))
    assert result.returncode == 0, result.stderr
    _check_whole(result.stdout + result.stderr)
    assert str(out / "report.md") in result.stdout
