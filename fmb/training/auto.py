"""`auto` settings: the fastest correct mode for this run on this machine, decided once, in one pass.

`trainer.precision`, `trainer.accelerator`, `model.channels_last`, `model.compile`,
`data.num_workers` and `run.threads` accept `auto` (the defaults). `resolve(cfg, machine, ...)`
turns each into a concrete value with a one-line reason; an explicit value is kept as given.
It is a plain function of the config and the machine's facts (fmb/device.py): nothing is
measured here except through the `measure_precision` probe it is handed. The run prints the
plan once, records it in summary.json under `auto`, and config.yaml holds the values that ran
(`Plan.apply`); a resume decides afresh for the machine it runs on.

What decides, and why:
- accelerator: CUDA, else MPS, else CPU (what Lightning's `auto` picks).
- precision: bf16-mixed on CUDA GPUs with bf16 (Ampere and newer), 16-mixed on older ones
  (tensor cores, with Lightning's grad scaler); on a CPU bf16-mixed only when the CPU has
  native bf16 (AVX512-BF16 or AMX) *and* this model's own training step, at this size and
  batch, measures clearly faster in bf16 than in fp32 (a generic probe picked bf16 for models
  where it lost). Without native bf16 the CPU emulates it, several times slower: not measured.
- channels_last: on CUDA (cuDNN's NHWC kernels) and with bf16 on a CPU (oneDNN's bf16 convs
  are NHWC); off for fp32 on CPU and MPS.
- compile: torch.compile of the training forward on CUDA for runs long enough to repay it
  (`COMPILE_MIN_STEPS`); on an H200 compiling V2-S took ~70 s and saved ~8 ms of an 80 ms
  launch-bound step, so a 600-step run would spend far more compiling than it saved.
- data.num_workers: on CUDA each device's share of the cores less one, on CPU 2
  (fmb/data/workers.py).
- threads (CPU): every core of the machine, whatever else runs, so the same seed gives the
  same numbers on a busy machine (1 vs 2 threads change the float sums); `run.threads=
  follow_load` takes the cores other processes leave free instead, re-decided each epoch.
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from fmb.data.workers import auto_workers
from fmb.device import Machine, accelerator_type
from fmb.errors import FmbError

AUTO = "auto"
FOLLOW_LOAD = "follow_load"
# Training steps from which torch.compile pays on CUDA: ~70 s of compile at a saving of ~8 ms
# per step (launch-bound, measured on an H200) breaks even near 9k steps.
COMPILE_MIN_STEPS = 10_000
BF16_CLEAR_WIN = 0.9  # bf16 must take under 90 % of fp32's time: it also costs a little accuracy


@dataclass
class Decision:
    value: Any
    reason: str
    requested: Any = AUTO

    def line(self, key: str) -> str:
        if self.requested != AUTO:
            return f"{key}={self.value} (explicit)"
        return f"{key}={self.value} (auto: {self.reason})"


def _explicit(requested) -> Decision | None:
    return None if requested in (None, AUTO) else Decision(requested, "explicit", requested)


def accelerator(requested, machine: Machine) -> Decision:
    if _explicit(requested):
        return _explicit(requested)
    if machine.cuda:
        return Decision("cuda", "CUDA GPU found")
    if machine.mps:
        return Decision("mps", "Apple GPU found")
    return Decision("cpu", "no GPU found")


def precision(requested, device: str, machine: Machine, measure: Callable[[], dict] | None = None) -> Decision:
    """`measure()` → {"fp32_ms": .., "bf16_ms": ..} of this model's training step (CPU with native bf16 only)."""
    if _explicit(requested):
        return _explicit(requested)
    if device == "cuda":
        if machine.cuda_bf16:
            return Decision("bf16-mixed", "CUDA GPU with bf16")
        return Decision("16-mixed", "CUDA GPU without bf16: fp16 autocast with grad scaling")
    if device != "cpu":
        return Decision("32-true", f"{device}: fp32")
    if not machine.cpu_native_bf16:
        return Decision("32-true", "CPU has no native bf16 (no AVX512-BF16/AMX): emulated bf16 is slower than fp32")
    if measure is None:
        return Decision("32-true", "native bf16, but this model's step was not measured: fp32")
    m = measure()
    faster = m["bf16_ms"] < BF16_CLEAR_WIN * m["fp32_ms"]
    return Decision("bf16-mixed" if faster else "32-true",
                    f"native bf16; this model's training step measured bf16 {m['bf16_ms']} ms vs fp32 {m['fp32_ms']} ms")


def channels_last(requested, device: str, prec: str) -> Decision:
    if requested != AUTO:
        return Decision(bool(requested), "explicit", requested)
    if device == "cuda":
        return Decision(True, "CUDA: NHWC convolution kernels")
    if device == "cpu" and str(prec).startswith("bf16"):
        return Decision(True, "CPU bf16: oneDNN's bf16 convolutions are NHWC")
    return Decision(False, f"{device} {prec}: NCHW is as fast or faster")


def compile_(requested, device: str, progressive: bool, train_steps: int | None) -> Decision:
    """`train_steps`: optimizer steps the run will take (None: not known, e.g. a stream)."""
    if requested != AUTO:
        return Decision(bool(requested), "explicit", requested)
    if device != "cuda":
        return Decision(False, f"{device}: compile time would be a large share of the run")
    if train_steps is None:
        return Decision(False, "CUDA, run length unknown: compile pays only on long runs")
    if train_steps < COMPILE_MIN_STEPS:
        return Decision(False, f"CUDA: {train_steps} training steps would not repay ~1 min of compile "
                               f"(from {COMPILE_MIN_STEPS} steps)")
    shapes = "dynamic shapes across progressive stages" if progressive else "static shapes"
    return Decision(True, f"CUDA: {train_steps} training steps repay the compile time ({shapes})")


def cuda_graphs(requested, device: str, progressive: bool, train_steps: int | None) -> Decision:
    """Capture the training forward and backward as CUDA graphs (torch.compile's reduce-overhead
    mode): the host then launches one graph instead of V2-S's thousands of kernels, the bound of
    its step at 128-224 px on an H200. Needs static shapes (the train loader drops the ragged
    last batch; progressive learning changes the size) and pays its compile only on long runs."""
    if requested is True:
        if device != "cuda":
            raise FmbError(f"model.cuda_graphs=true needs a CUDA GPU (this run is on {device}); "
                           "expected model.cuda_graphs=false or auto")
        if progressive:
            raise FmbError("model.cuda_graphs=true with progressive learning: the image size changes per stage and a "
                           "captured graph needs static shapes; expected model.cuda_graphs=false or auto")
        return Decision(True, "explicit", requested)
    if requested is False:
        return Decision(False, "explicit", requested)
    if device != "cuda":
        return Decision(False, "no CUDA")
    if progressive:
        return Decision(False, "CUDA, but progressive learning changes the image size (dynamic shapes)")
    if train_steps is None or train_steps < COMPILE_MIN_STEPS:
        return Decision(False, f"CUDA: {train_steps or 'an unknown number of'} training steps would not repay the "
                               f"capture's compile (from {COMPILE_MIN_STEPS} steps)")
    return Decision(True, f"CUDA, static shapes, {train_steps} training steps: one graph launch per step")


def planned_steps(train_images: int | None, global_batch: int, accumulate: int, trainer_cfg) -> int | None:
    """Optimizer steps the run will take (as Lightning counts them; drop_last in training)."""
    max_steps = trainer_cfg.get("max_steps") or -1
    max_epochs = trainer_cfg.get("max_epochs")
    by_epochs = None
    if train_images is not None and max_epochs not in (None, -1):
        batches = max(1, train_images // max(1, global_batch // accumulate))
        by_epochs = max(1, -(-batches // accumulate)) * max_epochs
    if max_steps > 0:
        return max_steps if by_epochs is None else min(max_steps, by_epochs)
    return by_epochs


def free_cores(cores: int, others: float) -> int:
    """Cores left when other processes keep `others` of them busy (at least one)."""
    return max(1, min(cores, round(cores - max(0.0, others))))


def follows_load(requested, device: str, devices) -> bool:
    """Whether torch's threads follow other processes' load (opt-in; one CPU process only)."""
    return requested == FOLLOW_LOAD and owns_threads(device, devices)


def owns_threads(device: str, devices) -> bool:
    """Whether torch's threads are fmb's to choose: one CPU process, no OMP_NUM_THREADS."""
    return not os.environ.get("OMP_NUM_THREADS") and device == "cpu" and devices in (1, "1", None, AUTO)


def threads(requested, device: str, devices, machine: Machine) -> Decision:
    if os.environ.get("OMP_NUM_THREADS"):
        return Decision(torch.get_num_threads(), "OMP_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    if requested not in (AUTO, FOLLOW_LOAD):
        return Decision(int(requested), "explicit", requested)
    if not owns_threads(device, devices):
        return Decision(torch.get_num_threads(), f"{device} with devices={devices}: torch's default", requested)
    if requested == AUTO:
        return Decision(machine.cores, f"{machine.cores} cores, whatever else runs (same seed, same numbers)")
    busy = machine.busy_cores()
    if busy is None:  # no /proc: the 1-minute load average, which counts fmb's own startup as ~0.5
        busy = machine.load_average() - 0.5
    free = free_cores(machine.cores, busy)
    return Decision(free, f"follow_load: {machine.cores} cores, {max(0.0, busy):.1f} busy with other "
                          f"processes: {free} free", requested)


def _local_devices(device: str, devices, machine: Machine) -> int:
    """Training processes on this machine (what `trainer.devices` asks for)."""
    if device != "cuda":
        return 1
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if devices in (None, AUTO, -1, "-1"):
        return max(1, machine.cuda_count)
    return max(1, int(devices))


def loader_workers(requested, device: str, devices, machine: Machine) -> Decision:
    if requested != AUTO:
        return Decision(requested, "explicit", requested)
    workers, why = auto_workers(device == "cuda", _local_devices(device, devices, machine), cores=machine.cores)
    return Decision(workers, why)


@dataclass
class Plan:
    """Every auto value of a run, decided together; `apply` gives the config that runs."""
    decisions: dict[str, Decision]
    follow_load: bool = False  # threads re-decided from the load at each epoch (`FollowLoad`)
    image_sizes: tuple[int, int] | None = None  # (train, eval) as the data resolved them

    @property
    def device(self) -> str:
        return accelerator_type(self.decisions["trainer.accelerator"].value)

    def apply(self, cfg):
        """A copy of `cfg` holding the decided values (config.yaml saves what ran; the asked-for
        config is left as it was); torch's threads are set for this process."""
        cfg = copy.deepcopy(cfg)
        if self.image_sizes is not None:
            cfg.data.image_size, cfg.data.eval_image_size = self.image_sizes
        for key, decision in self.decisions.items():
            section, name = key.split(".")
            if section == "torch":
                torch.set_num_threads(int(decision.value))
            elif section == "trainer":
                if name in cfg.trainer or decision.requested == AUTO:
                    cfg.trainer[name] = decision.value
            else:
                setattr(getattr(cfg, section), name, decision.value)
        return cfg

    def record(self) -> dict:
        """summary.json's `auto`: {key: {value, requested, reason}}."""
        return {key: asdict(d) for key, d in self.decisions.items()}

    def describe(self) -> str:
        return "  auto: " + "; ".join(d.line(k) for k, d in self.decisions.items())


def resolve(cfg, machine: Machine, data=None, *, world_size: int = 1,
            measure_precision: Callable[[], dict] | None = None, resumed: bool = False) -> Plan:
    """The plan for `cfg` on `machine`. `data` (a set-up ImageDataModule, or None) gives the
    image sizes and the training set's size (None for a stream), which with `world_size` sizes
    the run for the compile decision."""
    trainer = cfg.trainer
    train_images = data.split_sizes()["train"] if data is not None else None
    accel = accelerator(trainer.get("accelerator", AUTO), machine)
    device = accelerator_type(accel.value, machine)
    prec = precision(trainer.get("precision", AUTO), device, machine, measure_precision)
    accumulate = int(trainer.get("accumulate_grad_batches", 1) or 1)
    steps = planned_steps(train_images, cfg.data.batch_size * world_size * accumulate, accumulate, trainer)
    decisions = {
        "trainer.accelerator": accel,
        "trainer.precision": prec,
        "model.channels_last": channels_last(cfg.model.channels_last, device, str(prec.value)),
        "model.compile": compile_(cfg.model.compile, device, bool(cfg.progressive.enabled), steps),
        "model.cuda_graphs": cuda_graphs(cfg.model.cuda_graphs, device, bool(cfg.progressive.enabled), steps),
        "data.num_workers": loader_workers(cfg.data.num_workers, device, trainer.get("devices", AUTO), machine),
        "torch.threads": threads(cfg.run.threads, device, trainer.get("devices", 1), machine),
    }
    if resumed:  # a resume runs on the machine it finds: its auto values are this machine's
        for decision in decisions.values():
            if decision.requested in (AUTO, FOLLOW_LOAD):
                decision.reason = f"decided afresh on resume: {decision.reason}"
    sizes = (data.image_size, data.eval_image_size) if data is not None else None
    return Plan(decisions, follows_load(cfg.run.threads, device, trainer.get("devices", 1)), sizes)


def model_settings(cfg, machine: Machine) -> tuple[bool, bool, bool]:
    """(channels_last, compile, cuda_graphs) for a module built outside `fmb train`: resolved
    values pass through; `auto` is decided for the accelerator the config names."""
    m = cfg.model
    if AUTO not in (m.channels_last, m.compile, m.cuda_graphs):
        return bool(m.channels_last), bool(m.compile), bool(m.cuda_graphs)
    device = accelerator_type(accelerator(cfg.trainer.get("accelerator", AUTO), machine).value, machine)
    progressive = bool(cfg.progressive.enabled)
    prec = precision(cfg.trainer.get("precision", AUTO), device, machine).value
    return (channels_last(m.channels_last, device, str(prec)).value, compile_(m.compile, device, progressive, None).value,
            cuda_graphs(m.cuda_graphs, device, progressive, None).value)
