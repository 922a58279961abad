"""fmb ablate with ablate.launcher=slurm, driven through submitit's local executor
(ablate.slurm.cluster=local): the same job code a SLURM array runs, without a cluster."""
import json
import os
import shutil
import signal
import time

import pytest

from fmb.ablation import run_ablation
from fmb.ablation.slurm import make_executor
from fmb.ablation.study import load_study
from fmb.errors import FmbError
from test_ablate import _lines, _preset

SLURM = ["ablate.launcher=slurm", "ablate.slurm.cluster=local", "ablate.slurm.timeout_min=10"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_study_through_submitit_then_resume_submits_only_what_is_missing(tmp_path, monkeypatch):
    log = tmp_path / "invocations.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_FAIL", "FFFMMM")
    preset, out = _preset(tmp_path), tmp_path / "study"
    result = run_ablation([preset], SLURM, placements="MMMMMM,FFFMMM", seeds="0", out=out)
    assert result.exit_code == 1 and result.failed == ["FFFMMM-s0"]
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert sorted(jobs) == ["FFFMMM-s0", "MMMMMM-s0"]
    by_id = {r["trial_id"]: r for r in _lines(out / "results.jsonl")}
    assert by_id["MMMMMM-s0"]["status"] == "completed" and "boom in FFFMMM" in by_id["FFFMMM-s0"]["error"]
    assert by_id["MMMMMM-s0"]["trained_macs"] > 0 and by_id["MMMMMM-s0"]["params"] > 0  # profiled in the job
    # the trial saw no SLURM/submitit variables: Lightning must not mistake it for an srun launch
    assert json.loads((out / "trials" / "MMMMMM-s0" / "env.json").read_text())["SLURM_JOB_ID"] is None

    monkeypatch.delenv("FAKE_FAIL")
    result = run_ablation([], [], out=out, resume=True)  # the stored invocation, launcher included
    assert result.exit_code == 0 and result.failed == []
    runs = log.read_text().split()
    assert sorted(runs) == ["FFFMMM-s0", "FFFMMM-s0", "MMMMMM-s0"]
    resubmitted = json.loads((out / "slurm" / "jobs.json").read_text())
    assert resubmitted["MMMMMM-s0"] == jobs["MMMMMM-s0"] and resubmitted["FFFMMM-s0"] != jobs["FFFMMM-s0"]
    completed = [r["trial_id"] for r in _lines(out / "results.jsonl") if r["status"] == "completed"]
    assert sorted(completed) == ["FFFMMM-s0", "MMMMMM-s0"]  # each once
    assert "| FFFMMM | 1-3 |" in (out / "report.md").read_text()
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == sorted(completed)  # HParams view per trial


@pytest.mark.slow
@pytest.mark.subprocess
def test_timed_out_job_is_requeued_and_continues_from_its_checkpoint(tmp_path, monkeypatch):
    log = tmp_path / "invocations.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_SLOW", "FFFMMM")
    preset, out = _preset(tmp_path), tmp_path / "study"
    study = load_study([preset], SLURM, placements="FFFMMM")
    out.mkdir()
    from fmb.ablation.slurm import TrialJob

    executor, _, _ = make_executor(study, out)
    job = executor.submit(TrialJob(study, str(out), study.trials[0]))
    started = out / "trials" / "FFFMMM-s0" / "started"
    deadline = time.time() + 120
    while not started.exists():
        assert not job.done() and time.time() < deadline, job.stderr()
        time.sleep(0.2)
    trainer_pid = int((started.parent / "pid").read_text())
    task_pid = int(open(f"/proc/{trainer_pid}/stat").read().split(") ")[1].split()[1])  # the job's task process
    os.kill(task_pid, signal.SIGUSR2)  # what SLURM sends before the time limit or on preemption
    assert job.result() == "completed"
    assert log.read_text().split() == ["FFFMMM-s0", "resume:FFFMMM-s0"]  # continued, not started over
    assert [r["status"] for r in _lines(out / "results.jsonl")] == ["completed"]


def test_executor_options_come_from_the_config(tmp_path):
    study = load_study([_preset(tmp_path)], ["ablate.launcher=slurm", "ablate.slurm.partition=gpu",
                                             "ablate.slurm.timeout_min=150", "ablate.slurm.gpus_per_trial=2",
                                             "ablate.slurm.mem=64G", "ablate.slurm.account=lab",
                                             "ablate.slurm.array_parallelism=8", "ablate.slurm.cluster=local"])
    _, folder, params = make_executor(study, tmp_path / "study")
    assert params["timeout_min"] == 150 and params["gpus_per_node"] == 2 and params["tasks_per_node"] == 1
    assert params["slurm_partition"] == "gpu" and params["slurm_mem"] == "64G" and params["slurm_account"] == "lab"
    assert params["slurm_array_parallelism"] == 8 and folder == tmp_path / "study" / "slurm"
    if shutil.which("srun") is None:  # on a machine without SLURM: one line that says what to do
        study.ablate["slurm"]["cluster"] = "slurm"
        with pytest.raises(FmbError, match="no SLURM"):
            make_executor(study, tmp_path / "study")


@pytest.mark.subprocess
def test_a_trial_jobs_own_work_imports_neither_lightning_nor_datasets(tmp_path):
    """A SLURM trial job unpickles its study, checks the machine, profiles its placement and records
    it before it starts `fmb train`: none of that needs Lightning or `datasets`, which would cost
    seconds of every job's start."""
    import pickle
    import subprocess
    import sys

    from fmb.ablation.slurm import TrialJob

    study = load_study([_preset(tmp_path)], SLURM, placements="FFFMMM", profile_only=True)
    (tmp_path / "study").mkdir()
    job = tmp_path / "job.pkl"
    job.write_bytes(pickle.dumps(TrialJob(study, str(tmp_path / "study"), study.trials[0])))
    code = (f"import pickle, sys\nprint(pickle.loads(open({str(job)!r}, 'rb').read())())\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'datasets'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-3:] == ["completed", "[]", ""]
    assert [r["status"] for r in _lines(tmp_path / "study" / "results.jsonl")] == ["completed"]
