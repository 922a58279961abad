"""fmb ablate: plans, the report, resume after SIGKILL, failing trials, bad input.

Trials run a tiny fake trainer (a script that speaks the `fmb train` contract: writes
summary.json into run.dir, or fails, or hangs) so these tests check the sweep machinery in
seconds; `test_real_training_sweep` runs the real `fmb train` and is marked slow.
"""
import json
import re
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

import forked
from fmb import create_model
from fmb.ablation import run_ablation
from fmb.ablation.plan import generate_placements, parse_placements, parse_seeds
from fmb.errors import FmbError

REPO = Path(__file__).resolve().parent.parent
VARIANT = "efficientnetv2_b0"

FAKE_TRAINER = r'''
import json, os, sys, time
args = sys.argv[1:]
started = time.time()
if args[:2] == ["train", "--resume"]:  # a trial continued from its last.ckpt (requeued SLURM job)
    run_dir = args[2]
    placement, seed = os.path.basename(run_dir).rsplit("-s", 1)
    seed, attempt = int(seed), "resume:"
else:
    assert args[0] == "train" and "-c" in args, args
    kv = dict(a.split("=", 1) for a in args if "=" in a)
    run_dir, placement, seed, attempt = kv["run.dir"], kv["model.blocks"], int(kv["run.seed"]), ""
os.makedirs(run_dir, exist_ok=True)
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(f"{attempt}{placement}-s{seed}\n")
open(os.path.join(run_dir, "pid"), "w").write(str(os.getpid()))
open(os.path.join(run_dir, "env.json"), "w").write(json.dumps(
    {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}))
if placement == os.environ.get("FAKE_FAIL"):
    print("error: boom in " + placement, file=sys.stderr)
    sys.exit(1)
if not attempt and placement in os.environ.get("FAKE_SLOW", "").split(","):
    os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
    open(os.path.join(run_dir, "checkpoints", "last.ckpt"), "w").close()
    open(os.path.join(run_dir, "started"), "w").close()
    time.sleep(120)
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
top1 = 0.5 + 0.05 * placement.count("F") + 0.01 * seed
top1 += float(os.environ.get("FAKE_JITTER", "0")) * (seed % 2) * placement.count("F")  # differences vary by seed
summary = {"status": "completed", "val_top1": top1, "best_val_top1": top1, "val_loss": 1.0, "epochs": 1,
           "global_step": 2, "params": 123, "train_images_per_sec": 10.0, "wall_time_s": 0.1,
           "placement": placement, "num_classes": 10, "image_size": 32, "eval_image_size": 32,
           "fake_started": started, "fake_ended": time.time()}
with open(os.path.join(run_dir, "summary.json"), "w") as f:
    json.dump(summary, f)
'''


def _preset(tmp_path, fake=True, **ablate) -> Path:
    cfg = {
        "model": {"variant": VARIANT, "width_mult": 0.25, "depth_mult": 0.25},
        "data": {"source": "digits", "image_size": 32, "eval_image_size": 32, "batch_size": 16, "num_workers": 0},
        "trainer": {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 2, "accelerator": "cpu",
                    "devices": 1},
        "ablate": {"seeds": [0], "profile": {"resolution": 32, "batch_size": 2, "device": "cpu", "warmup": 0,
                                             "iters": 1, "num_classes": 10}, **ablate},
    }
    if fake:
        script = tmp_path / "fake_train.py"
        script.write_text(FAKE_TRAINER)
        cfg["ablate"]["train_command"] = [sys.executable, str(script)]
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def fake_log(tmp_path, monkeypatch):
    log = tmp_path / "invocations.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    return log


def _lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), "results.jsonl must end on a complete line"
    return [json.loads(line) for line in data.decode().splitlines()]


def _cli(*args, env=None, new_session=False):
    """`fmb ablate ARGS` in a process of its own (forked from one that imported fmb)."""
    return forked.fmb(["ablate", *args], cwd=REPO, env=env, new_session=new_session)


def test_plans():
    assert generate_placements("prefix", 3) == ["MMM", "FMM", "FFM", "FFF"]
    assert generate_placements("single", 3) == ["MMM", "FMM", "MFM", "MMF"]
    assert len(generate_placements("exhaustive", 6)) == 64
    with pytest.raises(FmbError, match="above the cap of 64"):
        generate_placements("exhaustive", 7)
    assert len(generate_placements("exhaustive", 7, force=True)) == 128
    assert parse_placements("mmmmmm, FFFMMM", VARIANT) == ["MMMMMM", "FFFMMM"]
    assert parse_seeds("0, 2") == [0, 2]


@pytest.mark.slow
def test_profile_only_prefix_params_match_create_model(tmp_path):
    result = run_ablation([_preset(tmp_path, fake=False)], profile_only=True, sweep="prefix", out=tmp_path / "study")
    assert result.exit_code == 0
    assert [r["placement"] for r in result.rows] == ["F" * k + "M" * (6 - k) for k in range(7)]
    for row in result.rows:
        model = create_model(VARIANT, num_classes=10, blocks=row["placement"], width_mult=0.25, depth_mult=0.25)
        assert row["params"] == sum(p.numel() for p in model.parameters()), row["placement"]
        assert row["macs"] > 0 and row["infer_images_per_sec"] > 0 and row["train_images_per_sec"] > 0
    assert [r["trial_id"] for r in _lines(tmp_path / "study" / "results.jsonl")] == [r["placement"] for r in result.rows]
    assert (tmp_path / "study" / "throughput_vs_params.png").stat().st_size > 0


@pytest.mark.slow
def test_training_sweep_writes_report_csv_plots(tmp_path, fake_log, fixed_profile):
    preset = _preset(tmp_path, fused_overrides={"se_ratio": 0.0})
    out, js = tmp_path / "study", tmp_path / "out.json"
    result = run_ablation([preset], placements="MMMMMM,FFFMMM", seeds="0,1", out=out, json_path=js)
    assert result.exit_code == 0 and result.failed == []
    assert sorted(fake_log.read_text().split()) == ["FFFMMM-s0", "FFFMMM-s1", "MMMMMM-s0", "MMMMMM-s1"]
    fused = next(r for r in result.rows if r["placement"] == "FFFMMM")
    assert fused["top1_mean"] == pytest.approx(65.5) and fused["top1_std"] == pytest.approx(0.7071, abs=1e-3)
    assert fused["top1_delta"] == pytest.approx(15.0) and fused["seeds_completed"] == 2
    report = (out / "report.md").read_text()
    assert "| FFFMMM | 1-3 |" in report and "65.50 ± 0.71 (+15.00)" in report and "**MMMMMM**" in report
    assert len((out / "results.csv").read_text().strip().splitlines()) == 1 + 4
    for png in ("top1_vs_train_throughput.png", "params_vs_top1.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # each trial's -c file is a train config: no ablate section, the per-trial SE override applied
    trial_cfg = yaml.safe_load((out / "trials" / "FFFMMM-s0" / "trial.yaml").read_text())
    assert "ablate" not in trial_cfg and "blocks" not in trial_cfg["model"]
    assert trial_cfg["model"]["stage_overrides"] == {i: {"se_ratio": 0.0} for i in (1, 2, 3)}
    assert yaml.safe_load((out / "trials" / "MMMMMM-s0" / "trial.yaml").read_text())["model"]["stage_overrides"] == {}
    assert json.loads(js.read_text())["placements"][1]["placement"] == "FFFMMM"
    # the same command again finds everything finished and runs nothing
    assert run_ablation([preset], placements="MMMMMM,FFFMMM", seeds="0,1", out=out).exit_code == 0
    assert len(fake_log.read_text().split()) == 4 and len(_lines(out / "results.jsonl")) == 4


@pytest.mark.slow
def test_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, fake_log, fixed_profile, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "FFMMMM")
    preset = _preset(tmp_path)
    result = run_ablation([preset], placements="MMMMMM,FFMMMM,FFFFFF", out=tmp_path / "a")
    assert result.exit_code == 1 and result.failed == ["FFMMMM-s0"]
    by_id = {r["trial_id"]: r for r in _lines(tmp_path / "a" / "results.jsonl")}
    assert by_id["FFMMMM-s0"]["status"] == "failed" and "boom in FFMMMM" in by_id["FFMMMM-s0"]["error"]
    assert by_id["MMMMMM-s0"]["status"] == by_id["FFFFFF-s0"]["status"] == "completed"
    assert "## Failed trials" in (tmp_path / "a" / "report.md").read_text()
    # --fail-fast: the first failure ends the sweep; the trial never run still counts as failed
    result = run_ablation([preset], placements="FFMMMM,MMMMMM", out=tmp_path / "b", fail_fast=True)
    assert result.exit_code == 1 and result.failed == ["FFMMMM-s0", "MMMMMM-s0"]
    assert [r["trial_id"] for r in _lines(tmp_path / "b" / "results.jsonl")] == ["FFMMMM-s0"]
    # a failed trial is re-run on the next invocation, and the latest line wins
    monkeypatch.delenv("FAKE_FAIL")
    result = run_ablation([preset], placements="MMMMMM,FFMMMM,FFFFFF", out=tmp_path / "a")
    runs = fake_log.read_text().split()
    assert result.exit_code == 0 and runs.count("MMMMMM-s0") == 1 and runs.count("FFMMMM-s0") == 3


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkilled_sweep_resumes_without_rerunning_finished_trials(tmp_path, fake_log, run_cli):
    preset, out = _preset(tmp_path), tmp_path / "study"
    env = {**os.environ, "FAKE_SLOW": "FFMMMM"}
    proc = _cli("-c", preset, "--placements", "MMMMMM,FFMMMM,FFFFFF", "--out", out, env=env, new_session=True)
    started = out / "trials" / "FFMMMM-s0" / "started"
    deadline = time.time() + 90
    while not started.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    trial_pid = int((started.parent / "pid").read_text())
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep's whole process group, mid-trial
    proc.communicate()
    deadline = time.time() + 10
    while _alive(trial_pid) and time.time() < deadline:  # the trial dies with its sweep
        time.sleep(0.1)
    assert not _alive(trial_pid)
    assert [r["trial_id"] for r in _lines(out / "results.jsonl")] == ["MMMMMM-s0"]
    first_summary = (out / "trials" / "MMMMMM-s0" / "summary.json").stat().st_mtime_ns

    resumed = run_cli("ablate", "--resume", "--out", out)  # the stored invocation, without FAKE_SLOW
    assert resumed.returncode == 0, resumed.stderr
    ids = [r["trial_id"] for r in _lines(out / "results.jsonl")]
    assert sorted(ids) == ["FFFFFF-s0", "FFMMMM-s0", "MMMMMM-s0"]  # each exactly once
    assert fake_log.read_text().split() == ["MMMMMM-s0", "FFMMMM-s0", "FFMMMM-s0", "FFFFFF-s0"]
    assert (out / "trials" / "MMMMMM-s0" / "summary.json").stat().st_mtime_ns == first_summary
    assert not (out / "trials" / "FFMMMM-s0" / "started").exists()  # the interrupted attempt was replaced
    assert (out / "report.md").exists() and "FFFFFF" in resumed.stdout


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_bad_input_is_one_line_exit_2_and_leaves_dir_alone(tmp_path, run_cli, fixed_profile):
    preset, out = _preset(tmp_path, fake=False), tmp_path / "study"
    run_ablation([preset], placements="MMMMMM", profile_only=True, out=out)
    before = _snapshot(out)
    # through the command line (in this process) ...
    cli_cases = {
        ("--placements", "FFFMM"): "expected 6 letters",
        ("--sweep", "exhaustive", "ablate.exhaustive_cap=8"): "above the cap of 8",
        ("--seeds", "0,x"): "invalid seed 'x'",
        ("--profile-only", "model.width_mult=0.5"): "model.width_mult: 0.25 here, 0.5 now",
    }
    for args, message in cli_cases.items():
        result = run_cli("ablate", "-c", preset, "--out", out, *args)
        stderr = result.stderr
        assert result.returncode == 2, (args, stderr)
        assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error:"), (args, stderr)
        assert message in stderr, (args, stderr)
    # ... and the rest through the library function the command wraps (same FmbError, exit 2)
    lib_cases = [
        (dict(placements="FFXMMM"), "each F (Fused-MBConv) or M"),
        (dict(placements="FFFMMM,fffmmm"), "listed twice"),
        (dict(placements=" , "), "empty placement list"),
        (dict(seeds=""), "empty seed list"),
        (dict(seeds="1,1"), "repeats a seed"),
        (dict(sweep="diagonal"), "unknown sweep"),
        (dict(placements="MMMMMM", sweep="prefix"), "not both"),
        (dict(overrides=["run.seed=3"]), "use --seeds"),
        (dict(overrides=["ablate.sweeps=prefix"]), "unknown ablate setting 'sweeps'"),
        (dict(overrides=["ablate.profile.iters=0"]), "invalid ablate.profile.iters=0; expected an integer >= 1"),
        (dict(overrides=["ablate.fused_overrides={kernel_size: 4}"]), "odd kernel size"),
        (dict(overrides=["model.stage_overrides.1.block=fused"]), "chooses each stage's block"),
        (dict(profile_only=False), "holds a different study"),
    ]
    for kwargs, message in lib_cases:
        overrides = kwargs.pop("overrides", [])
        with pytest.raises(FmbError, match=re.escape(message)) as info:
            run_ablation([preset], overrides, out=out, **{"profile_only": True, **kwargs})
        assert info.value.exit_code == 2 and "\n" not in str(info.value)
    with pytest.raises(FmbError, match="not an fmb ablate study"):
        run_ablation([preset], profile_only=True, out=tmp_path)  # a non-empty dir without study.json
    assert _snapshot(out) == before


@pytest.mark.subprocess
@pytest.mark.slow
def test_real_training_sweep(tmp_path, run_cli):
    """Two placements through the real `fmb train` on digits (each trial its own process), a
    couple of steps each."""
    preset, out = _preset(tmp_path, fake=False), tmp_path / "study"
    result = run_cli("ablate", "-c", preset, "--placements", "MMMMMM,FFFMMM", "--out", out, "--json",
                     tmp_path / "r.json")
    assert result.returncode == 0, result.stderr[-3000:]
    trials = json.loads((tmp_path / "r.json").read_text())["trials"]
    assert [t["status"] for t in trials] == ["completed", "completed"]
    for t in trials:
        assert 0 <= t["val_top1"] <= 1 and t["trained_params"] == t["params"]
        assert (Path(t["run_dir"]) / "checkpoints" / "last.ckpt").exists()
    for name in ("report.md", "results.csv", "top1_vs_train_throughput.png", "params_vs_top1.png"):
        assert (out / name).exists(), name
