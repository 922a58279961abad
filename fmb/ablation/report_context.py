"""The report's prose: what a reader needs to judge the table (data, budget, hardware, what differs)."""
from __future__ import annotations

from fmb.ablation.devices import describe_hardware
from fmb.ablation.study import Study


def context_lines(study: Study, records: list[dict]) -> list[str]:
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
    from fmb.ablation.store import _flatten
    from fmb.config import to_dict
    from fmb.config.schema import TrainConfig

    defaults = _flatten(to_dict(TrainConfig()))
    skip = ("run.", "model.blocks", "trainer.enable_progress_bar", "trainer.enable_model_summary")
    ours = {k: v for k, v in _flatten(cfg).items() if not k.startswith(skip)}
    changed = [f"{k}={v}" for k, v in sorted(ours.items()) if defaults.get(k, object()) != v and v not in ({}, [])]
    return changed[:limit] + ([f"… {len(changed) - limit} more"] if len(changed) > limit else [])
