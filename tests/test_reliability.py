"""Run directories as transactions, preemption as a real exit, failed writes.

Real processes and real signals for SIGTERM, SIGKILL, SLURM's SIGUSR1 and two processes
on one run directory; in-process runs for the rest. docs/errors.md's rows are checked by
tests/test_errors_catalogue.py."""
import csv
import errno
import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

import forked
from conftest import copy_run, tiny_train_overrides, write_image_folder

ROOT = Path(__file__).resolve().parent.parent


def checksums(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def epochs_and_steps(run_dir: Path) -> list[tuple[str, str]]:
    """(epoch, step) of each training-loss row of metrics.csv."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(r["epoch"], r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]


def assert_no_epoch_twice(run_dir: Path) -> None:
    rows = epochs_and_steps(run_dir)
    assert rows and len(rows) == len(set(rows)), rows
    steps = [int(s) for _, s in rows]
    assert steps == sorted(steps)


def start_fmb(args, env=None, log=None) -> forked.Forked:
    """`fmb ARGS` in a process of its own (forked from one that imported fmb: seconds, not ten)."""
    return forked.fmb(args, cwd=ROOT, env={**os.environ, **(env or {})}, stderr=log)


def wait_for(path: Path, process: forked.Forked, timeout=240.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, f"fmb exited with {process.returncode} before {path} appeared"
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.2)
    time.sleep(0.5)  # into the next epoch


def processed_epochs(ckpt: Path) -> int:
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    return state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"]


@pytest.fixture
def long_run(tmp_path):
    images = write_image_folder(tmp_path / "images")
    run_dir = tmp_path / "run"
    return tiny_train_overrides(images, run_dir, **{"trainer.max_epochs": 1000, "data.batch_size": 4}), run_dir


@pytest.mark.slow
@pytest.mark.subprocess
def test_second_process_is_refused_sigterm_preempts_and_resume_finishes(long_run, run_cli, tmp_path):
    overrides, run_dir = long_run
    first = start_fmb(["train", *overrides], log=tmp_path / "first.log")
    try:
        wait_for(run_dir / "checkpoints" / "last.ckpt", first)
        second = run_cli("train", *overrides)  # this test's process is the second one
        assert second.returncode == 2 and "in use by another fmb process" in second.stderr
        assert second.stderr.strip().splitlines()[-1].startswith("error:") and "Traceback" not in second.stderr
        assert "run dir:" not in second.stderr  # refused at once: no data loaded, no model built
        first.send_signal(signal.SIGTERM)  # what SLURM sends at preemption and time limit
        assert first.wait(timeout=120) == 143
    finally:
        first.kill()
    assert (tmp_path / "first.log").read_text().strip().splitlines()[-1].startswith("error: run preempted (SIGTERM)")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted"
    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == summary["global_step"]  # the checkpoint holds the step it reached
    more = processed_epochs(last) + 1
    out = run_cli("train", "--resume", run_dir, f"trainer.max_epochs={more}")
    assert out.returncode == 0, out.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert_no_epoch_twice(run_dir)


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkill_mid_epoch_then_resume_keeps_every_epoch_once(long_run, run_cli, tmp_path):
    overrides, run_dir = long_run
    process = start_fmb(["train", *overrides])
    try:
        wait_for(run_dir / "checkpoints" / "last.ckpt", process)
        time.sleep(1.0)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    # The kernel dropped the lock with the process; the run has a checkpoint, so a fresh
    # run into it is refused and --resume continues it.
    again = run_cli("train", *overrides)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    more = processed_epochs(run_dir / "checkpoints" / "last.ckpt") + 1
    out = run_cli("train", "--resume", run_dir, f"trainer.max_epochs={more}")
    assert out.returncode == 0, out.stderr
    assert_no_epoch_twice(run_dir)


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NAME": "fmbtest",
         "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}


@pytest.mark.slow
@pytest.mark.subprocess
def test_slurm_sigusr1_requeues_and_the_requeued_job_resumes_on_its_own(long_run, run_cli, tmp_path, monkeypatch):
    overrides, run_dir = long_run
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    # SLURM's scontrol requeues the job, then SLURM ends it with SIGTERM: this stand-in does both.
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\nkill -TERM $PPID\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**SLURM, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    process = start_fmb(["train", *overrides], env=env)
    try:
        wait_for(run_dir / "checkpoints" / "last.ckpt", process)
        process.send_signal(signal.SIGUSR1)  # sbatch --signal=USR1@90
        assert process.wait(timeout=120) == 143
    finally:
        process.kill()
    assert calls.read_text().split() == ["requeue", "4242"]  # through Lightning's SLURMEnvironment
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["slurm_job_id"] == "4242"
    # The requeued job runs the same command (no --resume) and continues the run.
    for key, value in {**SLURM, "SLURM_RESTART_COUNT": "1"}.items():
        monkeypatch.setenv(key, value)
    # +2: a signal that lands in an epoch's validation leaves that epoch counted as processed
    more = processed_epochs(run_dir / "checkpoints" / "last.ckpt") + 2
    out = run_cli("train", *tiny_train_overrides(Path(overrides[0].split("=", 1)[1]), run_dir,
                                                  **{"trainer.max_epochs": more, "data.batch_size": 4}))
    assert out.returncode == 0, out.stderr
    assert "resuming" in out.stderr
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["global_step"] > summary["global_step"]
    assert_no_epoch_twice(run_dir)


@pytest.mark.slow
def test_ctrl_c_before_the_first_checkpoint_is_not_a_dead_end(image_folder, tmp_path, run_cli, monkeypatch):
    from fmb.training.module import ImageClassifier

    run_dir = tmp_path / "run"
    honest = ImageClassifier.training_step

    def interrupted(self, batch, batch_idx):
        raise KeyboardInterrupt
    monkeypatch.setattr(ImageClassifier, "training_step", interrupted)
    stopped = run_cli("train", *tiny_train_overrides(image_folder, run_dir))
    assert stopped.returncode == 130
    line = stopped.stderr.strip().splitlines()[-1]
    command = line.split("start it again in place: ", 1)[1].split()
    assert command[:2] == ["fmb", "train"]
    resumed = run_cli("train", "--resume", run_dir)  # --resume points at the same command
    assert resumed.returncode == 2 and " ".join(command) in resumed.stderr
    monkeypatch.setattr(ImageClassifier, "training_step", honest)
    out = run_cli(*command[1:])  # the one exact command works
    assert out.returncode == 0, out.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert list((run_dir / "failed-attempts").glob("*/config.yaml"))  # the dead attempt kept aside


@pytest.mark.slow
def test_sigterm_that_breaks_other_code_first_is_still_a_preemption(image_folder, tmp_path, run_cli, monkeypatch):
    """On the GPU, SIGTERM from a time limit landed inside torch.compile and surfaced as a
    TorchRuntimeError (and once as a killed DataLoader worker): still a preemption, with its
    exit code and a checkpoint to resume from, not a failed run."""
    from fmb.errors import EXIT_PREEMPTED
    from fmb.training.module import ImageClassifier

    run_dir = tmp_path / "run"
    honest = ImageClassifier.training_step

    def signalled(self, batch, batch_idx):
        if self.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler only notes it...
            raise RuntimeError("RuntimeError when making fake tensor call")  # ...and this comes first
        return honest(self, batch, batch_idx)
    monkeypatch.setattr(ImageClassifier, "training_step", signalled)
    stopped = run_cli("train", *tiny_train_overrides(image_folder, run_dir))
    assert stopped.returncode == EXIT_PREEMPTED, stopped.stderr
    assert "run preempted (SIGTERM)" in stopped.stderr and "--resume" in stopped.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "preempted"
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2


@pytest.mark.slow
def test_resume_from_an_older_checkpoint_branches_and_leaves_the_run_alone(image_folder, tmp_path, run_cli):
    run_dir = tmp_path / "run"
    assert run_cli("train", *tiny_train_overrides(image_folder, run_dir)).returncode == 0
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "epoch0.ckpt")
    assert run_cli("train", "--resume", run_dir, "trainer.max_epochs=2").returncode == 0
    before = checksums(run_dir)
    out = run_cli("train", "--resume", run_dir / "checkpoints" / "epoch0.ckpt", "trainer.max_epochs=3")
    assert out.returncode == 0, out.stderr
    assert checksums(run_dir) == before  # the newer last.ckpt, metrics and summary untouched
    branch = tmp_path / "run-from-epoch0"
    summary = json.loads((branch / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 3 and summary["run_dir"] == str(branch)
    assert_no_epoch_twice(branch)
    assert {e for e, _ in epochs_and_steps(branch)} == {"0", "1", "2"}


def test_a_failed_resume_puts_every_file_back(finished_run, tmp_path, run_cli, monkeypatch):
    from fmb.training.module import ImageClassifier

    run_dir = copy_run(finished_run.run_dir, tmp_path / "run")  # two epochs done
    before = checksums(run_dir)

    def broken(self, batch, batch_idx):
        raise RuntimeError("boom")
    monkeypatch.setattr(ImageClassifier, "training_step", broken)
    out = run_cli("train", "--resume", run_dir, "trainer.max_epochs=3")
    assert out.returncode == 1 and "RuntimeError: boom" in out.stderr
    after = checksums(run_dir)
    assert "Traceback" in (run_dir / "error.log").read_text()
    after.pop("error.log")
    assert after == before  # config.yaml, summary.json ("completed"), metrics.csv, logger files as they were


def test_a_failed_write_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch):
    from fmb.errors import FmbError
    from fmb.utils import atomic_write_text

    target = tmp_path / "summary.json"
    target.write_text("old\n")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(FmbError, match=f"cannot write {target}: no space left on device") as info:
        atomic_write_text(target, "new\n")
    assert info.value.exit_code == 1
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_image_size_that_cannot_fit_is_refused_with_what_fits():
    from fmb.config import load_config
    from fmb.errors import FmbError
    from fmb.training.memory import check_fits

    cfg = load_config([], ["model.width_mult=0.25", "model.depth_mult=0.25"])
    check_fits(cfg, 32, 8, "cpu")  # the tests' own size fits
    with pytest.raises(FmbError, match=r"data.image_size=\d+ fits|data.batch_size=\d+ fits"):
        check_fits(cfg, 2048, 4096, "cpu")
