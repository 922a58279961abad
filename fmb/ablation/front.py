"""`--placements pareto:K`: the K placements a study trains, spread along the front of params vs
predicted training img/s that a placement search (fmb.profiling.search) finds on the study's
own profile settings (device, precision, batch, resolution) and stage overrides."""
from __future__ import annotations

from fmb.ablation.plan import trial_stage_overrides


def front_placements(variant: str, k: int, *, model: dict, ablate: dict, image_size) -> list[str]:
    """`model` is the study's resolved `model:` section, `ablate` its `ablate:` settings."""
    from fmb.ablation.runner import profile_at
    from fmb.profiling.search import front_placements as search_front

    prof = ablate["profile"]
    device, resolution = profile_at(prof, image_size)
    base = dict(model.get("stage_overrides") or {})

    def overrides_for(placement: str):
        return trial_stage_overrides(placement, base, ablate["fused_overrides"], ablate["mbconv_overrides"]) or None

    model_kwargs = {"name": variant, "width_mult": model.get("width_mult"), "depth_mult": model.get("depth_mult"),
                    "num_classes": prof["num_classes"]}
    return search_front(model_kwargs, k, resolution=resolution,
                        batch_size=int(prof["batch_size"]), device=device, precision=prof["precision"],
                        warmup=int(prof["warmup"]), iters=int(prof["iters"]), overrides_for=overrides_for)
