"""The auto settings of a study, decided once on the machine it runs on and given to every trial.

A trial left to itself would decide precision and memory format afresh, and on
a CPU with native bf16 it measures its own model's step to choose the precision: two placements
of one study could then train in different precisions, and a trial resumed on a busy machine
could differ from its seed-paired neighbours. So the study decides these once (for its base
placement), passes them to every trial as explicit settings, and keeps them in study.json:
`--resume` reuses them. SLURM trials decide on their own nodes (the submitting host may have
no GPU).
"""
from __future__ import annotations

from fmb.config import from_dict
from fmb.device import machine
from fmb.models import get_variant
from fmb.training import auto

# Loader workers stay each trial's own: they depend on the devices its slot gives it.
PINNED = ("trainer.precision", "model.channels_last")


def decide_study_auto(study, stored: dict | None = None) -> dict:
    """{key: {value, reason}} for the PINNED settings; `stored` (a resumed study's) wins."""
    if stored:
        return {key: {**entry, "reason": f"decided when the study started: {entry['reason']}"}
                for key, entry in stored.items()}
    cfg = from_dict(study.resolved)
    size = cfg.data.image_size or get_variant(cfg.model.variant).train_size

    def measure() -> dict:
        from fmb.training.module import model_kwargs
        from fmb.training.precision_probe import measure_model_precision
        return measure_model_precision(model_kwargs(cfg.model), size, cfg.data.batch_size)

    plan = auto.resolve(cfg, machine(), measure_precision=measure)
    return {key: {"value": plan.decisions[key].value, "reason": plan.decisions[key].line(key)} for key in PINNED}


def study_overrides(decided: dict) -> list[str]:
    """The dotted overrides every trial gets."""
    return [f"{key}={entry['value']}" for key, entry in decided.items()]
