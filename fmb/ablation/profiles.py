"""The profiles of a study's placements measured together, so that none of them depends on
its place in the list.

Profiled one after the other, the first placement of a study also paid the process's
warm-up and each one met whatever load the machine had at its turn (a profile-only study
once showed the same two placements 50x apart in one order and 5x the other way in
another). Here every placement is built first and gets its own warm-up, then all are timed
in the same rounds, the order rotated each round (fmb.profiling.search.measure_placements).
"""
from __future__ import annotations

import torch

from fmb.ablation.runner import PROFILE_KEYS, profile_safely, profile_settings
from fmb.ablation.study import Study


def profile_placements(study: Study, placements: list[str]) -> dict:
    """{placement: (profile, error)} as `runner.profile_safely` gives for one. If measuring them
    together fails (out of memory with all of them built, say), each is profiled on its own."""
    from fmb.models import create_model
    from fmb.profiling.measure import count_macs, count_params
    from fmb.profiling.search import measure_placements

    prof = study.ablate["profile"]
    device, resolution = profile_settings(study)
    model_kwargs = {"name": study.variant, "width_mult": study.width_mult, "depth_mult": study.depth_mult,
                    "num_classes": prof["num_classes"]}
    try:
        measured = measure_placements(
            model_kwargs, list(placements), overrides_for=lambda p: study.stage_overrides(p) or None,
            resolution=resolution, batch_size=int(prof["batch_size"]), device=device, precision=prof["precision"],
            warmup=int(prof["warmup"]), iters=int(prof["iters"]))
    except Exception:  # noqa: BLE001 - the one-by-one path reports each placement's own error
        return {p: profile_safely(study, p) for p in placements}
    finally:
        if device.startswith("cuda"):
            torch.cuda.empty_cache()  # give the memory back before a trial trains on the same GPU
    out = {}
    for p in placements:
        with torch.device("meta"):  # params and MACs need shapes only
            meta = create_model(**model_kwargs, blocks=p, stage_overrides=study.stage_overrides(p) or None)
        macs = count_macs(meta, resolution)
        fields = {"params": count_params(meta), "macs": macs, "flops": 2 * macs, **measured[p]}
        out[p] = ({k: fields[k] for k in PROFILE_KEYS}, None)
    return out
