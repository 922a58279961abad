"""Import weights saved from torchvision, timm or fmb into an fmb EfficientNet.

All three lay their tensors out in the same order (stem, blocks in order, head,
classifier) and with the same shapes, so a checkpoint maps onto our model tensor by
tensor once its origin is known. The origin decides the BatchNorm eps, which must match
the source for equal logits: torchvision V1 and timm's PyTorch-trained models use 1e-5,
torchvision V2 and every TensorFlow-origin model (timm `tf_*`) 1e-3.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from fmb.errors import FmbError

_WRAPPER_PREFIXES = ("model.", "module.", "_orig_mod.", "net.")


@dataclass(frozen=True)
class Origin:
    name: str  # "torchvision" | "timm" | "timm-tf" | "fmb"
    bn_eps: float


def _read_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise FmbError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise FmbError(f"checkpoint {path} holds no state dict of tensors; expected a file saved "
                       "with torch.save(model.state_dict(), path)")
    return obj


def _strip_wrappers(state: dict) -> dict:
    """Drop prefixes added by Lightning modules, DDP or torch.compile."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def detect_origin(state: dict, family: str, padding: str) -> Origin:
    keys = list(state)
    if any(k.startswith("features.0.0.") for k in keys):
        return Origin("torchvision", 1e-3 if family == "v2" else 1e-5)
    if "conv_stem.weight" in state:
        if any(".se.conv_reduce." in k for k in keys):
            # timm's tf_* ports keep TF's eps and need TF "same" padding; asking for
            # padding="same" is how the user says the weights are TF-origin.
            return Origin("timm-tf", 1e-3) if padding == "same" else Origin("timm", 1e-5)
        return Origin("fmb", 1e-3)
    raise FmbError(
        f"checkpoint matches no known layout (torchvision efficientnet*, timm efficientnet*/"
        f"tf_efficientnet*, fmb); its first keys are {', '.join(keys[:3]) or '(none)'}"
    )


def read_checkpoint(path, *, family: str, padding: str = "symmetric") -> tuple[dict, Origin]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FmbError(f"pretrained checkpoint not found: {path}; expected a local .pth/.pt/.ckpt/"
                       ".safetensors file (no downloads are made)")
    state = _strip_wrappers(_read_file(path))
    return state, detect_origin(state, family, padding)


def _shape(t) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def load_into(model: torch.nn.Module, state: dict, origin: Origin, source: str = "checkpoint") -> None:
    """Copy `state` into `model` tensor by tensor; name the first mismatch if it doesn't fit.

    A classifier of another size (ImageNet weights, 10-class model) is left at its fresh
    initialisation with a warning, as timm does for fine-tuning.
    """
    ours = model.state_dict()
    ours_items = list(ours.items())
    theirs_items = list(state.items())
    variant = getattr(model, "variant", type(model).__name__)
    skip_classifier = False
    classifier_keys = {"classifier.weight", "classifier.bias"}
    if len(ours_items) == len(theirs_items):
        tail = [(k, v.shape, tv.shape) for (k, v), (_, tv) in zip(ours_items[-2:], theirs_items[-2:])]
        skip_classifier = all(k in classifier_keys for k, *_ in tail) and any(a != b for _, a, b in tail)
    mapped = {}
    for index, ((key, tensor), (their_key, their_tensor)) in enumerate(zip(ours_items, theirs_items)):
        if skip_classifier and key in classifier_keys:
            continue
        if tensor.shape != their_tensor.shape:
            raise FmbError(
                f"{source} ({origin.name} layout) does not fit {variant}: first mismatch at tensor "
                f"{index}, ours '{key}' {_shape(tensor)} vs checkpoint '{their_key}' {_shape(their_tensor)}"
                " (another variant, placement or width?)"
            )
        mapped[key] = their_tensor
    if len(ours_items) != len(theirs_items):
        longer, which = (ours_items, "ours") if len(ours_items) > len(theirs_items) else (theirs_items, "checkpoint")
        extra = longer[min(len(ours_items), len(theirs_items))][0]
        raise FmbError(
            f"{source} ({origin.name} layout) does not fit {variant}: {len(theirs_items)} tensors vs "
            f"our {len(ours_items)}; first unmatched {which} key '{extra}' (another variant or placement?)"
        )
    if skip_classifier:
        warnings.warn(f"{source}: classifier shape differs from num_classes={model.num_classes}; "
                      "it keeps its fresh initialisation", stacklevel=3)
        mapped.update({k: ours[k] for k in classifier_keys})
    model.load_state_dict(mapped, strict=True)
