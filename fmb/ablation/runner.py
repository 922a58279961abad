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
                "train_images_per_sec", "wall_time_s")


def default_train_command() -> list[str]:
    return [sys.executable, "-m", "fmb"]


def trial_command(study: Study, config_path: Path, placement: str, seed: int, run_dir: Path) -> list[str]:
    prefix = study.ablate["train_command"] or default_train_command()
    return [*map(str, prefix), "train", "-c", str(config_path), f"model.blocks={placement}",
            f"run.seed={seed}", f"run.dir={run_dir}", *study.train_overrides]


def _die_with_parent(parent_pid: int):
    def setup():
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:  # parent died before prctl took effect
            os._exit(1)
    return setup


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_process(cmd: list[str], log_path: Path, timeout_s: float | None = None, on_tick=None) -> tuple[int, bool]:
    """Run cmd in a new session, output to log_path; returns (exit code, timed out)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_die_with_parent(os.getpid()), env=env)
    start, timed_out = time.monotonic(), False
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if on_tick:
                    on_tick()
                if timeout_s and time.monotonic() - start > timeout_s:
                    timed_out = True
                    _kill_group(proc.pid)
    except BaseException:  # Ctrl-C or anything else: never leave the trial running unsupervised
        _kill_group(proc.pid)
        proc.wait()
        raise
    _kill_group(proc.pid)  # leftovers of a finished trial (DataLoader workers, DDP ranks)
    return rc, timed_out


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


def profile_placement(study: Study, placement: str) -> dict:
    """Params, FLOPs and throughput of one placement through fmb's profile code."""
    from fmb.profiling import profile_model  # looked up per call: tests may stand in for it

    prof = study.ablate["profile"]
    device = prof["device"]
    if device == "auto":
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolution = prof["resolution"] or (study.resolved.get("data") or {}).get("image_size") or 224
    spec = {"name": study.variant, "blocks": placement, "stage_overrides": study.stage_overrides(placement) or None,
            "width_mult": study.width_mult, "depth_mult": study.depth_mult, "num_classes": prof["num_classes"]}
    try:
        result = profile_model(spec, resolution=int(resolution), batch_size=int(prof["batch_size"]), device=device,
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


def train_trial(study: Study, trial, run_dir: Path, on_tick=None) -> tuple[dict, str | None]:
    """Train one trial × seed in its own process; returns (summary fields, error or None)."""
    from omegaconf import OmegaConf

    from fmb.utils import atomic_write_text

    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "trial.yaml"
    atomic_write_text(config_path, OmegaConf.to_yaml(OmegaConf.create(study.trial_config(trial.placement))))
    log_path = run_dir / "train.log"
    cmd = trial_command(study, config_path, trial.placement, trial.seed, run_dir)
    timeout = study.ablate["trial_timeout_s"]
    rc, timed_out = run_process(cmd, log_path, timeout, on_tick)
    summary_path = run_dir / "summary.json"
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
    # the run's own numbers, named apart from the profile's so both survive in one record
    return {("trained_params" if k == "params" else "run_train_images_per_sec" if k == "train_images_per_sec" else k): v
            for k, v in fields.items()}, None
