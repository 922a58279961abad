"""`run_ablation`: the library function behind `fmb ablate` — plan, check DIR, run what is not
finished yet (several trials at once on local devices, or as SLURM jobs) with a live progress
view, then write the report. `--dry-run` is fmb/ablation/dryrun.py. Notebooks call both too."""
from __future__ import annotations

import json
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fmb.ablation import report
from fmb.ablation.devices import describe_hardware, plan_slots
from fmb.ablation.hparams import write_trial_hparams
from fmb.ablation.runner import PROFILE_KEYS, finish_trial, make_record, profile_safely, start_trial
from fmb.ablation.store import StudyDir
from fmb.ablation.study import Study, load_study
from fmb.errors import FmbError
from fmb.utils import atomic_write_text


@dataclass
class AblationResult:
    out_dir: Path
    title: str
    rows: list[dict]                 # one per placement (report.summarize)
    trials: list[dict]               # latest record per planned trial, in plan order
    failed: list[str]                # trial ids that failed or never ran (fail-fast)
    files: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def table(self):
        return report.rich_table(self.rows, self.title, trained=any(t.get("run_dir") for t in self.trials))

    def to_json(self) -> dict:
        return {"out_dir": str(self.out_dir), "title": self.title, "exit_code": self.exit_code,
                "placements": self.rows, "trials": self.trials, "failed": self.failed, "files": self.files}


def _stored_invocation(out) -> dict:
    if out is None:
        raise FmbError("--resume needs --out DIR, the study directory to continue")
    stored = StudyDir(out).read_study()
    if stored is None:
        raise FmbError(f"nothing to resume: {out} holds no study.json; start the study without --resume")
    return stored.get("invocation") or {}


def _metrics_progress(run_dir: Path) -> str:
    """'epoch 2 · step 40' from the tail of the trial's metrics.csv, or '' before it exists."""
    try:
        lines = (run_dir / "metrics.csv").read_text().splitlines()
        header, last = lines[0].split(","), lines[-1].split(",")
        row = dict(zip(header, last))
        return " · ".join(f"{k} {row[k]}" for k in ("epoch", "step") if row.get(k))
    except (OSError, IndexError):
        return ""


def _context(study: Study, records: list[dict]) -> list[str]:
    """What a reader needs to judge the table: data and validation set, budget, hardware,
    resolution and classes of what was measured, and what differs between trials."""
    cfg = study.resolved
    data, trainer, prof = cfg.get("data") or {}, cfg.get("trainer") or {}, study.ablate["profile"]
    size = data.get("image_size", "?")
    eval_size = data.get("eval_image_size") or size
    lines = [f"data: {data.get('source', '?')}" + (f" ({data['name']})" if data.get("name") else "")
             + f", trained at {size} px, evaluated at {eval_size} px"]
    if not study.profile_only:
        budget = ", ".join(f"{k}={trainer[k]}" for k in ("max_epochs", "max_steps", "limit_train_batches")
                           if trainer.get(k) not in (None, -1))
        lines.append(f"training budget per trial: {budget or 'the trainer defaults'}; batch {data.get('batch_size')} "
                     f"per device × {trainer.get('devices', 1)} device(s)")
        carve = (f"{data.get('val_fraction')} of {data.get('train_split', 'train')} carved by "
                 f"data.split_seed={data.get('split_seed')}")
        lines.append("validation: the same images for every trial and seed ("
                     + (f"the source's {data['val_split']} split" if data.get("val_split")
                        else f"the source's validation split if it has one, else {carve}")
                     + "); run.seed varies initialisation and data order only")
        lines.append(f"seeds: {', '.join(map(str, study.seeds))}")
        trained = [r for r in records if r.get("trained_num_classes")]
        shapes = sorted({(r["trained_num_classes"], r["trained_image_size"]) for r in trained})
        if shapes:
            lines.append("params and GMACs: the trained models (" + "; ".join(
                f"{c} classes, GMACs at {s} px" for c, s in shapes) + ")")
    hardware = sorted({r["hardware"] for r in records if r.get("hardware")})
    if hardware and not study.profile_only:
        lines.append(f"trials trained on: {'; '.join(hardware)}")
    lines.append(f"img/s: profile on {prof['device']} ({describe_hardware(gpu=prof['device'] != 'cpu')}), "
                 f"batch {prof['batch_size']}, "
                 f"{prof['resolution'] or size} px, "
                 f"{prof['precision']}, {prof['num_classes']} classes"
                 + ("; also params and GMACs" if study.profile_only else ""))
    differ = ["model.blocks (the placement)"]
    differ += [f"{k} stages: {v}" for k, v in (("fused", study.ablate["fused_overrides"]),
                                                ("MBConv", study.ablate["mbconv_overrides"])) if v]
    if not study.profile_only:
        differ.append("run.seed")
    lines.append("trials differ only in: " + "; ".join(differ))
    changed = _changed_from_defaults(cfg)
    if changed:
        lines.append("config changed from fmb train's defaults: " + ", ".join(changed))
    return lines


def _changed_from_defaults(cfg: dict, limit: int = 24) -> list[str]:
    from omegaconf import OmegaConf

    from fmb.ablation.store import _flatten
    from fmb.config import to_dict
    from fmb.config.schema import TrainConfig

    defaults = _flatten(to_dict(OmegaConf.structured(TrainConfig)))
    skip = ("run.", "model.blocks", "trainer.enable_progress_bar", "trainer.enable_model_summary")
    ours = {k: v for k, v in _flatten(cfg).items() if not k.startswith(skip)}
    changed = [f"{k}={v}" for k, v in sorted(ours.items()) if defaults.get(k, object()) != v and v not in ({}, [])]
    return changed[:limit] + ([f"… {len(changed) - limit} more"] if len(changed) > limit else [])


def _write_outputs(out: Path, study: Study, records: dict, title: str) -> dict:
    planned = [records[t.trial_id] for t in study.trials if t.trial_id in records]
    rows = report.summarize(study.placements, {r["trial_id"]: r for r in planned})
    report.write_csv(out / "results.csv", planned)
    plots = report.write_plots(out, rows, title)
    failed = [r for r in planned if r["status"] != "completed"]
    report.write_markdown(out / "report.md", rows, title, _context(study, planned), plots, failed,
                          trained=not study.profile_only)
    return {"rows": rows, "planned": planned, "files": {
        "results_jsonl": str(out / "results.jsonl"), "results_csv": str(out / "results.csv"),
        "report_md": str(out / "report.md"), "plots": [str(out / p) for p in plots]}}


def prepare_study(files, overrides, placements, sweep, seeds, profile_only, out, resume, fail_fast, force):
    files, overrides = [str(f) for f in files], list(overrides)
    if resume and not (files or overrides or placements or sweep or seeds or profile_only):
        inv = _stored_invocation(out)  # plain `--resume --out DIR` repeats the stored command
        files, overrides = inv.get("files", []), inv.get("overrides", [])
        placements, seeds, profile_only = inv.get("placements"), inv.get("seeds"), inv.get("profile_only")
    elif resume:
        _stored_invocation(out)
    study = load_study(files, overrides, placements=placements, sweep=sweep, seeds=seeds,
                       profile_only=profile_only, fail_fast=fail_fast, force=force)
    out = Path(out) if out else Path("runs/ablate") / (Path(files[0]).stem if files else study.variant)
    store = StudyDir(out)
    store.check(study.fingerprint(), study.identity())  # a DIR of another study is refused before anything is written
    scale = "".join(f", {k} {v}" for k, v in (("width", study.width_mult), ("depth", study.depth_mult)) if v)
    title = f"Fused-MBConv placement ablation: {study.variant}{scale}"
    return files, overrides, study, out, store, title


def run_ablation(files=(), overrides=(), *, placements=None, sweep=None, seeds=None, profile_only=None,
                 out=None, resume=False, fail_fast=None, force=False, json_path=None,
                 console: Console | None = None) -> AblationResult:
    files, overrides, study, out, store, title = prepare_study(files, overrides, placements, sweep, seeds, profile_only,
                                                          out, resume, fail_fast, force)
    console = console or Console(stderr=True)
    store.open(study.fingerprint(), study.identity(), {
        "files": [str(Path(f).resolve()) for f in files], "overrides": overrides,
        "placements": study.placements, "seeds": study.seeds, "profile_only": study.profile_only})
    try:
        records = store.records()
        if study.ablate["launcher"] == "slurm" and not study.profile_only:
            _run_slurm(study, store, records, out, console)
        else:
            _run_local(study, store, records, out, console)
    finally:
        records = store.records()
        written = _write_outputs(out, study, records, title) if records else {"rows": [], "planned": [], "files": {}}
        store.close()
    done = {r["trial_id"] for r in written["planned"] if r["status"] == "completed"}
    result = AblationResult(out, title, written["rows"], written["planned"],
                            [t.trial_id for t in study.trials if t.trial_id not in done], written["files"])
    if json_path:
        atomic_write_text(Path(json_path), json.dumps(result.to_json(), indent=2, default=str) + "\n")
    return result


def pending_trials(study: Study, records: dict) -> list:
    return [t for t in study.trials if records.get(t.trial_id, {}).get("status") != "completed"]


def _known_profiles(records: dict) -> dict:
    # a profile does not depend on the seed: reuse one measured by any earlier trial of the placement
    return {r["placement"]: ({k: r[k] for k in PROFILE_KEYS if k in r}, None)
            for r in records.values() if r.get("params") is not None}


def _record(store: StudyDir, out: Path, study: Study, record: dict, records: dict) -> None:
    if store.append(record):
        records[record["trial_id"]] = record
        write_trial_hparams(out, study, record)


def _report_trial(console, record: dict, i: int, n: int) -> None:
    if record["error"]:
        console.print(f"[red]✗ {record['trial_id']}[/] {record['error']}", highlight=False)
    else:
        top1 = f" top-1 {100 * record['val_top1']:.2f}%" if record.get("val_top1") is not None else ""
        console.print(f"[green]✓ {record['trial_id']}[/]{top1} ({record['duration_s']:.0f}s, {i}/{n})", highlight=False)


COLUMNS = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def _run_local(study: Study, store: StudyDir, records: dict, out: Path, console: Console) -> None:
    """Profile every placement first (alone on the machine, so the timings are clean), then train
    up to `len(slots)` trials at once, each on its own devices, polling them from this thread."""
    pending = pending_trials(study, records)
    profiles = _known_profiles(records)
    n, finished = len(study.trials), len(study.trials) - len(pending)
    if finished:
        console.print(f"{out}: {finished} of {n} trials already finished, running {len(pending)}")
    fail_fast = study.ablate["fail_fast"]
    with Progress(*COLUMNS, console=console) as progress:
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
                _record(store, out, study, record, records)
                finished += 1
                progress.update(task, advance=1)
                _report_trial(progress.console, record, finished, n)
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
                    _record(store, out, study, record, records)
                    running.pop(trial_id)
                    progress.remove_task(line)
                    free.append(slot)
                    finished += 1
                    progress.update(task, advance=1)
                    _report_trial(progress.console, record, finished, n)
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


def _run_slurm(study: Study, store: StudyDir, records: dict, out: Path, console: Console) -> None:
    from fmb.ablation.slurm import submit_missing, wait_for_jobs

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
        with Progress(*COLUMNS, console=console) as progress:
            task = progress.add_task("trial jobs", total=n, completed=finished)

            def update(done, waiting):
                progress.update(task, completed=finished + done, description=f"trial jobs · {waiting} queued or running")
            wait_for_jobs(study, out, store, jobs, console, update)
    except KeyboardInterrupt:
        console.print(f"[yellow]stopped waiting; the jobs keep running. `fmb ablate --resume --out {out}` "
                      f"collects them[/]")
        raise
