"""fmb eval: --split names real splits only (one-line error listing those that exist, never a
silent fall-back), --device/--precision/--batch-size, and a JSON that says what was evaluated;
run directories record absolute data paths so eval works from any directory."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fmb.config import load_config
from fmb.errors import FmbError
from fmb.training.evaluate import evaluate

REPO = Path(__file__).resolve().parent.parent


def test_missing_test_split_is_one_line_listing_the_splits(run_cli, tiny_checkpoint):
    ckpt, _, _ = tiny_checkpoint
    result = run_cli("eval", ckpt, "--split", "test")
    assert result.returncode == 2
    assert "has no test split; its splits are train" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    other = run_cli("eval", ckpt, "--split", "validaton")
    assert other.returncode == 2 and "has no split 'validaton'; its splits are train" in other.stderr


def test_eval_json_names_split_images_checkpoint_weights(run_cli, tiny_checkpoint, tmp_path):
    ckpt, _, _ = tiny_checkpoint
    out = tmp_path / "eval.json"
    result = run_cli("eval", ckpt, "--device", "cpu", "--precision", "bf16", "--batch-size", "4", "--no-ema",
                     "--json", out)
    assert result.returncode == 0, result.stderr
    payload = json.loads(out.read_text())
    assert payload["split"] == "val" and payload["split_name"] == "train (held-out 0.25 for validation)"
    assert payload["images"] == 9 and payload["checkpoint"] == str(ckpt)
    assert payload["weights"] == "raw" and payload["device"] == "cpu" and payload["precision"] == "bf16"
    assert payload["batch_size"] == 4
    everything = evaluate(ckpt, split="train", device="cpu")  # any split of the source by name
    assert everything["images"] == 36 and everything["weights"] == "ema"


def test_bf16_eval_close_to_fp32(tiny_checkpoint):
    ckpt, _, _ = tiny_checkpoint
    fp32, bf16 = (evaluate(ckpt, device="cpu", precision=p) for p in ("fp32", "bf16"))
    assert abs(fp32["loss"] - bf16["loss"]) < 0.05


def test_device_and_precision_errors(tiny_checkpoint):
    ckpt, _, _ = tiny_checkpoint
    with pytest.raises(FmbError, match="unknown --device 'tpu'"):
        evaluate(ckpt, device="tpu")
    with pytest.raises(FmbError, match="fp16 needs a GPU"):
        evaluate(ckpt, device="cpu", precision="fp16")
    if not torch.cuda.is_available():
        with pytest.raises(FmbError, match="no CUDA GPU"):
            evaluate(ckpt, device="cuda")


@pytest.mark.gpu
def test_eval_on_cuda_matches_cpu(tiny_checkpoint):
    ckpt, _, _ = tiny_checkpoint
    cpu, gpu = evaluate(ckpt, device="cpu"), evaluate(ckpt, device="cuda", precision="bf16")
    assert gpu["device"].startswith("cuda") and gpu["images"] == cpu["images"]
    assert abs(gpu["top1"] - cpu["top1"]) <= 1 / cpu["images"] + 1e-9


def test_relative_data_path_is_recorded_absolute(tiny_checkpoint, tmp_path, monkeypatch):
    _, _, images = tiny_checkpoint
    monkeypatch.chdir(images.parent)
    cfg = load_config([], [f"data.source={images.name}"])
    assert cfg.data.source == str(images)
    glob_cfg = load_config([], ["data.source=./images/*/0.png"])
    assert glob_cfg.data.source == str(images / "*" / "0.png")
    assert load_config([], ["data.source=uoft-cs/cifar10"]).data.source == "uoft-cs/cifar10"  # hub ids stay


def test_devices_must_be_a_count_and_one_named_gpu_is_one_device(tiny_checkpoint):
    ckpt, _, _ = tiny_checkpoint
    with pytest.raises(FmbError, match="--devices 0; expected a whole number"):
        evaluate(ckpt, device="cpu", devices=0)
    if torch.cuda.is_available():
        with pytest.raises(FmbError, match="names one GPU but --devices 2"):
            evaluate(ckpt, device="cuda:0", devices=2)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.ddp
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two CPU processes need two cores")
def test_eval_over_two_processes_counts_every_image_once(tiny_checkpoint, tmp_path):
    """`--devices 2` through Lightning's DDP (two CPU processes, gloo): each rank scores its share,
    never a padded repeat, and the reduced result is the single-process one."""
    ckpt, _, _ = tiny_checkpoint
    out = tmp_path / "eval.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for var in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "FMB_RUN_DIR"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "fmb", "eval", str(ckpt), "--device", "cpu", "--devices", "2",
                           "--batch-size", "2", "--json", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("top-1") == 1  # rank 0 reports, once
    both, one = json.loads(out.read_text()), evaluate(ckpt, device="cpu", batch_size=2)
    assert both["devices"] == 2 and both["images"] == one["images"] == 9  # 5 + 4, not 5 + 5
    assert both["confusion_matrix"] == one["confusion_matrix"]
    assert both["top1"] == pytest.approx(one["top1"]) and both["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert [c["support"] for c in both["per_class"]] == [c["support"] for c in one["per_class"]]


def test_eval_precision_defaults_to_the_runs(tiny_checkpoint, tmp_path):
    """No --precision: the precision the run trained in (a bf16 run is scored in bf16, as its
    logged top-1 was); fp32 where the device cannot run the run's, and when asked."""
    from fmb.inference.device import run_precision

    ckpt, _, _ = tiny_checkpoint
    state = torch.load(ckpt, weights_only=True)
    assert evaluate(ckpt, device="cpu")["precision"] == "fp32"  # this run trained in 32-true
    state["hyper_parameters"]["config"]["trainer"]["precision"] = "bf16-mixed"
    bf16_run = tmp_path / "bf16.ckpt"
    torch.save(state, bf16_run)
    assert evaluate(bf16_run, device="cpu")["precision"] == "bf16"
    assert evaluate(bf16_run, device="cpu", precision="fp32")["precision"] == "fp32"
    cpu = torch.device("cpu")
    assert run_precision({"config": {"trainer": {"precision": "16-mixed"}}}, cpu)[0] == "fp32"
    assert run_precision({"config": {"trainer": {"precision": "auto"}}}, cpu)[0] == "fp32"
    assert run_precision({"config": {"trainer": {"precision": 32}}}, cpu)[0] == "fp32"


def test_devices_beyond_the_machine_and_indexed_cpu_refused_up_front(run_cli, tiny_checkpoint):
    ckpt, _, _ = tiny_checkpoint
    cores = len(os.sched_getaffinity(0))
    many = run_cli("eval", ckpt, "--device", "cpu", "--devices", "1000000")
    assert many.returncode == 2
    assert f"--devices 1000000: this machine has {cores} CPU core(s) for CPU processes; expected --devices 1 to " \
           f"{cores}" in " ".join(many.stderr.split())
    for device, says in (("cpu:0", "--device cpu:0: only CUDA devices take an index; expected --device cpu"),
                         ("cuda:zz", "--device cuda:zz: the GPU index must be a whole number")):
        out = run_cli("eval", ckpt, "--device", device)
        assert out.returncode == 2 and says in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
