"""Run one trial: profile its placement (in this process, once per placement) and train it
as its own `fmb train` subprocess in its own process group.

The subprocess boundary is what keeps a crash, an OOM kill or a hung DataLoader inside the
trial: we kill the trial's whole group when it ends, times out or we are interrupted, and on
Linux the trial also dies with us if the sweep itself is SIGKILLed (PR_SET_PDEATHSIG), so a
resumed sweep never races an orphan writing into the same run dir.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fmb.ablation.study import Study
from fmb.errors import FmbError

PROFILE_KEYS = ("params", "macs", "flops", "infer_images_per_sec", "train_images_per_sec")
SUMMARY_KEYS = ("val_top1", "best_val_top1", "val_loss", "epochs", "global_step", "params",
                "train_images_per_sec", "wall_time_s", "world_size", "global_batch_size")


def default_train_command() -> list[str]:
    return [sys.executable, "-m", "fmb"]


def trial_command(study: Study, config_path: Path, placement: str, seed: int, run_dir: Path) -> list[str]:
    prefix = study.ablate["train_command"] or default_train_command()
    from fmb.ablation.study_auto import study_overrides
    return [*map(str, prefix), "train", "-c", str(config_path), f"model.blocks={placement}",
            f"run.seed={seed}", f"run.dir={run_dir}", *study_overrides(study.auto), *study.train_overrides]


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _die_with_parent(parent_pid: int):
    def setup():  # runs in the child between fork and exec: nothing here may take a lock
        if _LIBC is not None:
            _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the trial dies with the thread that started it
        if os.getppid() != parent_pid:  # parent died before prctl took effect
            os._exit(1)
    return setup


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class TrialProcess:
    """One command in its own session, output to a log; polled, never waited on, so one
    thread can supervise several trials at once."""

    def __init__(self, cmd: list[str], log_path: Path, timeout_s: float | None = None, env: dict | None = None):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),
                                         env=full_env)
        self.timeout_s, self.started, self.timed_out = timeout_s, time.monotonic(), False

    def poll(self) -> int | None:
        """The exit code once finished (its group killed: DataLoader workers, DDP ranks), else None."""
        rc = self.proc.poll()
        if rc is None and self.timeout_s and time.monotonic() - self.started > self.timeout_s:
            self.timed_out = True
            _kill_group(self.proc.pid)
            rc = self.proc.wait()
        if rc is not None:
            _kill_group(self.proc.pid)
        return rc

    def kill(self) -> None:
        _kill_group(self.proc.pid)
        self.proc.wait()


def _log_tail(log_path: Path, lines: int = 1) -> str:
    try:
        text = log_path.read_bytes()[-4000:].decode(errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def _describe_exit(rc: int, timed_out: bool, timeout_s) -> str:
    if timed_out:
        return f"timed out after {timeout_s} s (ablate.trial_timeout_s)"
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exit code {rc}"


def profile_settings(study: Study) -> tuple[str, int]:
    """(device, resolution) the study's placements are profiled at."""
    return profile_at(study.ablate["profile"], (study.resolved.get("data") or {}).get("image_size"))


def profile_at(prof: dict, image_size) -> tuple[str, int]:
    """(device, resolution) of an `ablate.profile` section: `auto` and an unset resolution
    resolved (the training image size, else 224)."""
    from fmb.profiling.profile import profile_device

    return profile_device(prof["device"]), int(prof["resolution"] or image_size or 224)


def profile_placement(study: Study, placement: str) -> dict:
    """Params, FLOPs and throughput of one placement through fmb's profile code."""
    from fmb.profiling import profile_model  # looked up per call: tests may stand in for it

    prof = study.ablate["profile"]
    device, resolution = profile_settings(study)
    spec = {"name": study.variant, "blocks": placement, "stage_overrides": study.stage_overrides(placement) or None,
            "width_mult": study.width_mult, "depth_mult": study.depth_mult, "num_classes": prof["num_classes"]}
    try:
        result = profile_model(spec, resolution=resolution, batch_size=int(prof["batch_size"]), device=device,
                               precision=prof["precision"], mode="both", warmup=int(prof["warmup"]),
                               iters=int(prof["iters"]), per_stage=False)
    finally:
        if device.startswith("cuda"):
            import torch
            torch.cuda.empty_cache()  # give the memory back before a trial trains on the same GPU
    return {k: result[k] for k in PROFILE_KEYS if k in result}


def profile_safely(study: Study, placement: str) -> tuple[dict, str | None]:
    try:
        return profile_placement(study, placement), None
    except FmbError as exc:
        return {}, f"profile: {exc}"
    except Exception as exc:  # OOM, unsupported device, ...: the trial fails, the sweep goes on
        return {}, f"profile: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def start_trial(study: Study, trial, run_dir: Path, env: dict | None = None, resume: bool = False) -> TrialProcess:
    """Write the trial's -c file and start its `fmb train` (or `fmb train --resume` of its run dir)."""
    from omegaconf import OmegaConf

    from fmb.utils import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "trial.yaml"
    if resume:
        cmd = [*map(str, study.ablate["train_command"] or default_train_command()), "train", "--resume", str(run_dir)]
    else:
        atomic_write_text(config_path, OmegaConf.to_yaml(OmegaConf.create(study.trial_config(trial.placement))))
        cmd = trial_command(study, config_path, trial.placement, trial.seed, run_dir)
    return TrialProcess(cmd, run_dir / "train.log", study.ablate["trial_timeout_s"], env)


def finish_trial(study: Study, proc: TrialProcess, run_dir: Path) -> tuple[dict, str | None]:
    """(summary fields, error or None) of a trial whose process has ended."""
    rc, timed_out, timeout = proc.poll(), proc.timed_out, study.ablate["trial_timeout_s"]
    log_path, summary_path = run_dir / "train.log", run_dir / "summary.json"
    if rc != 0 or timed_out:
        tail = _log_tail(log_path)
        return {}, f"train: {_describe_exit(rc, timed_out, timeout)}" + (f": {tail}" if tail else "") + f" (log: {log_path})"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        return {}, f"train: exited 0 but wrote no readable {summary_path}"
    if summary.get("status", "completed") != "completed":
        return {}, f"train: summary status is {summary.get('status')!r}, not 'completed'"
    fields = {k: summary[k] for k in SUMMARY_KEYS if k in summary}
    fields = {("trained_params" if k == "params" else "run_train_images_per_sec" if k == "train_images_per_sec" else k): v
              for k, v in fields.items()}  # the run's own numbers, named apart from the profile's
    fields.update(trained_macs(study, trial_placement(run_dir, summary), summary))
    return fields, None


def train_trial(study: Study, trial, run_dir: Path, on_tick=None, env: dict | None = None,
                resume: bool = False) -> tuple[dict, str | None]:
    """Train one trial × seed in its own process to the end; returns (summary fields, error or None)."""
    proc = start_trial(study, trial, run_dir, env, resume)
    try:
        while proc.poll() is None:
            time.sleep(0.2)
            if on_tick:
                on_tick()
    except BaseException:
        proc.kill()
        raise
    return finish_trial(study, proc, run_dir)


def trial_placement(run_dir: Path, summary: dict) -> str:
    return summary.get("placement") or run_dir.name.rsplit("-s", 1)[0]


_MACS_CACHE: dict = {}


def trained_macs(study: Study, placement: str, summary: dict) -> dict:
    """Classes, resolution and MACs of the model the trial trained (not of the 1000-class profile
    model): MACs at the size it was evaluated at, counted by fmb.profiling."""
    classes = summary.get("num_classes")
    size = summary.get("eval_image_size") or summary.get("image_size")
    if not classes or not size:
        return {}
    key = (placement, classes, size)
    if key not in _MACS_CACHE:
        try:
            import torch

            from fmb.models import create_model
            from fmb.profiling.measure import count_macs

            with torch.device("meta"):  # counting needs shapes only, not weights or compute
                model = create_model(study.variant, num_classes=int(classes), blocks=placement,
                                     stage_overrides=study.stage_overrides(placement) or None,
                                     width_mult=study.width_mult, depth_mult=study.depth_mult).eval()
            _MACS_CACHE[key] = count_macs(model, int(size))
        except Exception:  # a count is a nicety: never fail a trained trial over it
            _MACS_CACHE[key] = None
    return {"trained_num_classes": classes, "trained_image_size": size, "trained_macs": _MACS_CACHE[key]}


def make_record(trial, prof: dict, fields: dict, error: str | None, run_dir: Path | None, started: float,
                hardware: str | None) -> dict:
    """One line of results.jsonl. started_at/ended_at are Unix times: they show which trials overlapped."""
    ended = time.time()
    return {"trial_id": trial.trial_id, "placement": trial.placement, "seed": trial.seed,
            "status": "failed" if error else "completed", "error": error, **prof, **fields,
            "run_dir": None if run_dir is None else str(run_dir), "hardware": hardware,
            "started_at": round(started, 3), "ended_at": round(ended, 3), "duration_s": round(ended - started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
