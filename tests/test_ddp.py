"""Distributed training on CPU with two processes (gloo), launched three ways: by Lightning
itself, by torchrun, and as two SLURM tasks (srun's environment, set by hand).

Lightning's launcher starts rank 1 by running the command line again, so training runs in a
small script written to tmp_path and started as a subprocess; every rank saves what it saw
(a recording callback) for the test to compare afterwards.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_train_overrides
from fmb.config import load_config
from fmb.errors import FmbError
from fmb.training import run as run_module
from fmb.training.evaluate import evaluate

REPO = Path(__file__).resolve().parent.parent
CLASSES, PER_CLASS = 3, 15  # 45 images: 9 held out for validation, 36 to train = 18 per rank
BATCH = 6  # per device: 3 full steps per rank, so drop_last drops nothing and every image is seen
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
two_processes = pytest.mark.skipif(CORES < 2, reason="fmb refuses more CPU ranks than cores")

# Every image is one solid colour, unique to it: random crops, flips and resizes keep a solid
# colour, so the colour of a batch element names the file it came from. The class sets the
# green channel so the classes stay learnable and the accuracy is neither 0 nor 1.
RECORDER = '''
import os
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from fmb.config import load_config
from fmb.data import IMAGENET_MEAN, IMAGENET_STD
from fmb.training.run import train

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def colours(images):
    pixels = ((images.detach().float().cpu() * STD + MEAN) * 255).mean(dim=(2, 3)).round().long()
    return [tuple(p) for p in pixels.tolist()]


class Record(Callback):
    """Per rank: the colour of every image its model trained or validated on, and its weights."""

    def __init__(self, out):
        self.out, self.train, self.val = Path(out), [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.train += colours(batch[0])

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val += colours(batch[0])

    def on_train_end(self, trainer, pl_module):
        torch.save({"train": self.train, "val": self.val, "world_size": trainer.world_size,
                    "state": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}},
                   self.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    summary = train(load_config([], sys.argv[2:]), callbacks=[Record(sys.argv[1])])
    # A file per process, not a printed line: torchrun's workers share its stdout, so a line
    # can be lost or interleaved under load.
    (Path(sys.argv[1]) / f"run_dir.{os.getpid()}").write_text(summary["run_dir"])
'''


def write_colour_folder(root: Path) -> dict:
    """The image folder; returns {colour: class name} for every image in it."""
    names = {}
    for c in range(CLASSES):
        folder = root / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            colour = (5 * (c * PER_CLASS + i), 40 + 80 * c, 128)
            Image.fromarray(np.full((12, 12, 3), colour, dtype=np.uint8)).save(folder / f"{i}.png")
            names[colour] = folder.name
    return names


def slurm_env(rank: int) -> dict:
    """What `srun --ntasks-per-node=2` sets for task `rank` of a one-node job (no SLURM here)."""
    return {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_JOB_NAME": "fmb-train", "SLURM_NTASKS": "2",
            "SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank), "SLURM_NODELIST": "localhost"}


def launch(command: list[str], cwd: Path, env: dict, slurm: bool) -> tuple[int, str]:
    if not slurm:
        proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout + proc.stderr
    tasks = [subprocess.Popen(command, cwd=cwd, env={**env, **slurm_env(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        outputs = [task.communicate(timeout=300)[0] for task in tasks]
    finally:
        for task in tasks:
            task.kill()  # no-op for a task that ended; a hung rank must not outlive the test
    return max(task.returncode for task in tasks), "".join(outputs)


def run_ddp(tmp_path: Path, launcher: list[str], slurm: bool = False) -> dict:
    """Train in a fresh working directory with no run.dir (so the ranks must agree on one)."""
    images = tmp_path / "images"
    colours = write_colour_folder(images)
    work, record = tmp_path / "work", tmp_path / "record"
    work.mkdir()
    record.mkdir()
    script = tmp_path / "ddp_train.py"
    script.write_text(RECORDER)
    overrides = tiny_train_overrides(images, None, **{
        "run.dir": "null", "run.name": "ddp", "data.batch_size": BATCH, "data.val_fraction": 0.2,
        "trainer.accelerator": "cpu", "trainer.devices": 2, "trainer.strategy": "ddp",
        "optim.name": "sgd", "optim.lr": 0.5})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for var in ("FMB_RUN_DIR", "LOCAL_RANK", "RANK", "WORLD_SIZE", *slurm_env(0)):
        env.pop(var, None)
    returncode, output = launch([*launcher, str(script), str(record), *overrides], work, env, slurm)
    assert returncode == 0, output[-5000:]
    ranks = [torch.load(record / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    run_dirs = [p.read_text() for p in record.glob("run_dir.*")]
    return {"colours": colours, "ranks": ranks, "work": work, "output": output, "run_dirs": run_dirs}


def check_ddp_run(result: dict, run_cli=None) -> None:
    colours, ranks, work = result["colours"], result["ranks"], result["work"]
    assert [r["world_size"] for r in ranks] == [2, 2]

    # Exactly one run directory, decided once, with one config and one set of checkpoints.
    run_dirs = [p for p in (work / "runs" / "ddp").iterdir()]
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    assert result["run_dirs"] == [str(run_dir)] * 2, result["run_dirs"]  # both ranks returned the same run dir
    assert sorted(p.name for p in work.rglob("config.yaml")) == ["config.yaml"]
    checkpoints = sorted(p.name for p in work.rglob("*.ckpt"))
    assert len(checkpoints) == 2 and "last.ckpt" in checkpoints, checkpoints  # last + best, once
    assert not list(work.rglob("*.tmp"))

    # Training: each rank saw its own half of the training images, and together all of them.
    train0, train1 = (r["train"] for r in ranks)
    assert len(train0) == len(train1) == len(set(train0)) == len(set(train1)) == 18
    assert not set(train0) & set(train1)
    val_colours = set(colours) - set(train0) - set(train1)
    assert set(train0) | set(train1) <= set(colours) and len(val_colours) == 9

    # Validation: every held-out image exactly once over the ranks, no padded duplicates.
    val = ranks[0]["val"] + ranks[1]["val"]
    assert sorted(val) == sorted(val_colours)

    # Gradients were averaged: both ranks end with the same weights and BatchNorm statistics.
    state0, state1 = (r["state"] for r in ranks)
    assert state0.keys() == state1.keys()
    for key in state0:
        assert torch.equal(state0[key], state1[key]), key
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[key], state0[key]) for key in state0)  # written after the last step

    # The reduced val top-1 it logged is what a single-process eval of the checkpoint finds.
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["per_device_batch_size"] == BATCH
    assert summary["global_batch_size"] == 2 * BATCH
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if run_cli is not None:  # `fmb eval` on the command line (in this process)
        eval_json = work / "eval.json"
        out = run_cli("eval", str(checkpoint), "--json", str(eval_json))
        assert out.returncode == 0, out.stderr[-3000:]
        evaluated = json.loads(eval_json.read_text())
    else:  # the function `fmb eval` calls, without another interpreter start
        evaluated = evaluate(checkpoint)
    assert evaluated["examples"] == 9
    assert summary["val_top1"] == pytest.approx(evaluated["top1"], abs=1e-6)
    header, *rows = (run_dir / "metrics.csv").read_text().splitlines()
    column = header.split(",").index("val/top1")
    logged = [float(row.split(",")[column]) for row in rows if row.split(",")[column]]
    assert logged[-1] == pytest.approx(evaluated["top1"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.ddp
@two_processes
def test_ddp_two_cpu_processes_lightning_launcher(tmp_path, run_cli):
    check_ddp_run(run_ddp(tmp_path, [sys.executable]), run_cli)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.ddp
@two_processes
def test_ddp_two_cpu_processes_torchrun(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    check_ddp_run(run_ddp(tmp_path, [str(torchrun), "--nproc_per_node", "2"]))


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.ddp
@two_processes
def test_ddp_two_cpu_processes_slurm_tasks(tmp_path):
    """As scripts/slurm_train.sh runs it: srun starts both ranks, Lightning only reads SLURM's env."""
    result = run_ddp(tmp_path, [sys.executable], slurm=True)
    check_ddp_run(result)
    assert [p.name for p in (result["work"] / "runs" / "ddp").iterdir()] == ["slurm-4242-0"]


# --- bad input: one line, exit 2, before Lightning starts a second process ------------------


@pytest.fixture
def no_spawning(monkeypatch):
    """Fail the test, instead of starting a copy of pytest as rank 1, if a check came too late."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    def refuse(*args, **kwargs):
        raise AssertionError("Lightning was about to start the other ranks")
    monkeypatch.setattr(_SubprocessScriptLauncher, "launch", refuse)


@pytest.mark.parametrize("extra, message", [
    ({"trainer.devices": CORES + 1}, f"but this machine has {CORES} CPU core"),
    ({"trainer.devices": 2, "trainer.strategy": "dpp"}, "unknown trainer.strategy='dpp'"),
    ({"trainer.devices": 2, "data.batch_size": 30}, "each rank's share of the training set (18 of 36"),
    ({"trainer.devices": 2, "model.sync_bn": True}, "model.sync_bn=true needs CUDA GPUs"),
])
def test_bad_distributed_settings_fail_in_one_line_before_spawning(tmp_path, capsys, no_spawning, extra, message):
    from fmb.cli import app

    images = tmp_path / "images"
    write_colour_folder(images)
    run_dir = tmp_path / "run"
    overrides = tiny_train_overrides(images, run_dir, **{"trainer.accelerator": "cpu", "trainer.strategy": "ddp",
                                                         "data.val_fraction": 0.2, **extra})
    with pytest.raises(SystemExit) as exit_:
        app(["train", *overrides], prog_name="fmb")
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err
    assert not run_dir.exists()  # nothing written: no half-made run directory


def test_cli_more_cpu_processes_than_cores_is_one_line_without_traceback(tmp_path, run_cli, no_spawning):
    """The command line (in this process), end to end: no process started, nothing written."""
    proc = run_cli("train", "trainer.accelerator=cpu", f"trainer.devices={CORES + 1}", "trainer.strategy=ddp",
                   f"run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: trainer.devices=") and len(proc.stderr.strip().splitlines()) == 1
    assert "Initializing distributed" not in proc.stdout + proc.stderr and not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_requested_without_gpus_fails_before_loading_data(tmp_path, capsys, no_spawning):
    from fmb.cli import app

    with pytest.raises(SystemExit) as exit_:
        app(["train", "trainer.accelerator=gpu", "trainer.devices=2", "data.source=/does/not/exist"], prog_name="fmb")
    assert exit_.value.code == 2
    assert "has no CUDA GPU" in capsys.readouterr().err  # the device error, not the (later) missing data


def fake_gpus(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_device_plan_counts_gpus_and_turns_sync_bn_on_for_them(monkeypatch):
    from fmb.training.distributed import plan_devices

    fake_gpus(monkeypatch, 2)
    plan = plan_devices({"accelerator": "gpu", "devices": 2, "num_nodes": 4})
    assert (plan.accelerator, plan.devices, plan.world_size, plan.sync_bn) == ("cuda", 2, 8, True)
    assert plan_devices({"accelerator": "auto", "devices": -1}).devices == 2
    assert plan_devices({"accelerator": "gpu", "devices": 1}).sync_bn is False  # one device: nothing to sync
    assert plan_devices({"accelerator": "gpu", "devices": 2}, sync_bn=False).sync_bn is False
    assert plan_devices({"accelerator": "cpu", "devices": 2}).sync_bn is False  # no SyncBatchNorm on CPU
    with pytest.raises(FmbError, match="trainer.devices=3 but this machine has 2 CUDA GPUs"):
        plan_devices({"accelerator": "cuda", "devices": 3})
    for devices in ("0,2", [1, 2]):
        with pytest.raises(FmbError, match="names a device this machine lacks.*expected ids from 0 to 1"):
            plan_devices({"accelerator": "cuda", "devices": devices})
    with pytest.raises(FmbError, match="expected a count >= 1"):
        plan_devices({"accelerator": "gpu", "devices": 0})
    with pytest.raises(FmbError, match="trainer.num_nodes"):
        plan_devices({"accelerator": "gpu", "devices": 1, "num_nodes": 0})


def test_too_many_gpus_fails_in_train_before_the_data_is_read(monkeypatch, tmp_path):
    fake_gpus(monkeypatch, 1)
    cfg = load_config([], tiny_train_overrides(tmp_path / "missing", tmp_path / "run",
                                               **{"trainer.accelerator": "gpu", "trainer.devices": 2}))
    with pytest.raises(FmbError, match="trainer.devices=2 but this machine has 1 CUDA GPU "):
        run_module.train(cfg)
    assert not (tmp_path / "run").exists()


def test_every_rank_needs_a_batch_and_a_validation_example():
    from fmb.training.distributed import check_rank_shares

    check_rank_shares({"train": 36, "val": 2}, 2, 18)
    check_rank_shares({"train": 3, "val": 1}, 1, 8)  # one process: the data module's own check
    check_rank_shares({"train": None, "val": None}, 8, 64)  # streams: split_dataset_by_node checks
    with pytest.raises(FmbError, match="0 batches"):
        check_rank_shares({"train": 36, "val": 9}, 4, 10)
    with pytest.raises(FmbError, match="fewer than the 4 ranks"):
        check_rank_shares({"train": 36, "val": 3}, 4, 9)


def test_rank_zero_decides_its_run_dir_afresh(monkeypatch, tmp_path):
    """FMB_RUN_DIR carries rank 0's choice to the ranks Lightning starts; it must not make a
    later run in the same process (or a child `fmb train`) reuse an earlier run's directory."""
    from fmb.training.rundir import RUN_DIR_ENV, decide_run_dir

    for var in ("LOCAL_RANK", "RANK", "SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "old"))
    fresh = decide_run_dir(None, "x", root=str(tmp_path / "runs"))
    assert fresh.parent == (tmp_path / "runs" / "x").resolve()
    assert os.environ[RUN_DIR_ENV] == str(fresh)  # handed on to the ranks Lightning starts
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert decide_run_dir(None, "x", root=str(tmp_path / "runs")) == fresh
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")  # torchrun: the shared run id, not the env
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert decide_run_dir(None, "x", root=str(tmp_path / "runs")).name == "torchrun-abc"
