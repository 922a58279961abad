"""`fmb ablate --dry-run`: the plan of a study (trials, where they would run, one trial's config
and command, an estimated cost from a quick profile) without running or writing anything."""
from __future__ import annotations

from fmb.ablation.devices import plan_slots
from fmb.ablation.study import Study
from fmb.ablation.local import pending_trials
from fmb.ablation.sweep import prepare_study


def _train_images(cfg: dict) -> tuple[int | None, str]:
    """Images one epoch of a trial trains on, and how we know."""
    data, trainer = cfg.get("data") or {}, cfg.get("trainer") or {}
    devices = trainer.get("devices") if isinstance(trainer.get("devices"), int) and trainer.get("devices") > 0 else 1
    limit = trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        return limit * data["batch_size"] * devices, f"trainer.limit_train_batches={limit}"
    try:
        from fmb.data.sources import load_source

        splits = load_source(data["source"], data.get("name"), streaming=False)
        train = splits[data.get("train_split") or "train"]
        has_val = data.get("val_split") or any(k in splits for k in ("validation", "valid", "val", "dev"))
        n = len(train) if has_val else int(len(train) * (1 - data["val_fraction"]))
        if isinstance(limit, float) and 0 < limit < 1:
            n = int(n * limit)
        return n, f"{n} training images"
    except Exception as exc:
        return None, f"dataset size unknown ({type(exc).__name__})"


def plan_ablation(files=(), overrides=(), *, placements=None, sweep=None, seeds=None, profile_only=None,
                  out=None, resume=False, fail_fast=None, force=False, profile=True) -> dict:
    """`fmb ablate --dry-run`: what a run would do — trials, where they would run, one trial's
    config and command, an estimated cost from a quick profile — without running or writing anything."""
    from omegaconf import OmegaConf

    from fmb.ablation.profiles import profile_placements
    from fmb.ablation.runner import trial_command

    files, overrides, study, out, store, title = prepare_study(files, overrides, placements, sweep, seeds, profile_only,
                                                          out, resume, fail_fast, force)
    records = store.records()
    pending = pending_trials(study, records)
    plan = {"title": title, "out_dir": str(out), "launcher": study.ablate["launcher"],
            "trials": [t.trial_id for t in study.trials], "pending": [t.trial_id for t in pending],
            "finished": [t.trial_id for t in study.trials if t not in pending], "profile_only": study.profile_only}
    if study.ablate["launcher"] == "slurm" and not study.profile_only:
        from fmb.ablation.slurm import executor_params

        folder, params = executor_params(study, out)
        plan.update(parallel=min(len(pending), params["slurm_array_parallelism"]) or 1,
                    where=f"one SLURM job per trial (array of {len(pending)}), logs in {folder}", slurm=params)
    else:
        slots = plan_slots(study, len(pending)) if pending and not study.profile_only else []
        plan.update(parallel=max(1, len(slots)), where=", ".join(s.label for s in slots) or "this process (profiles)",
                    slots=[{"label": s.label, "env": s.env} for s in slots])
    example = pending[0] if pending else study.trials[0]
    if not study.profile_only:
        run_dir = out / "trials" / example.trial_id
        plan["example_trial"] = {"trial_id": example.trial_id,
                                 "command": trial_command(study, run_dir / "trial.yaml", example.placement,
                                                          example.seed, run_dir),
                                 "config_yaml": OmegaConf.to_yaml(OmegaConf.create(study.trial_config(example.placement)))}
    if profile:
        prof = study.ablate["profile"]
        quick = {**prof, "warmup": min(1, prof["warmup"]), "iters": min(2, prof["iters"])}
        probe = sorted({study.placements[0], study.placements[-1]})
        speeds = {}
        for p, (result, error) in profile_placements(_with_profile(study, quick), probe).items():
            speeds[p] = None if error else result.get("train_images_per_sec")
            if error:
                plan.setdefault("notes", []).append(f"profile of {p} failed: {error}")
        plan["quick_profile"] = {"train_images_per_sec": speeds, "settings": quick}
        if not study.profile_only:
            images, source = _train_images(study.resolved)
            epochs = (study.resolved.get("trainer") or {}).get("max_epochs") or 1
            known = [v for v in speeds.values() if v]
            if images and known:
                per_trial = epochs * images / (sum(known) / len(known))
                plan["estimate"] = {
                    "images_per_epoch": images, "epochs": epochs, "basis": source,
                    "trial_compute_s": round(per_trial, 1),
                    "total_compute_s": round(per_trial * len(pending), 1),
                    "wall_s": round(per_trial * -(-len(pending) // plan["parallel"]), 1),
                    "note": "training compute at the profiled speed only (no data loading, validation or start-up), "
                            "so a lower bound; trials at once share the machine"}
            else:
                plan["estimate"] = {"note": f"no estimate: {source if not images else 'the profile failed'}"}
    return plan


def _with_profile(study: Study, profile: dict) -> Study:
    import copy

    quick = copy.copy(study)
    quick.ablate = {**study.ablate, "profile": profile}
    return quick


def format_plan(plan: dict) -> list[str]:
    """The dry run as lines of text for the terminal."""
    lines = [plan["title"], f"study dir: {plan['out_dir']}",
             f"trials: {len(plan['trials'])} ({len(plan['finished'])} finished, {len(plan['pending'])} to run"
             + (", profile only" if plan["profile_only"] else "") + ")",
             f"launcher: {plan['launcher']}: {plan['where']}; {plan['parallel']} at once"]
    if plan.get("slurm"):
        lines.append("submitit: " + ", ".join(f"{k}={v}" for k, v in plan["slurm"].items()))
    if plan.get("example_trial"):
        ex = plan["example_trial"]
        lines += [f"trial {ex['trial_id']}: {' '.join(map(str, ex['command']))}", "its -c file (trial.yaml):",
                  *("  " + ln for ln in ex["config_yaml"].rstrip().splitlines())]
    if plan.get("quick_profile"):
        speeds = plan["quick_profile"]["train_images_per_sec"]
        lines.append("quick profile, train img/s: " + ", ".join(
            f"{p} {v:.0f}" if v else f"{p} failed" for p, v in speeds.items()))
    est = plan.get("estimate")
    if est and "trial_compute_s" in est:
        lines.append(f"estimate: {est['epochs']} epoch(s) × {est['images_per_epoch']} images ({est['basis']}) → "
                     f"~{_duration(est['trial_compute_s'])} per trial, ~{_duration(est['total_compute_s'])} of "
                     f"compute, ~{_duration(est['wall_s'])} wall with {plan['parallel']} at once ({est['note']})")
    elif est:
        lines.append(f"estimate: {est['note']}")
    lines += [f"note: {n}" for n in plan.get("notes", [])]
    return lines


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
