"""The `ablate:` section of a study preset: which placements and seeds, how trials run and are profiled."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from fmb.config.schema import check_number, opt
from fmb.errors import FmbError

DEFAULT_EXHAUSTIVE_CAP = 64


@dataclass
class AblateProfileConfig:
    resolution: Optional[int] = opt(None, "profile input size; null = data.image_size")
    batch_size: int = opt(8, "profile batch")
    device: str = opt("auto", "auto | cpu | cuda[:N]")
    precision: Literal["fp32", "bf16", "fp16"] = opt("fp32", "autocast precision of the timings")
    warmup: int = opt(2, "untimed iterations")
    iters: int = opt(5, "timed iterations")
    num_classes: int = opt(1000, "classifier outputs of the profiled model")

    def __post_init__(self):
        for key, low in (("batch_size", 1), ("warmup", 0), ("iters", 1), ("num_classes", 1)):
            check_number(f"ablate.profile.{key}", getattr(self, key), low=low, expected=f"an integer >= {low}")
        check_number("ablate.profile.resolution", self.resolution, low=8,
                     expected="an integer >= 8, or null for data.image_size")
        if not (self.device in ("auto", "cpu") or str(self.device).startswith("cuda")):
            raise FmbError(f"invalid ablate.profile.device={self.device!r}; expected auto, cpu or cuda")


@dataclass
class AblateSlurmConfig:
    partition: Optional[str] = opt(None, "sbatch --partition; null = the cluster's default")
    timeout_min: int = opt(240, "time limit per trial job in minutes (sbatch --time); a trial cut by it is requeued")
    gpus_per_trial: Optional[int] = opt(None, "GPUs per trial job; null = ablate.devices_per_trial")
    cpus_per_trial: int = opt(8, "CPU cores per trial job (data loading)")
    mem: Optional[str] = opt(None, "memory per trial job, e.g. 64G; null = the partition's default")
    account: Optional[str] = opt(None, "sbatch --account")
    qos: Optional[str] = opt(None, "sbatch --qos")
    constraint: Optional[str] = opt(None, "sbatch --constraint, e.g. a100")
    array_parallelism: int = opt(64, "trial jobs of the array running at once")
    wait: bool = opt(True, "wait for the jobs and write the report; false = submit and exit (--resume collects)")
    folder: Optional[str] = opt(None, "submitit logs and pickles; null = <study dir>/slurm")
    setup: list[str] = opt([], "shell lines run before each trial job, e.g. [module load cuda]")
    additional: dict[str, Any] = opt({}, "other sbatch options, e.g. {exclude: node12}")
    cluster: Literal["slurm", "local"] = opt("slurm", "local = submitit's local executor: the same job code on "
                                                      "this machine, no cluster (tests, trying a study out)")

    def __post_init__(self):
        check_number("ablate.slurm.timeout_min", self.timeout_min, low=1,
                     expected="whole minutes >= 1, e.g. 150 (not 2:30:00: YAML reads that as seconds)")
        check_number("ablate.slurm.gpus_per_trial", self.gpus_per_trial, low=0, expected="an integer >= 0, or null")
        for key in ("cpus_per_trial", "array_parallelism"):
            check_number(f"ablate.slurm.{key}", getattr(self, key), low=1, expected="an integer >= 1")


@dataclass
class AblateConfig:
    placements: Optional[list[str]] = opt(None, "explicit placements, e.g. [MMMMMM, FFFMMM]; win over sweep")
    sweep: Optional[Literal["prefix", "single", "exhaustive"]] = opt(None, "null = prefix when no placements")
    seeds: list[int] = opt([0], "one trial per placement and seed")
    profile_only: bool = opt(False, "profile each placement, train nothing")
    exhaustive_cap: int = opt(DEFAULT_EXHAUSTIVE_CAP, "largest exhaustive sweep without --force")
    fused_overrides: dict[str, Any] = opt({}, "stage fields for every fused stage, e.g. {se_ratio: 0.0}")
    mbconv_overrides: dict[str, Any] = opt({}, "stage fields for every MBConv stage")
    fail_fast: bool = opt(False, "stop at the first failed trial")
    trial_timeout_s: Optional[float] = opt(None, "kill a trial after this many seconds; null = no limit")
    train_command: Optional[list[str]] = opt(None, "argv before `train ...`; null = python -m fmb")
    launcher: Literal["local", "slurm"] = opt("local", "local: subprocesses on this machine; slurm: one job per trial")
    jobs: Optional[int] = opt(None, "trials at once on this machine; null = as many as the GPUs allow (1 on CPU)")
    devices_per_trial: Optional[int] = opt(None, "GPUs per trial (CUDA_VISIBLE_DEVICES); null = trainer.devices or 1")
    profile: AblateProfileConfig = field(default_factory=AblateProfileConfig)
    slurm: AblateSlurmConfig = field(default_factory=AblateSlurmConfig)

    def __post_init__(self):
        check_number("ablate.jobs", self.jobs, low=1, expected="an integer >= 1, or null for as many as devices allow")
        check_number("ablate.devices_per_trial", self.devices_per_trial, low=1, expected="an integer >= 1, or null")
        check_number("ablate.exhaustive_cap", self.exhaustive_cap, low=1, expected="a positive integer such as 64")
        check_number("ablate.trial_timeout_s", self.trial_timeout_s, low=0, low_open=True,
                     expected="a number of seconds > 0, or null for no limit")
        if self.train_command is not None and not self.train_command:
            raise FmbError("invalid ablate.train_command=[]; expected a list such as [python, -m, fmb], or null")
