"""`pretrained=`: a local file, `hf-hub:ORG/NAME`, `torchvision:ENUM.NAME` or `True` → weights and
what they need (padding, BatchNorm origin, preprocessing).

`resolve` reads only metadata (fmb's table, a Hub repo's cached config.json, torchvision's
weights enum), so a config can be completed before any weights are read; `fetch_state`
reads the tensors. The Hub goes through huggingface_hub's own cache and offline switch
(HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE=1); torchvision through torch.hub's cache (TORCH_HOME).
Nothing is downloaded when it is cached; with no network and nothing cached the error says
where the file should be and the one command that puts it there.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from fmb.errors import FmbError, choice_error
from fmb.models.published import all_specs, default_weights, find_published

HUB_PREFIX, TV_PREFIX = "hf-hub:", "torchvision:"
_HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # timm's two formats, safetensors first
INTERPOLATIONS = ("bicubic", "bilinear")


@dataclass(frozen=True)
class Source:
    """Weights to start from, before they are read."""
    spec: str  # hf-hub:ORG/NAME[@REV], torchvision:ENUM.NAME, or an absolute file path
    kind: str  # "hf-hub" | "torchvision" | "file"
    variant: str | None = None  # the fmb variant they were trained as, where known
    origin: str | None = None  # "timm" | "timm-tf" | "torchvision"; None: told by the file's keys
    preprocessing: dict = field(default_factory=dict, compare=False)  # data.* keys the source fixes

    @property
    def padding(self) -> str | None:
        """TF-trained weights need TF "same" padding; None where the source doesn't say."""
        return None if self.origin is None else "same" if self.origin == "timm-tf" else "symmetric"


def is_remote(pretrained) -> bool:
    return pretrained is True or (isinstance(pretrained, str) and pretrained.startswith((HUB_PREFIX, TV_PREFIX)))


def resolve(pretrained, variant: str | None = None) -> Source:
    """What `pretrained` names; `variant` is the model's, needed for `True`."""
    if pretrained is True or str(pretrained).strip().lower() == "true":
        if variant is None:
            raise FmbError("pretrained=True needs the model variant; expected e.g. "
                           "create_model('efficientnetv2_s', pretrained=True)")
        pretrained = default_weights(variant).spec
    text = str(pretrained).strip()
    if text.startswith(HUB_PREFIX):
        return _resolve_hub(text)
    if text.startswith(TV_PREFIX):
        return _resolve_torchvision(text)
    return Source(str(Path(text).expanduser().absolute()), "file")


def fetch_state(source: Source) -> dict:
    """The source's tensors (from the cache; downloaded only where the network allows)."""
    from fmb.models.weights import read_file

    if source.kind == "hf-hub":
        repo, revision = _split_hub(source.spec)
        for filename in _HUB_WEIGHTS:
            path = _hub_file(source.spec, filename, required=filename == _HUB_WEIGHTS[-1])
            if path is not None:
                return read_file(Path(path))
        raise AssertionError("unreachable: the last weights file is required")
    if source.kind == "torchvision":
        return _torchvision_state(source.spec)
    return read_file(Path(source.spec))


# --- the Hugging Face Hub ---------------------------------------------------------------
def _split_hub(spec: str) -> tuple[str, str | None]:
    repo, _, revision = spec.removeprefix(HUB_PREFIX).partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise FmbError(f"invalid pretrained '{spec}'; expected hf-hub:ORG/NAME, e.g. "
                       f"{default_weights('efficientnetv2_s').spec}")
    return repo, revision or None


def _hub_cache_dir(repo: str) -> Path:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")


def _not_cached(spec: str, reason: str) -> FmbError:
    repo, _ = _split_hub(spec)
    return FmbError(f"{spec}: weights not in the Hugging Face cache {_hub_cache_dir(repo)} ({reason}); fill it "
                    f"where there is network with `hf download {repo}` (same HF_HOME), or copy that folder here")


def _hub_file(spec: str, filename: str, required: bool) -> str | None:
    """The cached (or, online, downloaded) path of one file of the repo; None where the repo has none."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError,
    )

    repo, revision = _split_hub(spec)
    cached = try_to_load_from_cache(repo, filename, revision=revision)
    if isinstance(cached, str):
        return cached
    if constants.HF_HUB_OFFLINE or cached is not None:  # not None: the cache knows the repo lacks it
        if required:
            raise _not_cached(spec, "HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else f"the repo has no {filename}")
        return None
    try:
        return hf_hub_download(repo, filename, revision=revision)
    except RepositoryNotFoundError:
        raise FmbError(f"{spec}: no such model repo on the Hugging Face Hub; expected e.g. "
                       f"{default_weights('efficientnetv2_s').spec} (see `fmb models --pretrained`)") from None
    except LocalEntryNotFoundError as exc:  # no connection (a subclass of EntryNotFoundError)
        raise _not_cached(spec, f"download failed: {type(exc).__name__}") from None
    except EntryNotFoundError:
        if required:
            raise FmbError(f"{spec}: the repo has neither {' nor '.join(_HUB_WEIGHTS)}; expected timm-format "
                           "weights") from None
        return None
    except (HfHubHTTPError, OSError) as exc:
        raise _not_cached(spec, f"download failed: {type(exc).__name__}") from None


def _resolve_hub(spec: str) -> Source:
    _split_hub(spec)
    path = _hub_file(spec, "config.json", required=False)
    if path is not None:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
        arch, pre = config.get("architecture", ""), _timm_preprocessing(config.get("pretrained_cfg") or {})
    else:  # no config.json cached: fmb's table, else the name (timm names repos ARCH.TAG)
        known = find_published(spec)
        arch = spec.removeprefix(HUB_PREFIX).partition("@")[0].split("/")[-1].split(".")[0]
        pre = _table_preprocessing(known) if known else {}
    from fmb.models.specs import VARIANTS

    variant = arch.removeprefix("tf_")
    if variant not in VARIANTS:
        raise FmbError(f"{spec} holds timm's '{arch}', which is not an fmb variant (timm's *_rw_* and *_pruned "
                       "models are other networks); expected weights listed by `fmb models --pretrained`")
    return Source(spec, "hf-hub", variant, "timm-tf" if arch.startswith("tf_") else "timm", pre)


def _timm_preprocessing(cfg: dict) -> dict:
    """timm's pretrained_cfg → data.* values, as timm's resolve_data_config reads it for eval."""
    out = {}
    if cfg.get("mean") and cfg.get("std"):
        out["mean"], out["std"] = [float(v) for v in cfg["mean"]], [float(v) for v in cfg["std"]]
    if cfg.get("interpolation") in INTERPOLATIONS:
        out["interpolation"] = cfg["interpolation"]
    size, test_size = cfg.get("input_size"), cfg.get("test_input_size")
    if size:
        out["image_size"] = int(size[-1])
    if test_size or size:
        out["eval_image_size"] = int((test_size or size)[-1])
    crop = cfg.get("test_crop_pct") if test_size and cfg.get("test_crop_pct") else cfg.get("crop_pct")
    if crop:
        out["crop_ratio"] = float(crop)
    return out


def _table_preprocessing(p) -> dict:
    return {"mean": list(p.mean), "std": list(p.std), "interpolation": p.interpolation,
            "image_size": p.train_size, "eval_image_size": p.eval_size, "crop_ratio": p.crop_ratio}


# --- torchvision --------------------------------------------------------------------------
def _torchvision_weights(spec: str):
    from torchvision.models import get_weight

    name = spec.removeprefix(TV_PREFIX)
    try:
        return get_weight(name)
    except (ValueError, KeyError, AttributeError, TypeError):
        known = [s for s in all_specs() if s.startswith(TV_PREFIX)]
        raise choice_error("torchvision weights", spec, known) from None


def _resolve_torchvision(spec: str) -> Source:
    from fmb.models.specs import VARIANTS

    weights = _torchvision_weights(spec)
    match = re.fullmatch(r"EfficientNet_(V2_)?([A-Z0-9]+)_Weights", type(weights).__name__)
    variant = (f"efficientnet{'v2' if match.group(1) else ''}_{match.group(2).lower()}" if match else "")
    if variant not in VARIANTS:
        raise FmbError(f"{spec} are weights of torchvision's {type(weights).__name__}, not of an fmb variant; "
                       "expected EfficientNet_* or EfficientNet_V2_* weights")
    keys = weights.transforms.keywords  # torchvision's ImageClassification preset: its eval preprocessing
    mean, std = keys.get("mean", (0.485, 0.456, 0.406)), keys.get("std", (0.229, 0.224, 0.225))
    pre = {"mean": [float(v) for v in mean], "std": [float(v) for v in std],
           "interpolation": getattr(keys.get("interpolation"), "value", "bilinear"),
           "image_size": VARIANTS[variant].train_size,  # torchvision records no train size: the variant's
           "eval_image_size": int(keys["crop_size"]), "crop_ratio": keys["crop_size"] / keys["resize_size"]}
    return Source(spec, "torchvision", variant, "torchvision", pre)


def _torchvision_state(spec: str) -> dict:
    import torch.hub

    from fmb.models.weights import read_file

    weights = _torchvision_weights(spec)
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url.split("?")[0])
    if not path.is_file():
        try:
            torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", check_hash=True, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failed download is one line naming the cache
            name = spec.removeprefix(TV_PREFIX)
            raise FmbError(f"{spec}: weights not in torch.hub's cache {path} and the download failed "
                           f"({type(exc).__name__}); fill it where there is network with `python -c \"import "
                           f"torchvision; torchvision.models.get_weight('{name}').get_state_dict()\"` (same "
                           "TORCH_HOME), or copy the file there") from None
    return read_file(path)
