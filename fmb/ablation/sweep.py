"""`run_ablation`: the library function behind `fmb ablate` — plan, check DIR, run what is not
finished yet with a live progress view, then write the report. Notebooks call it too."""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from fmb.ablation import report
from fmb.ablation.runner import PROFILE_KEYS, profile_safely, train_trial
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
        return report.rich_table(self.rows, self.title)

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


def _context(study: Study) -> list[str]:
    cfg = study.resolved
    data, trainer, prof = cfg.get("data") or {}, cfg.get("trainer") or {}, study.ablate["profile"]
    budget = ", ".join(f"{k}={trainer[k]}" for k in ("max_epochs", "max_steps", "limit_train_batches")
                       if trainer.get(k) not in (None, -1))
    lines = [f"data: {data.get('source', '?')} at {data.get('image_size', '?')} px" +
             (f"; budget: {budget}" if budget else "")]
    if not study.profile_only:
        lines.append(f"seeds: {', '.join(map(str, study.seeds))}")
    lines.append(f"profile: device {prof['device']}, batch {prof['batch_size']}, "
                 f"{prof['resolution'] or data.get('image_size', 224)} px, {prof['precision']}, "
                 f"{prof['num_classes']} classes")
    extra = {k: v for k, v in (("fused stages", study.ablate["fused_overrides"]),
                               ("MBConv stages", study.ablate["mbconv_overrides"])) if v}
    lines += [f"overrides in {k}: {v}" for k, v in extra.items()]
    return lines


def _write_outputs(out: Path, study: Study, records: dict, title: str) -> dict:
    planned = [records[t.trial_id] for t in study.trials if t.trial_id in records]
    rows = report.summarize(study.placements, {r["trial_id"]: r for r in planned})
    report.write_csv(out / "results.csv", planned)
    plots = report.write_plots(out, rows, title)
    failed = [r for r in planned if r["status"] != "completed"]
    report.write_markdown(out / "report.md", rows, title, _context(study), plots, failed)
    return {"rows": rows, "planned": planned, "files": {
        "results_jsonl": str(out / "results.jsonl"), "results_csv": str(out / "results.csv"),
        "report_md": str(out / "report.md"), "plots": [str(out / p) for p in plots]}}


def run_ablation(files=(), overrides=(), *, placements=None, sweep=None, seeds=None, profile_only=None,
                 out=None, resume=False, fail_fast=None, force=False, json_path=None,
                 console: Console | None = None) -> AblationResult:
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
    fingerprint, identity = study.fingerprint(), study.identity()
    store.check(fingerprint, identity)  # a DIR of another study is refused before anything is written

    console = console or Console(stderr=True)
    scale = "".join(f", {k} {v}" for k, v in (("width", study.width_mult), ("depth", study.depth_mult)) if v)
    title = f"Fused-MBConv placement ablation: {study.variant}{scale}"
    store.open(fingerprint, identity, {
        "files": [str(Path(f).resolve()) for f in files], "overrides": overrides,
        "placements": study.placements, "seeds": study.seeds, "profile_only": study.profile_only})
    try:
        records = store.records()
        _run_pending(study, store, records, out, console)
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


def _run_pending(study: Study, store: StudyDir, records: dict, out: Path, console: Console) -> None:
    pending = [t for t in study.trials if records.get(t.trial_id, {}).get("status") != "completed"]
    # a profile does not depend on the seed: reuse one measured by any earlier trial of the placement
    profiles = {r["placement"]: ({k: r[k] for k in PROFILE_KEYS if k in r}, None)
                for r in records.values() if r.get("params") is not None}
    n, skipped = len(study.trials), len(study.trials) - len(pending)
    if skipped:
        console.print(f"{out}: {skipped} of {n} trials already finished, running {len(pending)}")
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("trials", total=n, completed=skipped)
        for i, trial in enumerate(pending, start=skipped + 1):
            run_dir = out / "trials" / trial.trial_id
            label = f"trial {i}/{n} {trial.trial_id}"
            progress.update(task, description=f"{label} · profiling")
            started = time.time()
            if trial.placement not in profiles:
                profiles[trial.placement] = profile_safely(study, trial.placement)
            prof, error = profiles[trial.placement]
            fields = {}
            if error is None and not study.profile_only:
                if run_dir.exists():  # an interrupted or failed attempt: start the trial afresh
                    shutil.rmtree(run_dir)

                def tick(label=label, run_dir=run_dir, started=started):
                    status = _metrics_progress(run_dir)
                    progress.update(task, description=f"{label} · training {time.time() - started:.0f}s"
                                    + (f" · {status}" if status else ""))
                tick()
                fields, error = train_trial(study, trial, run_dir, tick)
            record = {"trial_id": trial.trial_id, "placement": trial.placement, "seed": trial.seed,
                      "status": "failed" if error else "completed", "error": error, **prof, **fields,
                      "run_dir": None if study.profile_only else str(run_dir),
                      "duration_s": round(time.time() - started, 3),
                      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            store.append(record)
            records[trial.trial_id] = record
            progress.update(task, advance=1, description=f"trial {i}/{n} {trial.trial_id} · done")
            if error:
                progress.console.print(f"[red]✗ {trial.trial_id}[/] {error}", highlight=False)
                if study.ablate["fail_fast"]:
                    progress.console.print("[red]stopping: --fail-fast[/]")
                    break
            else:
                top1 = f" top-1 {100 * fields['val_top1']:.2f}%" if fields.get("val_top1") is not None else ""
                progress.console.print(f"[green]✓ {trial.trial_id}[/]{top1} ({record['duration_s']:.0f}s)", highlight=False)
