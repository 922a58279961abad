"""A study decides its auto settings once: every trial trains in the same precision and memory
format, and a resumed study keeps them even where this machine would decide otherwise."""
import json
import sys

import pytest
import yaml

from fmb.ablation import run_ablation
from fmb.device import Machine

RECORDER = r'''
import json, os, sys
kv = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
os.makedirs(kv["run.dir"], exist_ok=True)
with open(os.environ["ARGS_LOG"], "a") as f:
    f.write(json.dumps(kv) + "\n")
summary = {"status": "completed", "val_top1": 0.5, "best_val_top1": 0.5, "val_loss": 1.0, "epochs": 1,
           "global_step": 2, "params": 123, "train_images_per_sec": 10.0, "wall_time_s": 0.1,
           "placement": kv["model.blocks"], "num_classes": 10, "image_size": 32, "eval_image_size": 32}
json.dump(summary, open(os.path.join(kv["run.dir"], "summary.json"), "w"))
'''


def _study(tmp_path, seeds):
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    preset = tmp_path / "preset.yaml"
    preset.write_text(yaml.safe_dump({
        "model": {"variant": "efficientnetv2_b0", "width_mult": 0.25, "depth_mult": 0.25},
        "data": {"source": "digits", "image_size": 32, "batch_size": 16, "num_workers": 0},
        "trainer": {"accelerator": "cpu", "devices": 1},
        "ablate": {"seeds": seeds, "train_command": [sys.executable, str(script)],
                   "profile": {"resolution": 32, "batch_size": 2, "device": "cpu", "warmup": 0, "iters": 1,
                               "num_classes": 10}}}))
    return preset


@pytest.mark.slow
def test_every_trial_gets_the_studys_auto_settings_and_a_resume_keeps_them(tmp_path, monkeypatch):
    log = tmp_path / "args.jsonl"
    monkeypatch.setenv("ARGS_LOG", str(log))
    measured = []

    def measure(kwargs, size, batch):
        measured.append(kwargs.get("blocks"))
        return {"fp32_ms": 100.0, "bf16_ms": 50.0}
    monkeypatch.setattr("fmb.training.precision_probe.measure_model_precision", measure)
    monkeypatch.setattr("fmb.ablation.study_auto.machine", lambda: Machine(cpu_native_bf16=True, cores=2))
    out = tmp_path / "study"
    result = run_ablation([_study(tmp_path, [0])], placements="MMMMMM,FFFMMM", out=out)
    assert result.exit_code == 0
    trials = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(trials) == 2 and len(measured) == 1  # measured once, for the study
    assert {(t["trainer.precision"], t["model.channels_last"]) for t in trials} == {("bf16-mixed", "True")}
    stored = json.loads((out / "study.json").read_text())["invocation"]["auto"]
    assert stored["trainer.precision"]["value"] == "bf16-mixed"

    # The study resumed on a machine that would pick fp32: its trials keep the study's choice.
    monkeypatch.setattr("fmb.ablation.study_auto.machine", lambda: Machine(cpu_native_bf16=False, cores=2))
    result = run_ablation([_study(tmp_path, [0, 1])], placements="MMMMMM,FFFMMM", out=out, resume=True)
    assert result.exit_code == 0
    trials = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(trials) == 4 and {t["trainer.precision"] for t in trials[2:]} == {"bf16-mixed"}
