"""What a (distributed) run asks of this machine, checked before Lightning starts any rank.

Lightning accepts `trainer.accelerator=cpu trainer.devices=64` on a 2-core laptop (64
processes) and fails late, inside spawned ranks, on more GPUs than exist or on a rank
whose share of the data is less than one batch. These checks turn those into one line
before the first process is started.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fmb.device import accelerator_type
from fmb.errors import FmbError
from fmb.utils import cpu_cores


@dataclass
class DevicePlan:
    accelerator: str  # cuda | cpu | mps | what Lightning resolves itself (tpu, ...)
    devices: int | None  # per node; None where fmb cannot count them
    num_nodes: int
    sync_bn: bool

    @property
    def world_size(self) -> int | None:
        return None if self.devices is None else self.devices * self.num_nodes


def available_devices(accelerator: str) -> int | None:
    if accelerator == "cuda":
        return torch.cuda.device_count()
    if accelerator == "cpu":
        return cpu_cores()
    if accelerator == "mps":
        return 1
    return None


def _device_ids(devices) -> list[int] | None:
    """GPU ids from a list or "0,1" string; None for a count."""
    if isinstance(devices, str) and "," in devices:
        devices = [d for d in devices.split(",") if d.strip()]
    if isinstance(devices, (list, tuple)):
        try:
            return [int(d) for d in devices]
        except (TypeError, ValueError):
            raise FmbError(f"invalid trainer.devices={devices}; expected a count such as 2, -1 for all, "
                           "or a list of GPU ids such as [0, 1]") from None
    return None


def plan_devices(trainer_cfg, sync_bn: bool | None = None) -> DevicePlan:
    """Accelerator and devices per node the trainer settings ask for, checked against this machine."""
    accelerator = accelerator_type(trainer_cfg.get("accelerator", "auto"))
    devices = trainer_cfg.get("devices", "auto")
    nodes = trainer_cfg.get("num_nodes", 1)
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise FmbError(f"invalid trainer.num_nodes={nodes}; expected a whole number of machines >= 1")
    have = available_devices(accelerator)
    ids = _device_ids(devices)
    if ids is not None:
        wanted = len(ids)
    elif devices == "auto":
        wanted = 1 if accelerator == "cpu" else have  # Lightning's meaning of "auto"
    else:
        try:
            wanted = int(devices)
        except (TypeError, ValueError):
            raise FmbError(f"invalid trainer.devices={devices}; expected a count such as 2, -1 for all, "
                           "or a list of GPU ids such as [0, 1]") from None
        if wanted == -1:
            wanted = have
        elif wanted < 1:
            raise FmbError(f"invalid trainer.devices={devices}; expected a count >= 1, or -1 for all devices")
    if have is not None:
        unit = {"cuda": "CUDA GPU", "cpu": "CPU core", "mps": "MPS device"}[accelerator]
        if have == 0:
            raise FmbError(f"trainer.accelerator={trainer_cfg.get('accelerator')} but this machine has no "
                           f"{unit} (torch.cuda.device_count()=0); expected trainer.accelerator=cpu")
        hint = ("each CPU rank is a process that needs a core; for GPUs set trainer.accelerator=gpu"
                if accelerator == "cpu" else "devices are per node; add machines with trainer.num_nodes")
        units = f"{have} {unit}{'s' if have != 1 else ''}"
        if ids is not None and (max(ids) >= have or min(ids) < 0):
            raise FmbError(f"trainer.devices={devices} names a device this machine lacks: it has {units} "
                           f"(accelerator {accelerator}); expected ids from 0 to {have - 1}")
        if ids is None and wanted > have:
            raise FmbError(f"trainer.devices={devices} but this machine has {units} (accelerator {accelerator}); "
                           f"expected at most {have} ({hint})")
    # torch's SyncBatchNorm runs on CUDA only: on by default there, off elsewhere.
    if sync_bn is None:
        sync_bn = accelerator == "cuda" and (wanted or 1) * nodes > 1
    elif sync_bn and accelerator != "cuda":
        raise FmbError(f"model.sync_bn=true needs CUDA GPUs (torch's SyncBatchNorm has no {accelerator} "
                       "version); expected model.sync_bn=false or null on this accelerator")
    return DevicePlan(accelerator, wanted, nodes, bool(sync_bn))


def check_rank_shares(split_sizes: dict, world_size: int, batch_size: int) -> None:
    """Every rank needs a full training batch and a validation example, or DDP stalls or trains nothing."""
    if world_size <= 1:
        return  # the data module checks the single-process case itself
    train, val = split_sizes.get("train"), split_sizes.get("val")
    if train is not None:
        share = math.ceil(train / world_size)  # Lightning's DistributedSampler pads to equal shares
        if share < batch_size:
            raise FmbError(f"data.batch_size={batch_size} per device is more than each rank's share of the "
                           f"training set ({share} of {train} examples over {world_size} ranks), so every rank "
                           f"would get 0 batches; expected data.batch_size <= {share}, or fewer devices")
    if val is not None and val < world_size:
        raise FmbError(f"the validation set has {val} example(s), fewer than the {world_size} ranks; expected at "
                       "least one per rank (raise data.val_fraction or use fewer devices)")
