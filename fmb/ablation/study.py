"""A study = one base training config + the `ablate:` settings + the trials they generate.

Presets are ordinary train configs with an extra `ablate:` section. We pop that section,
validate the rest through the same `fmb.config.load_config` that `fmb train` uses (so a bad
config fails here, before any trial starts), and fingerprint what makes results comparable.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from fmb.ablation.plan import (
    Trial, generate_placements, make_trials, pareto_count, parse_placements, parse_seeds,
    trial_stage_overrides,
)
from fmb.config import load_config, parse_overrides, read_yaml, to_dict
from fmb.config.ablate import AblateConfig
from fmb.errors import FmbError, choice_error
from fmb.models import build_stages, get_variant

# set by --placements / --seeds / --out instead, so one study means one thing
RESERVED_OVERRIDES = {"model.blocks": "--placements or --sweep", "run.seed": "--seeds", "run.dir": "--out"}
# keys that only decide how or which trials run, not what a trial means: outside the fingerprint
NOT_IDENTITY = ("placements", "sweep", "seeds", "exhaustive_cap", "fail_fast", "trial_timeout_s", "train_command",
                "launcher", "jobs", "devices_per_trial", "slurm")


@dataclass
class Study:
    variant: str
    n_stages: int
    width_mult: float | None
    depth_mult: float | None
    base_overrides: dict              # model.stage_overrides of the base config
    train_yaml: dict                  # preset(s) minus `ablate:`, written as each trial's -c file
    train_overrides: list[str]        # the user's key=value overrides, passed on to each trial
    ablate: dict
    placements: list[str]
    seeds: list[int]
    trials: list[Trial]
    resolved: dict = field(repr=False, default_factory=dict)
    auto: dict = field(default_factory=dict)  # settings decided once for every trial (study_auto.py)

    @property
    def profile_only(self) -> bool:
        return bool(self.ablate["profile_only"])

    def stage_overrides(self, placement: str) -> dict:
        return trial_stage_overrides(placement, self.base_overrides, self.ablate["fused_overrides"],
                                     self.ablate["mbconv_overrides"])

    def trial_config(self, placement: str) -> dict:
        cfg = json.loads(json.dumps(self.train_yaml))  # deep copy of plain data
        model = cfg.setdefault("model", {})
        model.pop("blocks", None)  # the command line sets it per trial
        # integer stage numbers, as the schema types them (dict[int, ...]); `fmb train` rejects '1'
        model["stage_overrides"] = {int(k): v for k, v in self.stage_overrides(placement).items()}
        return cfg

    def identity(self) -> dict:
        """What must match for a DIR's results to belong to this study."""
        train = json.loads(json.dumps(self.resolved, default=str))
        for section, key in (("run", "dir"), ("run", "name"), ("run", "seed"), ("model", "blocks")):
            (train.get(section) or {}).pop(key, None)
        ablate = {k: v for k, v in self.ablate.items() if k not in NOT_IDENTITY}
        return json.loads(json.dumps({"train": train, "ablate": ablate}, sort_keys=True, default=str))

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


def _read_yaml(path: str) -> DictConfig:
    return read_yaml(Path(path))  # the same reader and one-line errors as fmb train


def _resolve_train_config(train_yaml: DictConfig, overrides: list[str]) -> dict:
    """Validate through fmb train's own loader, so a trial can't fail on config the parent accepted."""
    fd, tmp = tempfile.mkstemp(prefix="fmb-ablate-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(OmegaConf.to_yaml(train_yaml))
        return to_dict(load_config([tmp], list(overrides)))
    finally:
        os.unlink(tmp)


def _ablate_section(sections: list, overrides: list[str]) -> dict:
    """The `ablate:` sections of the presets, then `ablate.*` overrides, checked by AblateConfig."""
    merged = OmegaConf.structured(AblateConfig)
    _, nested = parse_overrides(overrides)
    for origin, section in [*(("the preset's ablate: section", s) for s in sections),
                            ("ablate.* overrides", nested.get("ablate", {}))]:
        try:
            merged = OmegaConf.merge(merged, section)
        except (ConfigKeyError, ConfigAttributeError) as exc:
            section, _, key = str(exc.full_key).rpartition(".")
            schema = OmegaConf.structured(AblateConfig)
            valid = list(schema[section] if section else schema)
            raise choice_error(f"ablate{'.' + section if section else ''} setting", key, valid) from None
        except OmegaConfBaseException as exc:
            raise FmbError(f"invalid ablate.{exc.full_key} in {origin}: {str(exc).splitlines()[0]}") from None
    return to_dict(OmegaConf.to_object(merged))


def load_study(files: list[str], overrides: list[str], *, placements=None, sweep=None, seeds=None,
               profile_only=None, fail_fast=None, force=False) -> Study:
    """Everything a sweep needs, validated; raises FmbError before anything is written."""
    ablate_over = [o for o in overrides if o.startswith("ablate.")]
    train_over = [o for o in overrides if not o.startswith("ablate.")]
    for item in train_over:
        key = item.split("=", 1)[0]
        if key in RESERVED_OVERRIDES:
            raise FmbError(f"'{key}' is set per trial by fmb ablate; use {RESERVED_OVERRIDES[key]} instead")
    yamls = [_read_yaml(f) for f in files]
    sections = [y.pop("ablate") for y in yamls if "ablate" in y]
    ablate = _ablate_section([s for s in sections if s is not None], ablate_over)
    train_yaml = OmegaConf.merge(*yamls) if yamls else OmegaConf.create({})
    resolved = _resolve_train_config(train_yaml, train_over)

    model = resolved.get("model") or {}
    variant = model.get("variant")
    if not variant:
        raise FmbError("no model.variant in the config; expected e.g. model.variant=efficientnetv2_s "
                       "or -c configs/ablate/v2s_prefix.yaml")
    n_stages = len(get_variant(variant).stages)

    if placements is not None and sweep is not None:
        raise FmbError("give --placements or --sweep, not both")
    if profile_only is not None:
        ablate["profile_only"] = bool(profile_only)
    if fail_fast is not None:
        ablate["fail_fast"] = bool(fail_fast)
    to_dict(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AblateConfig), ablate)))  # re-check
    cap = ablate["exhaustive_cap"]
    if placements is None and sweep is None and ablate["placements"] is not None:
        placements = ablate["placements"]
    if placements is not None and (k := pareto_count(placements)) is not None:
        from fmb.ablation.front import front_placements  # measures: only when a study asks for the front

        placements = front_placements(variant, k, model=model, ablate=ablate,
                                      image_size=(resolved.get("data") or {}).get("image_size"))
    if placements is not None:
        chosen = parse_placements(placements, variant)
    else:
        chosen = generate_placements(sweep or ablate["sweep"] or "prefix", n_stages, cap, force)
    seed_list = parse_seeds(seeds if seeds is not None else ablate["seeds"])

    study = Study(variant, n_stages, model.get("width_mult"), model.get("depth_mult"),
                  dict(model.get("stage_overrides") or {}),
                  OmegaConf.to_container(train_yaml, resolve=False), train_over, ablate, chosen,
                  seed_list, make_trials(chosen, seed_list, ablate["profile_only"]), resolved)
    for p in chosen:  # every trial's model must build (bad stage field, kernel size, ...) before we start
        build_stages(variant, p, study.stage_overrides(p), study.width_mult, study.depth_mult)
    return study
