"""Trials as SLURM jobs through submitit: one job per trial, submitted as one array.

Each job runs the same code a local sweep runs for a trial (profile, `fmb train` subprocess,
record) and appends its record to the study's results.jsonl on the shared filesystem (the
store's lock makes concurrent appends from many nodes safe). A job cut by its time limit or
preempted is requeued by submitit (TrialJob is Checkpointable) and continues the trial from
its last.ckpt. `fmb ablate --resume` reads `slurm/jobs.json`, waits for jobs still queued or
running, and submits only trials that have neither a completed record nor a live job.

`ablate.slurm.cluster=local` runs the jobs through submitit's local executor: the same job
code without a cluster (what the tests use).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from fmb.ablation.devices import describe_hardware, devices_per_trial
from fmb.ablation.hparams import write_trial_hparams
from fmb.ablation.runner import PROFILE_KEYS, make_record, profile_safely, train_trial
from fmb.ablation.store import StudyDir
from fmb.utils import atomic_write_text

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD",
          "REQUEUE_FED", "STAGE_OUT", "SIGNALING", "PREEMPTED"}
JOBS_FILE = "jobs.json"


def _trial_env() -> dict:
    """The trial trains as a plain single-node run: Lightning must not take the job's SLURM
    variables for an srun launch (one task here; DDP over the job's GPUs is Lightning's own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}


def run_trial_job(study, out: str, trial) -> str:
    """The body of one trial job (also what a local sweep does per trial, minus the scheduling)."""
    store, started = StudyDir(out), time.time()
    previous = store.records().get(trial.trial_id)
    if previous and previous.get("status") == "completed":
        return "already recorded"
    run_dir = Path(out) / "trials" / trial.trial_id
    prof = next(({k: r[k] for k in PROFILE_KEYS if k in r} for r in store.records().values()
                 if r["placement"] == trial.placement and r.get("params") is not None), None)
    error = None
    if prof is None:
        prof, error = profile_safely(study, trial.placement)
    fields = {}
    if error is None and not study.profile_only:
        # cut by a time limit or preemption (no record yet): continue from its checkpoint;
        # failed before: start afresh, as a local sweep does
        resume = previous is None and (run_dir / "checkpoints" / "last.ckpt").is_file()
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)
        env = _trial_env()
        fields, error = train_trial(study, trial, run_dir, env=env, resume=resume)
    record = make_record(trial, prof, fields, error, None if study.profile_only else run_dir, started,
                         describe_hardware(gpu=bool(executor_gpus(study))))
    if store.append(record):
        write_trial_hparams(Path(out), study, record)
    return record["status"]


try:
    from submitit.helpers import Checkpointable
except ImportError:  # submitit is a dependency; this only keeps `import fmb.ablation` working without it
    Checkpointable = object


class TrialJob(Checkpointable):
    """Picklable job: submitit requeues it (same arguments) on timeout or preemption."""

    def __init__(self, study, out: str, trial):
        self.study, self.out, self.trial = study, str(out), trial

    def __call__(self) -> str:
        return run_trial_job(self.study, self.out, self.trial)


def executor_gpus(study) -> int:
    cfg = study.ablate["slurm"]
    if cfg["gpus_per_trial"] is not None:
        return cfg["gpus_per_trial"]
    return devices_per_trial(study) if str((study.resolved.get("trainer") or {}).get("accelerator")) != "cpu" else 0


def executor_params(study, out: Path) -> tuple[Path, dict]:
    """The submitit folder and parameters the config asks for (no cluster needed)."""
    cfg = study.ablate["slurm"]
    folder = Path(cfg["folder"] or out / "slurm")
    params = {"timeout_min": cfg["timeout_min"], "gpus_per_node": executor_gpus(study), "tasks_per_node": 1,
              "nodes": 1, "cpus_per_task": cfg["cpus_per_trial"], "name": f"fmb-ablate-{out.name}",
              "slurm_array_parallelism": cfg["array_parallelism"]}
    for key in ("partition", "account", "qos", "constraint", "mem"):
        if cfg[key]:
            params[f"slurm_{key}"] = cfg[key]
    if cfg["setup"]:
        params["slurm_setup"] = list(cfg["setup"])
    if cfg["additional"]:
        params["slurm_additional_parameters"] = dict(cfg["additional"])
    return folder, params


def make_executor(study, out: Path):
    import submitit

    from fmb.errors import FmbError

    folder, params = executor_params(study, out)
    cluster = study.ablate["slurm"]["cluster"]
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    except RuntimeError:
        raise FmbError("ablate.launcher=slurm but this machine has no SLURM (no srun/sbatch); run fmb ablate on "
                       "the cluster's login node, or set ablate.slurm.cluster=local to run the job code here") from None
    executor.update_parameters(**params)
    return executor, folder, params
def read_jobs(out: Path) -> dict:
    try:
        return json.loads((out / "slurm" / JOBS_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _job(executor, folder: Path, job_id: str):
    return executor._executor.job_class(folder / "%j", job_id)  # reattach by id (submitit's own job class)


def job_active(job) -> bool:
    try:
        return str(job.state).split()[0].upper() in ACTIVE
    except Exception:
        return False


def submit_missing(study, out: Path, records: dict, console) -> tuple[dict, list]:
    """Submit every trial without a completed record or a live job; returns ({trial_id: job}, submitted ids)."""
    executor, folder, _ = make_executor(study, out)
    known, jobs = read_jobs(out), {}
    for trial in study.trials:
        if records.get(trial.trial_id, {}).get("status") == "completed" or trial.trial_id not in known:
            continue
        job = _job(executor, folder, known[trial.trial_id])
        if job_active(job):
            jobs[trial.trial_id] = job
    todo = [t for t in study.trials if records.get(t.trial_id, {}).get("status") != "completed"
            and t.trial_id not in jobs]
    if jobs:
        console.print(f"{out}: {len(jobs)} trial job(s) still queued or running, waiting for them")
    submitted = []
    if todo:
        with executor.batch():  # one array job
            new = [(t, executor.submit(TrialJob(study, str(out), t))) for t in todo]
        for t, job in new:
            jobs[t.trial_id] = job
            known[t.trial_id] = str(job.job_id)
            submitted.append(t.trial_id)
        (out / "slurm").mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "slurm" / JOBS_FILE, json.dumps(known, indent=2, sort_keys=True) + "\n")
        console.print(f"{out}: submitted {len(todo)} trial job(s) (array {new[0][1].job_id.split('_')[0]})")
    return jobs, submitted


def wait_for_jobs(study, out: Path, store: StudyDir, jobs: dict, console, progress_update=None) -> None:
    """Until every job has ended; a job that ended without recording its trial is recorded failed."""
    waiting = dict(jobs)
    while waiting:
        records = store.records()
        for trial_id, job in list(waiting.items()):
            if records.get(trial_id, {}).get("status") == "completed":
                waiting.pop(trial_id)
            elif job.done():
                time.sleep(0.5)  # its append may land a moment after the process ends
                error = _job_error(job)  # None: the job returned, so it recorded the trial itself
                if error and store.records().get(trial_id, {}).get("status") != "completed":
                    trial = next(t for t in study.trials if t.trial_id == trial_id)
                    store.append(make_record(trial, {}, {}, error, None, time.time(), None))
                waiting.pop(trial_id)
        if progress_update:
            progress_update(len(jobs) - len(waiting), len(waiting))
        if waiting:
            time.sleep(1.0)


def _job_error(job) -> str | None:
    """The job's exception as one line, or None when it returned normally (its record is its own)."""
    try:
        exc = job.exception()
    except Exception as err:  # its result file is missing: killed before it could write one
        return f"slurm job {job.job_id}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if exc is None:
        return None
    text = [ln for ln in str(exc).splitlines() if ln.strip()]
    return f"slurm job {job.job_id} failed: {text[-1] if text else type(exc).__name__}"


def run_on_slurm(study, store, records: dict, out: Path, console) -> None:
    """Submit the trials not finished yet as SLURM jobs and, with ablate.slurm.wait, follow them."""
    from rich.progress import Progress

    from fmb.ablation.local import COLUMNS

    jobs, _ = submit_missing(study, out, records, console)
    if not jobs:
        return
    if not study.ablate["slurm"]["wait"]:
        console.print(f"{len(jobs)} job(s) on the cluster; `fmb ablate --resume --out {out}` collects them and "
                      f"writes the report")
        return
    n = len(study.trials)
    finished = n - len(jobs)
    try:
        with Progress(*COLUMNS, console=console, disable=not console.is_terminal) as progress:
            task = progress.add_task("trial jobs", total=n, completed=finished)

            def update(done, waiting):
                progress.update(task, completed=finished + done, description=f"trial jobs · {waiting} queued or running")
            wait_for_jobs(study, out, store, jobs, console, update)
    except KeyboardInterrupt:
        console.print(f"[yellow]stopped waiting; the jobs keep running. `fmb ablate --resume --out {out}` "
                      f"collects them[/]")
        raise
