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

from fmb.ablation.plan import (
    DEFAULT_EXHAUSTIVE_CAP, Trial, generate_placements, make_trials, parse_placements, parse_seeds,
    trial_stage_overrides,
)
from fmb.config import override_to_nested, read_yaml
from fmb.errors import FmbError, choice_error
from fmb.models import build_stages, get_variant

ABLATE_DEFAULTS = {
    "placements": None,        # explicit list, e.g. [MMMMMM, FFFMMM]; wins over `sweep`
    "sweep": None,             # prefix | single | exhaustive (prefix when neither is given)
    "seeds": [0],
    "profile_only": False,
    "exhaustive_cap": DEFAULT_EXHAUSTIVE_CAP,
    "fused_overrides": {},     # stage fields for every stage a trial fuses, e.g. {se_ratio: 0.0}
    "mbconv_overrides": {},    # the same for every MBConv stage
    "fail_fast": False,
    "trial_timeout_s": None,   # kill a trial's process group after this long
    "train_command": None,     # argv prefix before `train ...`; default: python -m fmb
    "profile": {"resolution": None, "batch_size": 8, "device": "auto", "precision": "fp32",
                "warmup": 2, "iters": 5, "num_classes": 1000},
}
# set by --placements / --seeds / --out instead, so one study means one thing
RESERVED_OVERRIDES = {"model.blocks": "--placements or --sweep", "run.seed": "--seeds", "run.dir": "--out"}
# keys that only decide how or which trials run, not what a trial means: outside the fingerprint
NOT_IDENTITY = ("placements", "sweep", "seeds", "exhaustive_cap", "fail_fast", "trial_timeout_s", "train_command")


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
        # string keys: the schema types stage_overrides as dict[str, ...]
        model["stage_overrides"] = {str(k): v for k, v in self.stage_overrides(placement).items()}
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


def _dotlist(items: list[str]) -> DictConfig:
    """key=value items → nested config, parsed the way fmb train parses them."""
    out = OmegaConf.create({})
    for item in items:
        out = OmegaConf.merge(out, override_to_nested(item))
    return out


def _resolve_train_config(train_yaml: DictConfig, overrides: list[str]) -> dict:
    """Validate through fmb train's own loader, so a trial can't fail on config the parent accepted."""
    try:
        from fmb.config import load_config
    except ModuleNotFoundError as exc:
        if exc.name != "fmb.config":
            raise
        load_config = None  # training not installed yet: plain OmegaConf merge, no schema checks
    if load_config is None:
        return OmegaConf.to_container(OmegaConf.merge(train_yaml, _dotlist(overrides)), resolve=True)
    fd, tmp = tempfile.mkstemp(prefix="fmb-ablate-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(OmegaConf.to_yaml(train_yaml))
        return OmegaConf.to_container(load_config([tmp], list(overrides)), resolve=True)
    finally:
        os.unlink(tmp)


def _ablate_section(sections: list, overrides: list[str]) -> dict:
    merged = OmegaConf.create(ABLATE_DEFAULTS)
    for section in [*sections, _dotlist(overrides).get("ablate", {}) if overrides else {}]:
        section = OmegaConf.create(section) if not isinstance(section, DictConfig) else section
        for key, value in section.items():
            if key not in ABLATE_DEFAULTS:
                raise choice_error("ablate setting", key, ABLATE_DEFAULTS)
            if key == "profile" and value is not None:
                for sub in value:
                    if sub not in ABLATE_DEFAULTS["profile"]:
                        raise choice_error("ablate.profile setting", sub, ABLATE_DEFAULTS["profile"])
        merged = OmegaConf.merge(merged, section)
    return OmegaConf.to_container(merged, resolve=True)


def _check_ablate_values(ablate: dict) -> None:
    """Catch a bad setting here, not as the same failure in every trial."""
    def bad(key, value, expected):
        return FmbError(f"invalid ablate.{key}={value!r}: expected {expected}")

    def is_int(v, low):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    cap, timeout, cmd = ablate["exhaustive_cap"], ablate["trial_timeout_s"], ablate["train_command"]
    if not is_int(cap, 1):
        raise bad("exhaustive_cap", cap, "a positive integer such as 64")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise bad("trial_timeout_s", timeout, "a number of seconds > 0, or null for no limit")
    if cmd is not None and (not isinstance(cmd, list) or not cmd):
        raise bad("train_command", cmd, "a list such as [python, -m, fmb], or null")
    for key in ("fused_overrides", "mbconv_overrides"):
        if not isinstance(ablate[key] or {}, dict):
            raise bad(key, ablate[key], "a mapping of stage field: value, e.g. {se_ratio: 0.0}")
    prof = ablate["profile"]
    for key, low in (("batch_size", 1), ("warmup", 0), ("iters", 1), ("num_classes", 1)):
        if not is_int(prof[key], low):
            raise bad(f"profile.{key}", prof[key], f"an integer >= {low}")
    if prof["resolution"] is not None and not is_int(prof["resolution"], 8):
        raise bad("profile.resolution", prof["resolution"], "an integer >= 8, or null for data.image_size")
    if prof["precision"] not in ("fp32", "bf16", "fp16"):
        raise choice_error("ablate.profile.precision", prof["precision"], ("fp32", "bf16", "fp16"))
    if not (prof["device"] in ("auto", "cpu") or str(prof["device"]).startswith("cuda")):
        raise choice_error("ablate.profile.device", prof["device"], ("auto", "cpu", "cuda"))


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
    _check_ablate_values(ablate)
    cap = ablate["exhaustive_cap"]
    if placements is None and sweep is None and ablate["placements"] is not None:
        placements = ablate["placements"]
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
