"""The study as a TensorBoard HParams view: one run per trial under <study>/tensorboard/,
its hyperparameters (placement, seed, the study's config) and its final metrics, so
`tensorboard --logdir <study>/tensorboard` compares the trials in the HParams tab.

Written by whoever records the trial (the sweep, or the trial's SLURM job), after the record.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from fmb.ablation.plan import fused_stages_label

METRICS = {"val_top1": "hparams/val_top1", "val_loss": "hparams/val_loss", "trained_params": "hparams/params",
           "trained_macs": "hparams/macs", "train_images_per_sec": "hparams/profile_train_img_s",
           "infer_images_per_sec": "hparams/profile_infer_img_s"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "stage_overrides":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def trial_hparams(study, record: dict) -> dict:
    values = _flatten({k: v for k, v in study.resolved.items() if k in ("model", "data", "aug", "optim", "sched",
                                                                         "ema", "progressive", "trainer")})
    values.pop("model.blocks", None)
    values.update({"placement": record["placement"], "fused_stages": fused_stages_label(record["placement"]),
                   "seed": record["seed"] if record["seed"] is not None else -1,
                   "model.stage_overrides": str(study.stage_overrides(record["placement"]))})
    return values


def write_trial_hparams(out: Path, study, record: dict) -> Path | None:
    """Best effort: a study never fails over its dashboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        metrics = {tag: float(record[k]) for k, tag in METRICS.items() if record.get(k) is not None}
        if record.get("status") != "completed" or not metrics:
            return None
        logdir = Path(out) / "tensorboard" / record["trial_id"]
        shutil.rmtree(logdir, ignore_errors=True)  # a re-run trial replaces its old view
        writer = SummaryWriter(str(logdir))
        exp, ssi, sei = hparams(trial_hparams(study, record), metrics)
        for summary in (exp, ssi, sei):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, 0)
        writer.close()
        return logdir
    except Exception:
        return None
