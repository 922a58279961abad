"""Offline caches of published weights, as the sources write them, with random weights.

`hub_cache` writes a timm model the way timm publishes it (`save_for_hf`: model.safetensors or
pytorch_model.bin, and config.json with its pretrained_cfg) into huggingface_hub's cache layout
(models--ORG--NAME/{refs,blobs,snapshots}); `torch_hub_cache` writes a torchvision model under
the file name its weights enum downloads to, in torch.hub's cache. Tests point the libraries at
them (HF_HUB_CACHE, TORCH_HOME) and switch the Hub offline.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def randomise_bn_stats(model):
    # fresh BN statistics are 0/1, which would hide a wrong eps or a swapped mean/var
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    return model.eval()


def hub_cache(cache: Path, timm_name: str, *, safetensors: bool = True, config: bool = True,
              data_config: dict | None = None):
    """Publish a random timm `timm_name` ('ARCH.TAG') as `timm/ARCH.TAG` into the Hub cache `cache`
    (`data_config`: the preprocessing timm writes into config.json instead of the tag's own);
    returns the timm model holding the same weights."""
    import timm
    from huggingface_hub.file_download import repo_folder_name
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    model = randomise_bn_stats(timm.create_model(timm_name, pretrained=False))
    staged = cache.parent / f"staged-{timm_name}"
    save_for_hf(model, str(staged), safe_serialization=safetensors, data_config=data_config)
    repo = cache / repo_folder_name(repo_id=f"timm/{timm_name}", repo_type="model")
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot, blobs = repo / "snapshots" / COMMIT, repo / "blobs"
    snapshot.mkdir(parents=True, exist_ok=True)
    blobs.mkdir(exist_ok=True)
    for file in staged.iterdir():
        if file.name == "config.json" and not config:
            continue
        data = file.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))  # as huggingface_hub links them
    return model


def torch_hub_cache(torch_home: Path, weights_name: str):
    """Save a random torchvision model as `weights_name` ('ENUM.NAME') would be downloaded;
    returns the torchvision model holding those weights."""
    import torchvision

    weights = torchvision.models.get_weight(weights_name)
    torch.manual_seed(0)
    builder = weights_name.split("_Weights")[0].lower()
    model = randomise_bn_stats(getattr(torchvision.models, builder)())
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / os.path.basename(weights.url))
    return model
