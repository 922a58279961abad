"""Import weights saved from torchvision, timm or fmb into an fmb EfficientNet.

`read_checkpoint` takes a file or a published source (hf-hub:, torchvision:, True; resolved
by pretrained.py); `load_into` copies by name, the stages of another block type left fresh
(partial.py).

Tensors are matched by NAME, so a file's key order does not matter (safetensors stores keys
sorted, which puts `blocks.10` before `blocks.2`). Each origin's names are translated to
fmb's: timm and fmb already share them (timm's SE is `conv_reduce`/`conv_expand`, ours
`fc1`/`fc2`); torchvision numbers each block's layers (`features.S.B.block.J.K`), which we
map onto the fmb block's own layers in their order.

The origin also decides the BatchNorm eps and momentum, which must match the source for
equal logits (eps) and for fine-tuning as the source trained (momentum):
- torchvision: V2 eps 1e-3; V1 B0-B4 eps 1e-5; V1 B5-B7 eps 1e-3, momentum 0.01.
- timm: eps 1e-5, its `tf_*` ports (TF-trained, asked for with padding="same") eps 1e-3;
  timm keeps PyTorch's momentum 0.1 for both.
- fmb: the official values, eps 1e-3 and the family's momentum (V1 0.01, V2 0.1).
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from fmb.errors import FmbError
from fmb.models.layers import BN_MOMENTUM, DEFAULT_BN_EPS
from fmb.models.partial import LoadReport, fresh_stages, their_stage

_WRAPPER_PREFIXES = ("model.", "module.", "_orig_mod.", "net.")
_TORCHVISION_BIG_V1 = ("efficientnet_b5", "efficientnet_b6", "efficientnet_b7")


@dataclass(frozen=True)
class Origin:
    name: str  # "torchvision" | "timm" | "timm-tf" | "fmb"
    family: str  # "v1" | "v2"
    variant: str | None = None  # needed for torchvision V1, whose B5-B7 differ from B0-B4

    @property
    def bn_eps(self) -> float:
        if self.name == "torchvision":
            return 1e-3 if self.family == "v2" or self.variant in _TORCHVISION_BIG_V1 else 1e-5
        return 1e-5 if self.name == "timm" else DEFAULT_BN_EPS

    @property
    def bn_momentum(self) -> float:
        if self.name == "torchvision":
            return 0.01 if self.variant in _TORCHVISION_BIG_V1 else 0.1
        return 0.1 if self.name in ("timm", "timm-tf") else BN_MOMENTUM[self.family]

    @property
    def bn_kwargs(self) -> dict:
        """`create_model` / EfficientNet keyword arguments for this origin's BatchNorm."""
        return {"bn_eps": self.bn_eps, "bn_momentum": self.bn_momentum}


def _unreadable(path: Path, exc: Exception) -> FmbError:
    """A weights file torch's safe loader (or safetensors) refused, in fmb's words: torch's own
    message advises weights_only=False, which would run whatever code the file holds."""
    expected = ("expected a state dict saved with torch.save(model.state_dict(), path), or a .safetensors, "
                "hf-hub: or torchvision: weights")
    text = str(exc)
    if "Weights only load failed" in text or "weights_only" in text:
        return FmbError(f"cannot read checkpoint {path}: it is not a weights file fmb can read safely (it holds "
                        f"Python objects besides tensors, and loading those could run code); {expected}")
    first = text.strip().splitlines()[0][:120] if text.strip() else ""
    return FmbError(f"cannot read checkpoint {path}: not a weights file fmb can read ({type(exc).__name__}"
                    f"{': ' + first if first else ''}); {expected}")


def read_file(path: Path) -> dict:
    """The state dict in a .safetensors / .pth / .pt / .ckpt file (Lightning's `state_dict` or timm's `model`
    entry taken where the file wraps it)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input problem
            raise _unreadable(path, exc) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise _unreadable(path, exc) from None
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


def detect_origin(state: dict, family: str, padding: str, variant: str | None = None) -> Origin:
    keys = list(state)
    if any(k.startswith("features.0.0.") for k in keys):
        return Origin("torchvision", family, variant)
    if "conv_stem.weight" in state:
        if any(".se.conv_reduce." in k for k in keys):
            # timm's tf_* ports keep TF's eps and need TF "same" padding; asking for
            # padding="same" is how the user says the weights are TF-origin.
            return Origin("timm-tf" if padding == "same" else "timm", family, variant)
        return Origin("fmb", family, variant)
    raise FmbError(
        f"checkpoint matches no known layout (torchvision efficientnet*, timm efficientnet*/"
        f"tf_efficientnet*, fmb); its first keys are {', '.join(sorted(keys)[:3]) or '(none)'}"
    )


def read_checkpoint(pretrained, *, family: str, padding: str = "symmetric",
                    variant: str | None = None) -> tuple[dict, Origin]:
    """(state dict, origin) of a file, `hf-hub:ORG/NAME`, `torchvision:ENUM.NAME`, `True` or a resolved
    `Source` (fmb/models/pretrained.py). A file's origin is told by its keys (and `padding`)."""
    from fmb.models.pretrained import Source, fetch_state, resolve

    source = pretrained if isinstance(pretrained, Source) else resolve(pretrained, variant)
    if source.kind == "file" and not Path(source.spec).is_file():
        raise FmbError(f"pretrained checkpoint not found: {source.spec}; expected a local .pth/.pt/.ckpt/"
                       ".safetensors file, hf-hub:ORG/NAME, torchvision:ENUM.NAME or true")
    if variant and source.variant and source.variant != variant:
        raise FmbError(f"{source.spec} holds {source.variant} weights, not {variant}; expected "
                       f"model.variant={source.variant}, or weights for {variant} (`fmb models --pretrained`)")
    state = _strip_wrappers(fetch_state(source))
    if source.origin is not None:
        return state, Origin(source.origin, family, source.variant or variant)
    return state, detect_origin(state, family, padding, variant)


def _block_layers(block: nn.Module) -> list[tuple[str, ...]]:
    """The block's layers in forward order as torchvision numbers them: (conv, its BN) or (se,)."""
    layers, conv = [], None
    for name, child in block.named_children():
        if isinstance(child, nn.Conv2d):
            conv = name
        elif isinstance(child, nn.BatchNorm2d):
            layers.append((conv, name))
        elif name == "se" and child is not None:
            layers.append((name,))
    return layers


def _torchvision_names(model: nn.Module) -> dict[str, str]:
    """torchvision module prefix → fmb module prefix, for this model's structure."""
    names = {"features.0.0": "conv_stem", "features.0.1": "bn1", "classifier.1": "classifier"}
    head = len(model.blocks) + 1
    names[f"features.{head}.0"], names[f"features.{head}.1"] = "conv_head", "bn2"
    for s, stage in enumerate(model.blocks):
        for b, block in enumerate(stage):
            for j, layer in enumerate(_block_layers(block)):
                prefix = f"features.{s + 1}.{b}.block.{j}"
                if layer == ("se",):
                    names[prefix] = f"blocks.{s}.{b}.se"
                else:
                    names[f"{prefix}.0"] = f"blocks.{s}.{b}.{layer[0]}"
                    names[f"{prefix}.1"] = f"blocks.{s}.{b}.{layer[1]}"
    return names


def to_fmb_names(state: dict, origin: Origin, model: nn.Module) -> dict[str, tuple[str, torch.Tensor]]:
    """fmb key → (the checkpoint's key, tensor). Keys that map nowhere keep their own name."""
    out = {}
    if origin.name == "torchvision":
        names = _torchvision_names(model)
        for key, tensor in state.items():
            module, _, leaf = key.rpartition(".")
            if module.endswith((".fc1", ".fc2")):  # SE: torchvision and fmb share fc1/fc2
                se, _, fc = module.rpartition(".")
                ours = f"{names.get(se, se)}.{fc}.{leaf}"
            else:
                ours = f"{names.get(module, module)}.{leaf}"
            out[ours] = (key, tensor)
    else:
        for key, tensor in state.items():
            ours = re.sub(r"\.se\.conv_reduce\.", ".se.fc1.", re.sub(r"\.se\.conv_expand\.", ".se.fc2.", key))
            out[ours] = (key, tensor)
    return out


def _shape(t) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def load_into(model: nn.Module, state: dict, origin: Origin, source: str = "checkpoint",
              set_bn: bool | None = None) -> LoadReport:
    """Copy `state` into `model` by name; name the first tensor that doesn't fit.

    With `set_bn` every BatchNorm takes the origin's eps and momentum, so the model gives the
    source's logits however it was built; None: unless the model was built with explicit values.
    A classifier of another size (ImageNet weights, 10-class model) keeps its fresh
    initialisation, as timm does for fine-tuning; so do the stages whose block type differs
    from the weights' (another placement, fmb/models/partial.py). Both are said in one warning
    and in the returned report, also kept as `model.pretrained_report`.
    """
    variant = getattr(model, "variant", type(model).__name__)
    origin = replace(origin, variant=origin.variant or getattr(model, "variant", None))
    theirs = to_fmb_names(state, origin, model)
    ours = model.state_dict()
    prefix = f"{source} ({origin.name} layout) does not fit {variant}:"
    classifier_keys = [k for k in ("classifier.weight", "classifier.bias") if k in ours]
    skip_classifier = bool(classifier_keys) and all(k in theirs for k in classifier_keys) and any(
        theirs[k][1].shape != ours[k].shape for k in classifier_keys)
    fresh = fresh_stages(model, state, origin.name)
    report = LoadReport(source, origin.name, len(getattr(model, "blocks", ())), fresh, skip_classifier,
                        (ours["classifier.weight"].shape[0], theirs["classifier.weight"][1].shape[0])
                        if skip_classifier else None)
    mapped = {}
    for key, tensor in ours.items():
        if report.is_fresh(key):
            mapped[key] = tensor
            continue
        if key not in theirs:
            raise FmbError(f"{prefix} ours '{key}' {_shape(tensor)} has no tensor in the checkpoint "
                           "(another variant, placement or width?)")
        their_key, their_tensor = theirs[key]
        if tensor.shape != their_tensor.shape:
            raise FmbError(f"{prefix} first mismatch at tensor ours '{key}' {_shape(tensor)} vs checkpoint "
                           f"'{their_key}' {_shape(their_tensor)} (another variant, placement or width?)")
        mapped[key] = their_tensor
    extra = [their_key for key, (their_key, _) in theirs.items()
             if key not in ours and their_stage(their_key, origin.name) not in fresh]
    if extra:
        raise FmbError(f"{prefix} checkpoint tensor '{sorted(extra)[0]}' has no place in ours "
                       f"({len(extra)} such; another variant or placement?)")
    if fresh or skip_classifier:
        warnings.warn(report.describe(), stacklevel=3)
    # A model built on the meta device (no memory, no init) takes the checkpoint's tensors as
    # they are: the fast way to build a big model only to load weights into it.
    on_meta = any(t.is_meta for t in ours.values())
    if on_meta and (fresh or skip_classifier):
        raise FmbError(f"{prefix} its classifier or a stage starts fresh ({report.describe()}), which a model "
                       "on the meta device cannot keep freshly initialised")
    model.load_state_dict(mapped, strict=True, assign=on_meta)
    if set_bn if set_bn is not None else not getattr(model, "bn_explicit", False):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = origin.bn_eps, origin.bn_momentum
        model.bn_eps, model.bn_momentum = origin.bn_eps, origin.bn_momentum
    model.pretrained_report = report
    return report
