"""`search_placements`: every placement's params, MACs and speed predicted from one table of
parts (cost_model.py), its Pareto fronts, and a check of the prediction on a few placements
measured end to end.

Result keys (a JSON-serialisable dict):
  variant, model, resolution, batch_size, device, precision, channels_last, fast, warmup, iters,
  threads, torch        what was measured, as in `profile_model`
  paper_placement       the variant's own placement (marked on the fronts)
  table                 cost_model.part_table: stem, head, each stage as M and as F (params, MACs,
                        median ms of the part, its share of the network's ms), the scale factors
                        and the two anchor networks (all-M, all-F) they come from
  predictions           one row per placement (all 2^S): placement, params, macs (per image,
                        exact), train_ms, infer_ms (predicted per batch), train_images_per_sec,
                        infer_images_per_sec, and fronts: the fronts it is on
  fronts                {"params_train", "params_infer", "macs_train", "macs_infer"}: the
                        placements on each front, cheapest first
  validated             rows for the placements measured end to end: placement, why it was
                        chosen, predicted and measured img/s (train, infer), the measured
                        spread, error_train and error_infer = predicted / measured - 1. The
                        prediction here comes from the parts timed again in the same rounds as
                        these networks, so that the machine's load drifting between the search
                        and the check is not counted as error
  median_abs_error      {"train", "infer"} over the validated placements that are not anchors
  timing_s              search (building and timing the parts, predicting), validate,
                        per_placement (what measuring one network end to end cost in the
                        validation: building, warm-up, rounds), all_end_to_end (per_placement x
                        2^S), search_fraction = search / all_end_to_end
  notes
"""
from __future__ import annotations

import itertools
import statistics
import time

import torch
from torch import nn

from fmb.errors import FmbError
from fmb.models import cpu_fast_paths, create_model, folding_pays, fuse_bn, get_variant
from fmb.profiling import pareto
from fmb.profiling.cost_model import part_contenders, part_table, predict, time_contenders
from fmb.profiling.measure import infer_step, train_step
from fmb.profiling.profile import check_inputs

FRONTS = {f"{cost}_{kind}": (cost, f"{kind}_images_per_sec") for cost in ("params", "macs")
          for kind in ("train", "infer")}


def all_placements(n_stages: int) -> list[str]:
    """Every placement, from all-MBConv to all-Fused, fewer fused stages first."""
    combos = ["".join(c) for c in itertools.product("MF", repeat=n_stages)]
    return sorted(combos, key=lambda p: (p.count("F"), p[::-1]))


def constant_overrides(model_kwargs: dict):
    """The overrides of `fmb profile --set`: the same for every placement, with no `block`
    (the search chooses every stage's block)."""
    overrides = model_kwargs.get("stage_overrides") or None
    for stage, fields in (overrides or {}).items():
        if "block" in fields:
            raise FmbError(f"--set stage.{stage}.block conflicts with the placement search, which tries both "
                           f"blocks in every stage; expected overrides of other fields (kernel_size, se_ratio, ...)")
    return lambda placement: overrides


def placement_contenders(model_kwargs: dict, placements: list[str], *, overrides_for, resolution: int,
                         batch_size: int, device: str, precision: str, channels_last: bool = False,
                         fast: bool = False) -> dict:
    """{"train": factory, "infer": factory} of whole networks, labelled by placement, each
    step as `fmb profile` takes it (cross-entropy + backward + SGD step; inference forward)."""
    kwargs = {k: v for k, v in model_kwargs.items() if k not in ("blocks", "stage_overrides")}
    models = {p: cpu_fast_paths(create_model(**kwargs, blocks=p, stage_overrides=overrides_for(p))).to(device)
              for p in placements}
    some = next(iter(models.values()))
    x = torch.randn(batch_size, some.conv_stem.in_channels, resolution, resolution, device=device)
    y = torch.randint(0, max(1, some.num_classes or some.num_features), (batch_size,), device=device)
    train_fmt = torch.channels_last if channels_last else torch.contiguous_format
    infer_fmt = torch.channels_last if channels_last or fast else torch.contiguous_format
    fold = fast and folding_pays(device, precision)

    def train_steps():
        return {p: train_step(m.to(memory_format=train_fmt), x.to(memory_format=train_fmt),
                              lambda logits: nn.functional.cross_entropy(logits.float(), y), precision)
                for p, m in models.items()}

    def infer_steps():
        return {p: infer_step((fuse_bn(m) if fold else m.eval()).to(memory_format=infer_fmt),
                              x.to(memory_format=infer_fmt), precision) for p, m in models.items()}
    return {"train": train_steps, "infer": infer_steps}


def with_rates(timings: dict, batch_size: int) -> dict:
    for row in timings.values():
        for kind in ("train", "infer"):
            if f"{kind}_ms" in row:  # a part timed only for training has no inference figure
                row[f"{kind}_images_per_sec"] = batch_size / row[f"{kind}_ms"] * 1e3
    return timings


def measure_placements(model_kwargs: dict, placements: list[str], *, overrides_for, warmup: int = 3,
                       iters: int = 10, **opts) -> dict:
    """{placement: {train_ms, infer_ms, train_images_per_sec, infer_images_per_sec, *_spread_ms,
    spent_s}}: whole networks, all timed in the same rounds (each its own warm-up, the order
    rotated round by round), so no placement's figure depends on its place in the list."""
    steps = placement_contenders(model_kwargs, placements, overrides_for=overrides_for, **opts)
    return with_rates(time_contenders([steps], warmup=warmup, iters=iters), opts["batch_size"])


def anchors(n_stages: int) -> tuple[str, str]:
    """The all-MBConv and all-Fused networks: measured whole to scale the parts (cost_model.part_table),
    so predicted by construction and never counted in the prediction error."""
    return "M" * n_stages, "F" * n_stages


def choose_validation(predictions: list[dict], k: int, paper: str) -> dict:
    """{placement: why}: `k` spread along the params vs train img/s front (the next layers
    where it is shorter), the anchors left out, plus the paper's placement."""
    left_out = anchors(len(paper))
    candidates = [p for p in predictions if p["placement"] not in left_out]
    chosen = {p["placement"]: "front" for p in pareto.pick_along_front(candidates, k, "params",
                                                                         "train_images_per_sec")}
    chosen.setdefault(paper, "paper (an anchor: not in the median)" if paper in left_out else "paper")
    return chosen


def search_placements(model_kwargs: dict, *, resolution: int = 224, batch_size: int = 32, device: str = "cpu",
                      precision: str = "fp32", channels_last: bool = False, fast: bool = False,
                      validate: int = 8, warmup: int = 3, iters: int = 10, overrides_for=None) -> dict:
    """Measure the parts once, predict every placement, measure `validate` of them end to end
    (0: none; 2^S or more: all). `overrides_for(placement)` gives a placement's stage overrides
    (default: model_kwargs' own, the same for all). Keys: see the module docstring."""
    model_kwargs = {k: v for k, v in model_kwargs.items() if k != "blocks"}
    overrides_for = overrides_for or constant_overrides(model_kwargs)
    if isinstance(validate, bool) or not isinstance(validate, int) or validate < 0:
        raise FmbError(f"invalid number of placements to validate {validate!r}: expected an integer >= 0 "
                       f"(8 or more for a median worth reading)")
    variant = get_variant(model_kwargs["name"])
    check_inputs({**model_kwargs, "stage_overrides": overrides_for(variant.placement)}, resolution=resolution,
                 batch_size=batch_size, device=device, precision=precision, mode="both", warmup=warmup, iters=iters)
    opts = {"resolution": resolution, "batch_size": batch_size, "device": device, "precision": precision,
            "channels_last": channels_last, "fast": fast}
    timing = {"warmup": warmup, "iters": iters}
    started = time.perf_counter()
    parts, part_steps = part_contenders(model_kwargs, overrides_for=overrides_for, warmup=warmup, **opts)
    table = part_table(parts, time_contenders([part_steps], **timing))
    placements = all_placements(len(variant.stages))
    predictions = [predict(table, p, batch_size) for p in placements]
    fronts = {name: [p["placement"] for p in pareto.front(predictions, cost, speed)]
              for name, (cost, speed) in FRONTS.items()}
    for row in predictions:
        row["fronts"] = [name for name, members in fronts.items() if row["placement"] in members]
    search_s = time.perf_counter() - started

    chosen = choose_validation(predictions, validate, variant.placement) if validate else {}
    validated, validate_s, per_placement = [], 0.0, None
    if chosen:
        # The parts are timed again in the same rounds as the networks they are checked
        # against: on a shared machine the load drifts between rounds minutes apart.
        started = time.perf_counter()
        built = time.perf_counter()
        net_steps = placement_contenders(model_kwargs, list(chosen), overrides_for=overrides_for, **opts)
        built = time.perf_counter() - built
        timings = with_rates(time_contenders([part_steps, net_steps], **timing), batch_size)
        check_table = part_table(parts, timings)
        validated = [_validation_row(predict(check_table, p, batch_size), timings[p], why) for p, why in chosen.items()]
        validate_s = time.perf_counter() - started
        per_placement = built / len(chosen) + statistics.mean(timings[p]["spent_s"] for p in chosen)
    counted = [r for r in validated if r["placement"] not in anchors(len(variant.stages))]
    every = len(chosen) == len(placements)
    all_s = per_placement * len(placements) if per_placement else None
    notes = [] if len(counted) >= 8 or not validate else [
        f"the median error is over {len(counted)} placements: fewer than 8 say little"]
    return {"variant": variant.name, "model": model_kwargs, **opts, **timing, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "paper_placement": variant.placement, "table": table,
            "predictions": predictions, "fronts": fronts, "validated": validated,
            "median_abs_error": {k: statistics.median(abs(r[f"error_{k}"]) for r in counted) if counted else None
                                 for k in ("train", "infer")},
            "timing_s": {"search": search_s, "validate": validate_s, "per_placement": per_placement,
                         "all_end_to_end": all_s, "all_end_to_end_measured": every,
                         "search_fraction": search_s / all_s if all_s else None},
            "notes": notes}


def _validation_row(predicted: dict, measured: dict, why: str) -> dict:
    row = {"placement": predicted["placement"], "why": why}
    for kind in ("train", "infer"):
        key = f"{kind}_images_per_sec"
        row.update({f"predicted_{key}": predicted[key], f"measured_{key}": measured[key],
                    f"measured_{kind}_ms": measured[f"{kind}_ms"],
                    f"measured_{kind}_spread_ms": measured[f"{kind}_spread_ms"],
                    f"error_{kind}": predicted[key] / measured[key] - 1})
    return row


def front_placements(model_kwargs: dict, k: int, *, cost: str = "params", **options) -> list[str]:
    """`k` placements spread along the cost vs predicted train img/s front (no validation):
    what `fmb ablate --placements pareto:K` trains."""
    result = search_placements(model_kwargs, validate=0, **options)
    return [p["placement"] for p in pareto.pick_along_front(result["predictions"], k, cost, "train_images_per_sec")]
