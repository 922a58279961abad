"""`run_ablation`: the library function behind `fmb ablate` — plan, check DIR, run what is not
finished yet (several trials at once on local devices, or as SLURM jobs) with a live progress
view, then write the report. `--dry-run` is fmb/ablation/dryrun.py. Notebooks call both too."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from fmb.ablation import report
from fmb.ablation.local import run_local
from fmb.ablation.report_context import context_lines
from fmb.ablation.slurm import run_on_slurm
from fmb.ablation.study_auto import decide_study_auto
from fmb.ablation.store import StudyDir, invocation_files
from fmb.ablation.study import Study, load_study
from fmb.errors import FmbError
from fmb.utils import atomic_write_text, make_console


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


def _write_outputs(out: Path, study: Study, records: dict, title: str) -> dict:
    planned = [records[t.trial_id] for t in study.trials if t.trial_id in records]
    rows = report.summarize(study.placements, {r["trial_id"]: r for r in planned})
    report.write_csv(out / "results.csv", planned)
    plots = report.write_plots(out, rows, title)
    failed = [r for r in planned if r["status"] != "completed"]
    report.write_markdown(out / "report.md", rows, title, context_lines(study, planned), plots, failed,
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
    console = console or make_console(stderr=True)
    if not study.profile_only and study.ablate["launcher"] != "slurm":
        stored = (store.read_study() or {}).get("invocation", {}).get("auto") if resume else None
        study.auto = decide_study_auto(study, stored)
        console.print("every trial: " + "; ".join(entry["reason"] for entry in study.auto.values()), highlight=False)
    store.open(study.fingerprint(), study.identity(), {
        "files": invocation_files(files), "overrides": overrides,
        "placements": study.placements, "seeds": study.seeds, "profile_only": study.profile_only, "auto": study.auto})
    try:
        records = store.records()
        if study.ablate["launcher"] == "slurm" and not study.profile_only:
            run_on_slurm(study, store, records, out, console)
        else:
            run_local(study, store, records, out, console)
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


