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
from fmb.device import Machine
from fmb.training import auto


class FakeMachine(Machine):
    """A Machine whose load readings are set by the test."""

    def __init__(self, busy=0.0, load=0.0, **facts):
        super().__init__(**facts)
        object.__setattr__(self, "busy", busy)
        object.__setattr__(self, "load", load)

    def busy_cores(self):
        return self.busy

    def load_average(self):
        return self.load


@pytest.fixture
def hardware(monkeypatch, tmp_path):
    """Set the machine's facts: hardware(cuda=..., bf16=..., cpu_bf16=..., measured=(fp32_ms, bf16_ms));
    returns the list of precision measurements made (True per call)."""
    monkeypatch.setenv("FMB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    calls = []
    state = {}

    def set_facts(cuda=False, bf16=False, cpu_bf16=False, measured=None, cores=2, busy=0.0, load=0.0, gpus=0):
        state["machine"] = FakeMachine(busy=busy, load=load, cuda=cuda, cuda_bf16=cuda and bf16, cpu_native_bf16=cpu_bf16,
                                       cores=cores, cuda_count=gpus or int(cuda))

        def measure():
            calls.append(True)
            if measured is None:
                raise AssertionError("measured without native bf16")
            return {"fp32_ms": measured[0], "bf16_ms": measured[1]}
        state["measure"] = measure
        for where in ("fmb.training.run.machine", "fmb.training.module.machine"):
            monkeypatch.setattr(where, lambda: state["machine"])
        return calls
    set_facts.state = state
    yield set_facts
    torch.set_num_threads(threads)  # a run sets the process's threads


def plan(hardware, *overrides, **kw):
    cfg = load_config([], list(overrides))
    return auto.resolve(cfg, hardware.state["machine"], measure_precision=hardware.state["measure"], **kw)


def decided(hardware, *overrides):
    return {k: d.value for k, d in plan(hardware, *overrides).decisions.items()
            if k not in ("torch.threads", "data.num_workers", "model.compile", "model.cuda_graphs")}


def test_cuda_with_bf16_gets_bf16_and_channels_last(hardware):
    hardware(cuda=True, bf16=True)
    values = decided(hardware)
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
    assert decided(hardware)["trainer.precision"] == "16-mixed"


def test_cpu_without_native_bf16_stays_fp32_without_measuring(hardware):
    calls = hardware(cpu_bf16=False)
    values = decided(hardware)
    assert values == {"trainer.accelerator": "cpu", "trainer.precision": "32-true", "model.channels_last": False}
    assert calls == []


def test_cpu_bf16_used_only_where_this_models_step_measures_faster(hardware):
    calls = hardware(cpu_bf16=True, measured=(100.0, 60.0))
    values = decided(hardware)
    assert values["trainer.precision"] == "bf16-mixed" and values["model.channels_last"] is True
    assert calls == [True]
    assert "this model's training step measured bf16 60.0 ms vs fp32 100.0 ms" in plan(
        hardware).decisions["trainer.precision"].reason
    hardware(cpu_bf16=True, measured=(100.0, 95.0))  # not a clear win
    assert decided(hardware)["trainer.precision"] == "32-true"


def test_the_precision_measurement_is_this_models_and_cached(monkeypatch, tmp_path):
    from fmb.training import precision_probe
    monkeypatch.setenv("FMB_CACHE", str(tmp_path / "cache"))
    timed = []

    def step_ms(step, iters=3):
        step()
        timed.append(step)
        return 10.0 * len(timed)
    monkeypatch.setattr(precision_probe, "step_ms", step_ms)
    kwargs = {"name": "efficientnetv2_b0", "width_mult": 0.25, "depth_mult": 0.25}
    first = precision_probe.measure_model_precision(kwargs, 32, 4)
    assert set(first) == {"fp32_ms", "bf16_ms"} and len(timed) == 4  # two alternated rounds each way
    assert precision_probe.measure_model_precision(kwargs, 32, 4) == first and len(timed) == 4  # the cache answered
    precision_probe.measure_model_precision({**kwargs, "name": "efficientnet_b0"}, 32, 4)
    assert len(timed) == 8  # another model: its own measurement
    precision_probe.measure_model_precision(kwargs, 64, 4)
    assert len(timed) == 12  # another size too


def test_explicit_values_win(hardware):
    hardware(cuda=True, bf16=True)
    values = decided(hardware, "trainer.precision=32-true", "model.channels_last=false", "model.compile=false",
                     "trainer.accelerator=cpu")
    assert values == {"trainer.accelerator": "cpu", "trainer.precision": "32-true", "model.channels_last": False}
    hardware(cpu_bf16=False)
    decisions = plan(hardware, "model.channels_last=true", "trainer.precision=bf16-mixed").decisions
    assert decisions["model.channels_last"].value is True and decisions["trainer.precision"].value == "bf16-mixed"
    assert decisions["model.channels_last"].requested is True


def test_cpu_threads_are_every_core_whatever_else_runs(hardware):
    hardware(busy=1.2, load=3.5)  # other jobs hold a core: the run's threads do not follow them
    decision = plan(hardware).decisions["torch.threads"]
    assert decision.value == 2 and "same seed, same numbers" in decision.reason
    assert plan(hardware, "run.threads=1").decisions["torch.threads"].value == 1
    assert plan(hardware, "run.threads=1").decisions["torch.threads"].requested == 1


def test_following_the_load_is_opt_in_and_takes_the_cores_others_leave_free(hardware, monkeypatch):
    hardware()
    threads = ["run.threads=follow_load"]
    assert plan(hardware, *threads).decisions["torch.threads"].value == 2  # quiet machine: every core
    assert plan(hardware, *threads).follow_load and not plan(hardware).follow_load
    hardware(load=3.5)  # a job that just ended still holds the load average
    assert plan(hardware, *threads).decisions["torch.threads"].value == 2  # but the cores are free now
    hardware(busy=1.2)
    assert plan(hardware, *threads).decisions["torch.threads"].value == 1  # other jobs hold the cores: one thread
    hardware(busy=None, load=1.7)  # no /proc/stat: the load average
    assert plan(hardware, *threads).decisions["torch.threads"].value == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert plan(hardware, *threads).decisions["torch.threads"].requested == "2"  # the user's setting wins


def test_apply_writes_the_decided_values_into_the_config(hardware):
    hardware(cuda=True, bf16=True)
    cfg = load_config([], ["progressive.enabled=true", "trainer.max_epochs=4"])
    the_plan = auto.resolve(cfg, hardware.state["machine"])
    the_plan.decisions["model.compile"] = auto.compile_("auto", "cuda", True, 10**6)
    ran = the_plan.apply(cfg)
    assert ran.trainer["precision"] == "bf16-mixed" and ran.model.channels_last is True and ran.model.compile is True
    assert cfg.trainer["precision"] == "auto" and cfg.model.compile == "auto"  # the asked-for config is intact


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
    assert saved["trainer.precision"] == {"value": "32-true", "requested": "auto", "reason": auto.precision(
        "auto", "cpu", hardware.state["machine"]).reason}
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
    hardware(cuda=True, bf16=True, cores=16, gpus=2)

    def workers(*overrides):
        return plan(hardware, *overrides).decisions["data.num_workers"]
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
    machine = FakeMachine(cores=2)
    follow, epoch = FollowLoad(machine), SimpleNamespace(current_epoch=1)

    def load(value):
        object.__setattr__(machine, "load", value)
    try:
        torch.set_num_threads(1)
        load(1.1)  # only this run (one thread): the machine is free
        follow.on_train_epoch_start(epoch, None)
        assert torch.get_num_threads() == 2 and "threads: 1 → 2" in capsys.readouterr().err
        follow.on_train_epoch_start(epoch, None)  # 2 threads keep the load at ~2: stays
        load(2.1)
        follow.on_train_epoch_start(epoch, None)
        assert torch.get_num_threads() == 2
        load(3.2)  # another job took a core
        follow.on_train_epoch_start(epoch, None)
        assert torch.get_num_threads() == 1
        load(0.2)
        follow.on_train_epoch_start(SimpleNamespace(current_epoch=0), None)  # epoch 0: the start decision stands
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_threads_are_fmbs_to_follow_only_on_one_cpu_process(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    follow = auto.FOLLOW_LOAD
    assert auto.follows_load(follow, "cpu", 1) and auto.follows_load(follow, "cpu", "auto")
    assert not auto.follows_load(follow, "cpu", 2) and not auto.follows_load(follow, "cuda", 1)
    assert not auto.follows_load("auto", "cpu", 1)  # opt-in
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert not auto.follows_load(follow, "cpu", 1)


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


@pytest.mark.slow
def test_the_same_seed_gives_the_same_metrics_with_a_busy_neighbour(image_folder, tmp_path, monkeypatch):
    """Threads come from the machine's cores, not its neighbours' load: a run next to a busy
    process computes the same sums, so seed-paired trials stay comparable."""
    from fmb.training.run import train
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    extra = {"trainer.limit_train_batches": 2, "trainer.limit_val_batches": 2, "trainer.max_epochs": 1}
    quiet = train(load_config([], tiny_train_overrides(image_folder, tmp_path / "quiet", **extra)))
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = train(load_config([], tiny_train_overrides(image_folder, tmp_path / "busy", **extra)))
    finally:
        spinner.kill()
        spinner.wait()
    assert busy["auto"]["torch.threads"] == quiet["auto"]["torch.threads"]
    assert (busy["val_loss"], busy["val_top1"]) == (quiet["val_loss"], quiet["val_top1"])
