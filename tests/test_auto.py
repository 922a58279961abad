"""`auto` settings (fmb/training/auto.py): each decision from monkeypatched hardware facts,
explicit values winning, the CPU bf16 measurement cached, and the record in summary.json."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_train_overrides
from fmb.config import load_config
from fmb.errors import FmbError
from fmb.training import auto


@pytest.fixture
def hardware(monkeypatch, tmp_path):
    """Set the machine's facts: hardware(cuda=..., bf16=..., cpu_bf16=..., measured=(fp32_ms, bf16_ms))."""
    monkeypatch.setenv("FMB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(auto, "cpu_cores", lambda: 2)
    monkeypatch.setattr(auto, "cpu_load", lambda: 0.0)
    monkeypatch.setattr(auto, "others_busy_cores", lambda: 0.0)
    threads = torch.get_num_threads()
    calls = []

    def set_facts(cuda=False, bf16=False, cpu_bf16=False, measured=None):
        monkeypatch.setattr(auto, "cuda_available", lambda: cuda)
        monkeypatch.setattr(auto, "cuda_bf16", lambda: cuda and bf16)
        monkeypatch.setattr(auto, "mps_available", lambda: False)
        monkeypatch.setattr(auto, "cpu_native_bf16", lambda: cpu_bf16)

        def step_ms(use_bf16, iters=3):
            calls.append(use_bf16)
            if measured is None:
                raise AssertionError("measured without native bf16")
            return measured[1] if use_bf16 else measured[0]
        monkeypatch.setattr(auto, "_step_ms", step_ms)
        return calls
    yield set_facts
    torch.set_num_threads(threads)  # a run sets the process's threads


def decided(*overrides):
    cfg = load_config([], list(overrides))
    return {k: d.value for k, d in auto.decide(cfg).items() if k not in ("torch.threads", "data.num_workers")}, cfg


def test_cuda_with_bf16_gets_bf16_and_channels_last(hardware):
    hardware(cuda=True, bf16=True)
    values, _ = decided()
    assert values == {"trainer.accelerator": "cuda", "trainer.precision": "bf16-mixed", "model.channels_last": True}


def test_compile_only_for_cuda_runs_long_enough_to_repay_it():
    long, short = auto.COMPILE_MIN_STEPS, auto.COMPILE_MIN_STEPS - 1
    assert auto.compile_("auto", "cuda", False, long).value is True
    assert "static shapes" in auto.compile_("auto", "cuda", False, long).reason
    assert "dynamic shapes" in auto.compile_("auto", "cuda", True, long).reason  # progressive: one graph
    decision = auto.compile_("auto", "cuda", False, 600)  # the digits front door
    assert decision.value is False and "600 training steps" in decision.reason
    assert auto.compile_("auto", "cuda", False, None).value is False  # a stream: length unknown
    assert auto.compile_("auto", "cpu", False, 10 * long).value is False
    assert auto.compile_(True, "cpu", False, 1).line("model.compile") == "model.compile=True (explicit)"
    assert short < long


def test_planned_steps_count_as_lightning_does():
    # 1617 images, 32 per step: 50 full batches (drop_last) per epoch, 12 epochs
    assert auto.planned_steps(1617, 32, 1, {"max_epochs": 12}) == 600
    assert auto.planned_steps(1617, 64, 2, {"max_epochs": 12}) == 25 * 12  # 50 batches of 32, 2 per step
    assert auto.planned_steps(1617, 64, 1, {"max_epochs": 2, "max_steps": 30}) == 30  # the smaller limit
    assert auto.planned_steps(None, 32, 1, {"max_epochs": 12}) is None  # a stream
    assert auto.planned_steps(None, 32, 1, {"max_epochs": -1, "max_steps": 500}) == 500


def test_cuda_without_bf16_gets_fp16_mixed(hardware):
    hardware(cuda=True, bf16=False)
    assert decided()[0]["trainer.precision"] == "16-mixed"


def test_cpu_without_native_bf16_stays_fp32_without_measuring(hardware):
    calls = hardware(cpu_bf16=False)
    values, _ = decided()
    assert values == {"trainer.accelerator": "cpu", "trainer.precision": "32-true", "model.channels_last": False}
    assert calls == []


def test_cpu_bf16_used_only_where_it_measures_faster_and_the_result_is_cached(hardware, tmp_path):
    calls = hardware(cpu_bf16=True, measured=(100.0, 60.0))
    values, _ = decided()
    assert values["trainer.precision"] == "bf16-mixed" and values["model.channels_last"] is True
    measured = len(calls)
    assert measured and json.loads((tmp_path / "cache" / "cpu_bf16.json").read_text())
    decided()
    assert len(calls) == measured  # the cache answered

    hardware(cpu_bf16=True, measured=(100.0, 95.0))  # not a clear win (cache keyed the same: clear it)
    (tmp_path / "cache" / "cpu_bf16.json").unlink()
    assert decided()[0]["trainer.precision"] == "32-true"


def test_explicit_values_win(hardware):
    hardware(cuda=True, bf16=True)
    values, _ = decided("trainer.precision=32-true", "model.channels_last=false", "model.compile=false",
                        "trainer.accelerator=cpu")
    assert values == {"trainer.accelerator": "cpu", "trainer.precision": "32-true", "model.channels_last": False}
    hardware(cpu_bf16=False)
    cfg = load_config([], ["model.channels_last=true", "trainer.precision=bf16-mixed"])
    decisions = auto.decide(cfg)
    assert decisions["model.channels_last"].value is True and decisions["trainer.precision"].value == "bf16-mixed"
    assert decisions["model.channels_last"].requested is True


def test_cpu_threads_are_the_cores_other_processes_leave_free(hardware, monkeypatch):
    hardware()
    cfg = load_config([], [])
    assert auto.decide(cfg)["torch.threads"].value == 2  # quiet machine: every core
    monkeypatch.setattr(auto, "cpu_load", lambda: 3.5)  # a job that just ended still holds the load average
    assert auto.decide(cfg)["torch.threads"].value == 2  # but the cores are free now
    monkeypatch.setattr(auto, "others_busy_cores", lambda: 1.2)
    assert auto.decide(cfg)["torch.threads"].value == 1  # other jobs hold the cores: one thread
    monkeypatch.setattr(auto, "others_busy_cores", lambda: None)  # no /proc/stat: the load average
    assert auto.decide(cfg)["torch.threads"].value == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert auto.decide(cfg)["torch.threads"].requested == "2"  # the user's setting wins


def test_apply_writes_the_decided_values_into_the_config(hardware):
    hardware(cuda=True, bf16=True)
    cfg = load_config([], ["progressive.enabled=true", "trainer.max_epochs=4"])
    decisions = {**auto.decide(cfg), "model.compile": auto.compile_("auto", "cuda", True, 10**6)}
    auto.apply(cfg, decisions)
    assert cfg.trainer["precision"] == "bf16-mixed" and cfg.model.channels_last is True and cfg.model.compile is True


def test_auto_is_the_default_and_other_words_are_refused():
    cfg = load_config([], [])
    assert cfg.model.channels_last == "auto" and cfg.model.compile == "auto" and cfg.trainer["precision"] == "auto"
    with pytest.raises(FmbError, match="model.channels_last"):
        load_config([], ["model.channels_last=sometimes"])


def test_module_resolves_auto_itself(hardware, tiny):
    hardware(cpu_bf16=False)
    from fmb.training.module import ImageClassifier
    cfg = load_config([], ["model.width_mult=0.25", "model.depth_mult=0.25"])
    cfg.data.image_size = cfg.data.eval_image_size = 32
    module = ImageClassifier(cfg, 3)
    assert module.channels_last is False and module._compiled is None


def test_compiled_forward_serves_training_only(hardware, tiny):
    """Evaluation stays eager: no-grad mode and a ragged last batch would each recompile."""
    hardware(cpu_bf16=False)
    from fmb.training.module import ImageClassifier
    cfg = load_config([], ["model.width_mult=0.25", "model.depth_mult=0.25", "model.compile=false"])
    cfg.data.image_size = cfg.data.eval_image_size = 32
    module = ImageClassifier(cfg, 3)
    module.__dict__["_compiled"] = lambda x: "compiled"  # stands in for torch.compile's wrapper
    x = torch.randn(2, 3, 32, 32)
    assert module.train()(x) == "compiled"
    with torch.no_grad():
        assert module(x).shape == (2, 3)
    assert module.eval()(x).shape == (2, 3)


def test_run_prints_and_records_its_decisions(hardware, image_folder, tmp_path, capsys):
    hardware(cpu_bf16=False)
    from fmb.training.run import train
    run_dir = tmp_path / "r"
    summary = train(load_config([], tiny_train_overrides(image_folder, run_dir, **{"trainer.limit_train_batches": 1,
                                                                                 "trainer.limit_val_batches": 1})))
    saved = json.loads((run_dir / "summary.json").read_text())["auto"]
    assert saved == summary["auto"]
    assert saved["trainer.precision"] == {"value": "32-true", "requested": "auto",
                                          "reason": auto.cpu_bf16_faster()[1]}
    assert saved["model.channels_last"]["value"] is False and saved["torch.threads"]["value"] == 2
    assert saved["model.compile"]["value"] is False  # decided once the data's size was known
    printed = capsys.readouterr()
    assert (printed.out + printed.err).count("auto: trainer.accelerator=cpu") == 1  # once, at start
    config = yaml.safe_load((run_dir / "config.yaml").read_text())  # config.yaml holds what ran
    assert config["trainer"]["precision"] == "32-true" and config["model"]["compile"] is False


def test_loader_workers_follow_the_machine(hardware, monkeypatch):
    from fmb.data.workers import MAX_WORKERS, auto_workers
    assert auto_workers(True, 1, cores=16)[0] == 15  # one H200 machine: every core but the trainer's
    assert auto_workers(True, 8, cores=96)[0] == 11  # a node of eight: each GPU its twelfth
    assert auto_workers(True, 1, cores=256)[0] == MAX_WORKERS
    assert auto_workers(True, 4, cores=4)[0] == 1
    assert auto_workers(False, 1, cores=2)[0] == 2 and auto_workers(False, 1, cores=1)[0] == 1
    hardware(cuda=True, bf16=True)
    monkeypatch.setattr(auto, "cpu_cores", lambda: 16)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    def workers(*overrides):
        return auto.decide(load_config([], list(overrides)))["data.num_workers"]
    assert workers().value == 15  # trainer.devices=1, the default
    assert workers("trainer.devices=auto").value == 7  # both GPUs: half the cores each
    assert workers("trainer.devices=[0,1]").value == 7
    assert workers("data.num_workers=3").value == 3 and workers("data.num_workers=3").reason == "explicit"
    with pytest.raises(FmbError, match="data.num_workers"):
        load_config([], ["data.num_workers=many"])


def test_threads_follow_the_load_at_each_epoch(monkeypatch, capsys):
    """The start decision reads a 1-minute load average that may still hold a job that just
    ended; each later epoch decides again, counting this run's own threads out of the load."""
    from types import SimpleNamespace

    from fmb.training.cpu_threads import FollowLoad
    threads = torch.get_num_threads()
    monkeypatch.setattr(auto, "cpu_cores", lambda: 2)
    follow, epoch = FollowLoad(), SimpleNamespace(current_epoch=1)
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(auto, "cpu_load", lambda: 1.1)  # only this run (one thread): the machine is free
        follow.on_train_epoch_start(epoch, None)
        assert torch.get_num_threads() == 2 and "threads: 1 → 2" in capsys.readouterr().err
        follow.on_train_epoch_start(epoch, None)  # 2 threads keep the load at ~2: stays
        monkeypatch.setattr(auto, "cpu_load", lambda: 2.1)
        follow.on_train_epoch_start(epoch, None)
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(auto, "cpu_load", lambda: 3.2)  # another job took a core
        follow.on_train_epoch_start(epoch, None)
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(auto, "cpu_load", lambda: 0.2)
        follow.on_train_epoch_start(SimpleNamespace(current_epoch=0), None)  # epoch 0: the start decision stands
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_threads_are_fmbs_to_follow_only_on_one_cpu_process(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert auto.follows_load("cpu", 1) and auto.follows_load("cpu", "auto")
    assert not auto.follows_load("cpu", 2) and not auto.follows_load("cuda", 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not auto.follows_load("cpu", 1)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc/stat")
def test_others_busy_cores_sees_a_busy_process_and_not_this_one():
    """The start-up sample counts what other processes use now, and not this process's own work."""
    from fmb.utils import others_busy_cores
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 5\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.5)
        assert others_busy_cores(window=1.0) >= 0.5
    finally:
        spinner.kill()
        spinner.wait()
