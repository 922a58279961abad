"""The local launcher: trials as `fmb train` subprocesses on this machine's devices, several at
once, polled from one thread with a live progress view (the SLURM launcher is slurm.py)."""
from __future__ import annotations

import shutil
import time
from collections import deque
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fmb.ablation.devices import describe_hardware, plan_slots
from fmb.ablation.hparams import write_trial_hparams
from fmb.ablation.profiles import profile_placements
from fmb.ablation.runner import PROFILE_KEYS, finish_trial, make_record, profile_safely, start_trial
from fmb.ablation.store import StudyDir
from fmb.ablation.study import Study


def _metrics_progress(run_dir: Path) -> str:
    """'epoch 2 · step 40' from the tail of the trial's metrics.csv, or '' before it exists."""
    try:
        lines = (run_dir / "metrics.csv").read_text().splitlines()
        header, last = lines[0].split(","), lines[-1].split(",")
        row = dict(zip(header, last))
        return " · ".join(f"{k} {row[k]}" for k in ("epoch", "step") if row.get(k))
    except (OSError, IndexError):
        return ""


def pending_trials(study: Study, records: dict) -> list:
    return [t for t in study.trials if records.get(t.trial_id, {}).get("status") != "completed"]


def _known_profiles(records: dict) -> dict:
    # a profile does not depend on the seed: reuse one measured by any earlier trial of the placement
    return {r["placement"]: ({k: r[k] for k in PROFILE_KEYS if k in r}, None)
            for r in records.values() if r.get("params") is not None}


def record_trial(store: StudyDir, out: Path, study: Study, record: dict, records: dict) -> None:
    if store.append(record):
        records[record["trial_id"]] = record
        write_trial_hparams(out, study, record)


def report_trial(console, record: dict, i: int, n: int) -> None:
    if record["error"]:
        console.print(f"[red]✗ {record['trial_id']}[/] {record['error']}", highlight=False)
    else:
        top1 = f" top-1 {100 * record['val_top1']:.2f}%" if record.get("val_top1") is not None else ""
        console.print(f"[green]✓ {record['trial_id']}[/]{top1} ({record['duration_s']:.0f}s, {i}/{n})", highlight=False)


COLUMNS = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def run_local(study: Study, store: StudyDir, records: dict, out: Path, console: Console) -> None:
    """Profile every placement first (alone on the machine, so the timings are clean), then train
    up to `len(slots)` trials at once, each on its own devices, polling them from this thread."""
    pending = pending_trials(study, records)
    profiles = _known_profiles(records)
    n, finished = len(study.trials), len(study.trials) - len(pending)
    if finished:
        console.print(f"{out}: {finished} of {n} trials already finished, running {len(pending)}")
    missing = list(dict.fromkeys(t.placement for t in pending if t.placement not in profiles))
    if missing:  # measured together, each with its own warm-up, so no profile depends on its place in the list
        console.print(f"profiling {len(missing)} placement(s) together", highlight=False)
        started = time.time()
        profiles.update({p: result + (started,) for p, result in profile_placements(study, missing).items()})
    fail_fast = study.ablate["fail_fast"]
    with Progress(*COLUMNS, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("trials", total=n, completed=finished)
        queue = deque()
        for trial in pending:
            if trial.placement not in profiles:
                progress.update(task, description=f"profiling {trial.placement}")
                started = time.time()
                profiles[trial.placement] = profile_safely(study, trial.placement) + (started,)
            prof, error = profiles[trial.placement][:2]
            if error or study.profile_only:
                started = profiles[trial.placement][2] if len(profiles[trial.placement]) > 2 else time.time()
                record = make_record(trial, prof, {}, error, None if study.profile_only else out / "trials" / trial.trial_id,
                                     started, None)
                record_trial(store, out, study, record, records)
                finished += 1
                progress.update(task, advance=1)
                report_trial(progress.console, record, finished, n)
                if error and fail_fast:
                    progress.console.print("[red]stopping: --fail-fast[/]")
                    return
            else:
                queue.append(trial)
        if not queue:
            return
        slots = plan_slots(study, len(queue))
        if len(slots) > 1:
            progress.console.print(f"{len(queue)} trial(s), {len(slots)} at once: " + ", ".join(s.label for s in slots))
        free, running = list(slots), {}
        try:
            while queue or running:
                while queue and free:
                    trial, slot = queue.popleft(), free.pop(0)
                    run_dir = out / "trials" / trial.trial_id
                    if run_dir.exists():  # an interrupted or failed attempt: start the trial afresh
                        shutil.rmtree(run_dir)
                    started = time.time()
                    proc = start_trial(study, trial, run_dir, slot.env)
                    line = progress.add_task(f"  {trial.trial_id} · {slot.label}", total=None)
                    running[trial.trial_id] = (trial, proc, slot, started, run_dir, line)
                time.sleep(0.2)
                for trial_id, (trial, proc, slot, started, run_dir, line) in list(running.items()):
                    if proc.poll() is None:
                        status = _metrics_progress(run_dir)
                        progress.update(line, description=f"  {trial_id} · {slot.label} · {time.time() - started:.0f}s"
                                        + (f" · {status}" if status else ""))
                        continue
                    fields, error = finish_trial(study, proc, run_dir)
                    record = make_record(trial, profiles[trial.placement][0], fields, error, run_dir, started,
                                         describe_hardware(slot.env, gpu="CUDA_VISIBLE_DEVICES" in slot.env))
                    record_trial(store, out, study, record, records)
                    running.pop(trial_id)
                    progress.remove_task(line)
                    free.append(slot)
                    finished += 1
                    progress.update(task, advance=1)
                    report_trial(progress.console, record, finished, n)
                    if error and fail_fast:
                        progress.console.print("[red]stopping: --fail-fast[/]"
                                               + (f" (stopping {len(running)} trial(s) in flight)" if running else ""))
                        queue.clear()
                        for _, other, *_ in running.values():
                            other.kill()  # not recorded: they did not finish, so they count as not run
                        running.clear()
                        return
        finally:
            for _, proc, *_ in running.values():  # Ctrl-C or an error here: never leave a trial unsupervised
                proc.kill()


