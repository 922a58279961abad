"""fmb ablate with trials in flight together: ablate.jobs, devices per trial, the store under
concurrent writers, --fail-fast and resume after SIGKILL with two trials running.

Trials run the fake trainer of test_ablate (speaks the `fmb train` contract in milliseconds)."""
import json
import multiprocessing
import os
import signal
import time

import pytest

from fmb.ablation import run_ablation
from fmb.ablation.devices import plan_slots
from fmb.ablation.store import StudyDir
from fmb.ablation.study import load_study
from fmb.errors import FmbError
from test_ablate import _alive, _cli, _lines, _preset


@pytest.fixture
def fake_log(tmp_path, monkeypatch):
    log = tmp_path / "invocations.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    return log


@pytest.mark.slow
def test_two_trials_at_once_overlap_and_report_equals_sequential(tmp_path, fake_log, fixed_profile, monkeypatch):
    monkeypatch.setenv("FAKE_JITTER", "0.004")
    preset = _preset(tmp_path)
    args = dict(placements="MMMMMM,FFFMMM", seeds="0,1")
    # long enough that trials run at once would overlap: for one at a time, a fraction of a second
    monkeypatch.setenv("FAKE_SLEEP", "0.3")
    seq = run_ablation([preset], ["ablate.jobs=1"], out=tmp_path / "seq", **args)
    monkeypatch.setenv("FAKE_SLEEP", "1.5")  # two at once must overlap even when a start is slow
    par = run_ablation([preset], ["ablate.jobs=2"], out=tmp_path / "par", **args)
    assert seq.exit_code == par.exit_code == 0
    recs = _lines(tmp_path / "par" / "results.jsonl")
    assert sorted(r["trial_id"] for r in recs) == ["FFFMMM-s0", "FFFMMM-s1", "MMMMMM-s0", "MMMMMM-s1"]
    spans = sorted((r["started_at"], r["ended_at"]) for r in recs)
    overlapping = sum(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert overlapping >= 2, spans  # trials 1+2 and 3+4 ran together
    at_once = max(sum(s <= t < e for s, e in spans) for t, _ in spans)
    assert at_once == 2, spans  # never more than ablate.jobs
    seq_spans = sorted((r["started_at"], r["ended_at"]) for r in _lines(tmp_path / "seq" / "results.jsonl"))
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(seq_spans, seq_spans[1:]))
    # on this machine's cores, each of the two trials got half the threads
    threads = {json.loads((tmp_path / "par" / "trials" / t / "env.json").read_text())["OMP_NUM_THREADS"]
               for t in ("MMMMMM-s0", "FFFMMM-s1")}
    assert threads == {str(max(1, (os.cpu_count() or 1) // 2))}
    # the same report, table, CSV trial rows and statistics as the sequential study
    assert (tmp_path / "par" / "report.md").read_text() == (tmp_path / "seq" / "report.md").read_text()
    assert par.rows == seq.rows
    fused = next(r for r in par.rows if r["placement"] == "FFFMMM")
    assert fused["n_pairs"] == 2 and fused["significant"] is True and fused["diff_ci_low"] > 0


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkill_with_two_trials_in_flight_then_resume_runs_each_trial_once(tmp_path, fake_log, run_cli):
    preset, out = _preset(tmp_path), tmp_path / "study"
    env = {**os.environ, "FAKE_SLOW": "FFMMMM,FFFFFF"}
    proc = _cli("-c", preset, "--placements", "MMMMMM,FFMMMM,FFFFFF", "--out", out, "ablate.jobs=2",
                env=env, new_session=True)
    started = [out / "trials" / t / "started" for t in ("FFMMMM-s0", "FFFFFF-s0")]
    deadline = time.time() + 120
    while not all(p.exists() for p in started):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    pids = [int((p.parent / "pid").read_text()) for p in started]
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep, with two trials training
    proc.communicate()
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)  # both trials died with their sweep
    assert [r["trial_id"] for r in _lines(out / "results.jsonl")] == ["MMMMMM-s0"]

    resumed = run_cli("ablate", "--resume", "--out", out)  # the stored invocation (ablate.jobs=2 too), without FAKE_SLOW
    assert resumed.returncode == 0, resumed.stderr
    ids = [r["trial_id"] for r in _lines(out / "results.jsonl")]
    assert sorted(ids) == ["FFFFFF-s0", "FFMMMM-s0", "MMMMMM-s0"]  # every trial exactly once, none lost
    assert sorted(fake_log.read_text().split()) == ["FFFFFF-s0", "FFFFFF-s0", "FFMMMM-s0", "FFMMMM-s0", "MMMMMM-s0"]


def test_fail_fast_stops_the_trials_in_flight(tmp_path, fake_log, fixed_profile, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "FFMMMM")
    monkeypatch.setenv("FAKE_SLOW", "MMMMMM")
    out = tmp_path / "study"
    t0 = time.time()
    result = run_ablation([_preset(tmp_path)], ["ablate.jobs=2"], placements="MMMMMM,FFMMMM,FFFFFF", out=out,
                          fail_fast=True)
    assert time.time() - t0 < 60  # the slow trial was stopped, not waited for
    assert result.exit_code == 1 and result.failed == ["MMMMMM-s0", "FFMMMM-s0", "FFFFFF-s0"]
    assert [r["trial_id"] for r in _lines(out / "results.jsonl")] == ["FFMMMM-s0"]
    assert not _alive(int((out / "trials" / "MMMMMM-s0" / "pid").read_text()))


def test_devices_are_divided_between_concurrent_trials(tmp_path, monkeypatch):
    study = load_study([_preset(tmp_path)], ["trainer.accelerator=auto", "trainer.devices=2"],
                       placements="MMMMMM,FFFMMM", seeds="0,1,2")
    monkeypatch.setattr("fmb.ablation.devices.visible_gpus", lambda: [str(i) for i in range(8)])
    slots = plan_slots(study, pending=6)  # 8 GPUs, 2 per trial: 4 DDP trials at once
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["0,1", "2,3", "4,5", "6,7"]
    assert len({s.env["MASTER_PORT"] for s in slots}) == 4  # each DDP trial its own rendezvous port
    assert plan_slots(study, pending=3)[-1].env["CUDA_VISIBLE_DEVICES"] == "4,5"  # no more slots than trials
    study.ablate["jobs"] = 5
    with pytest.raises(FmbError, match="ablate.jobs <= 4"):
        plan_slots(study, pending=6)
    study.ablate.update(jobs=None, devices_per_trial=4)
    with pytest.raises(FmbError, match="set them equal"):
        plan_slots(study, pending=6)
    cpu = load_study([_preset(tmp_path)], [], placements="MMMMMM,FFFMMM")  # trainer.accelerator=cpu
    assert len(plan_slots(cpu, pending=2, cpu_count=8)) == 1  # CPU default: one trial, all cores
    cpu.ablate["jobs"] = 2
    assert [s.env["OMP_NUM_THREADS"] for s in plan_slots(cpu, pending=2, cpu_count=8)] == ["4", "4"]
    with pytest.raises(FmbError, match="ablate.jobs"):
        load_study([_preset(tmp_path)], ["ablate.jobs=0"])


def _append_many(root, worker, n):
    store = StudyDir(root)
    for i in range(n):
        store.append({"trial_id": f"w{worker}-{i}", "placement": "M", "status": "completed", "pad": "x" * 5000})
    store.append({"trial_id": "shared", "placement": "M", "status": "completed", "by": worker})


def test_store_is_safe_for_concurrent_writers(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(tmp_path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = _lines(tmp_path / "results.jsonl")  # every line whole (5 kB each: no interleaving)
    assert len(lines) == 4 * 40 + 1
    assert len({r["trial_id"] for r in lines}) == 4 * 40 + 1  # the trial all four finished: recorded once
