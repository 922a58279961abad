"""Which devices each concurrent trial gets on this machine.

GPUs are dealt out in disjoint groups of `ablate.devices_per_trial` through
CUDA_VISIBLE_DEVICES, so a trial asking for N devices (a DDP run when N > 1) sees exactly its
own N. On CPU the cores are divided: each of the `ablate.jobs` concurrent trials gets
cores // jobs threads (OMP/MKL and torch read these variables at start-up), so two trials
never fight over the same cores.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from fmb.errors import FmbError
from fmb.utils import cpu_model

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class Slot:
    label: str                       # "cuda 0,1" / "cpu ×1 thread"
    env: dict = field(default_factory=dict)


def visible_gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][: torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _trainer_devices(study) -> int | None:
    value = (study.resolved.get("trainer") or {}).get("devices")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def uses_gpus(study) -> bool:
    accelerator = str((study.resolved.get("trainer") or {}).get("accelerator", "auto"))
    return accelerator in ("auto", "gpu", "cuda") and bool(visible_gpus())


def devices_per_trial(study) -> int:
    asked, trainer = study.ablate["devices_per_trial"], _trainer_devices(study)
    if asked and trainer and asked != trainer:
        raise FmbError(f"ablate.devices_per_trial={asked} but trainer.devices={trainer}; each trial trains on its "
                       f"own devices, so set them equal (or trainer.devices=auto)")
    return asked or trainer or 1


def plan_slots(study, pending: int, cpu_count: int | None = None) -> list[Slot]:
    """One Slot per trial that may run at once (at least one)."""
    jobs = study.ablate["jobs"]
    cpu_count = cpu_count or os.cpu_count() or 1
    if uses_gpus(study):
        gpus, per = visible_gpus(), devices_per_trial(study)
        if per > len(gpus):
            raise FmbError(f"ablate.devices_per_trial={per} but only {len(gpus)} GPU(s) are visible; "
                           f"expected at most {len(gpus)}")
        fit = len(gpus) // per
        if jobs and jobs > fit:
            raise FmbError(f"ablate.jobs={jobs} trials × {per} GPU(s) each needs {jobs * per} GPUs but {len(gpus)} "
                           f"are visible; expected ablate.jobs <= {fit} (or fewer devices per trial)")
        n = max(1, min(jobs or fit, pending or 1))
        threads = max(1, cpu_count // n)
        ports = _free_ports(n) if per > 1 else [None] * n  # DDP trials side by side: one rendezvous port each
        return [Slot(f"cuda {','.join(gpus[i * per:(i + 1) * per])}",
                     {"CUDA_VISIBLE_DEVICES": ",".join(gpus[i * per:(i + 1) * per]),
                      **({"MASTER_PORT": str(ports[i])} if ports[i] else {}),
                      **({v: str(threads) for v in THREAD_VARS} if n > 1 else {})}) for i in range(n)]
    n = max(1, min(jobs or 1, pending or 1))
    if n == 1:
        return [Slot("cpu")]
    threads = max(1, cpu_count // n)
    return [Slot(f"cpu ×{threads} thread{'s' if threads > 1 else ''}", {v: str(threads) for v in THREAD_VARS})
            for _ in range(n)]


def _free_ports(n: int) -> list[int]:
    """n distinct ports free right now (held open together, so the kernel cannot repeat one)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def describe_hardware(env: dict | None = None, gpu: bool = True) -> str:
    """'2× NVIDIA H100 80GB HBM3' for a trial on GPUs, 'AMD EPYC 7B13 (2 cores)' on CPU."""
    env = env if env is not None else dict(os.environ)
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if gpu and listed != "":
        try:
            import torch

            if torch.cuda.is_available():
                ours = [d for d in (listed or "").split(",") if d] or visible_gpus()
                position = visible_gpus().index(ours[0]) if ours[0] in visible_gpus() else 0
                return f"{len(ours)}× {torch.cuda.get_device_name(position)}"
        except Exception:
            pass
    return f"{cpu_model()} ({os.cpu_count()} cores)"
