"""Reading a run's checkpoints safely, and what they say about where a resume starts."""
from __future__ import annotations

from pathlib import Path

import torch

from fmb.errors import FmbError, describe_os_error


def read_checkpoint_file(path: Path, *, mmap: bool = False) -> dict:
    """A .ckpt loaded safely (tensors and plain data only), or one line saying what the file is."""
    path = Path(path)
    if not path.is_file():
        raise FmbError(f"checkpoint not found: {path}; expected a .ckpt from a run's checkpoints/ directory")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        size = path.stat().st_size
    except OSError as exc:
        raise FmbError(f"cannot read checkpoint {path}: {describe_os_error(exc)}") from None
    expected = "expected a .ckpt written by fmb train"
    if size == 0:
        raise FmbError(f"checkpoint {path} is empty (0 bytes; a copy or save that never finished?); {expected}")
    if head != b"PK\x03\x04" and not head.startswith(b"\x80"):  # torch's zip format, or a legacy pickle
        kind = "text" if _looks_like_text(path) else "unknown binary data"
        raise FmbError(f"{path} is not a checkpoint (it holds {kind}, not a torch archive); {expected}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and head == b"PK\x03\x04")
    except Exception as exc:  # noqa: BLE001 - whatever torch says, the file is the user's input problem
        text = str(exc)
        if "Weights only load failed" in text or "weights_only" in text:
            raise FmbError(f"{path} holds Python objects besides tensors and plain data, which fmb does not load "
                           f"(loading them could run code); {expected}") from None
        raise FmbError(f"checkpoint {path} is truncated or corrupt ({size:,} bytes; "
                       f"{text.strip().splitlines()[0][:120] if text.strip() else type(exc).__name__}); {expected}"
                       ) from None
    if not isinstance(state, dict):
        raise FmbError(f"{path} holds a {type(state).__name__}, not a checkpoint; {expected}")
    return state


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        sample = f.read(512)
    try:
        sample.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def check_resumable(state: dict, path: Path, module) -> None:
    """A checkpoint Lightning can resume and whose weights fit this run's model, checked
    before anything is written (a mismatch would otherwise fail after the run began)."""
    missing = [key for key in ("state_dict", "loops", "optimizer_states", "epoch") if key not in state]
    if missing:
        raise FmbError(f"cannot resume from {path}: it lacks {', '.join(missing)}, so it is not a training "
                       "checkpoint; expected checkpoints/last.ckpt (or best-*.ckpt) written by fmb train")
    own = module.state_dict()
    theirs = state["state_dict"]
    unknown = [k for k in theirs if k not in own]
    absent = [k for k in own if k not in theirs]
    wrong = [k for k in theirs if k in own and tuple(theirs[k].shape) != tuple(own[k].shape)]
    if unknown or absent or wrong:
        key = (wrong or unknown or absent)[0]
        detail = (f"{key} has shape {list(theirs[key].shape)}, the run's model {list(own[key].shape)}" if wrong
                  else f"{len(unknown)} unexpected and {len(absent)} missing weights, e.g. {key}")
        raise FmbError(f"cannot resume from {path}: its weights are not this run's model ({detail}); expected "
                       "a checkpoint of the run in this directory, with the run's model settings")


def checkpoint_step(path: Path) -> int:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(state.get("global_step", 0))


def resume_epoch(state: dict) -> int:
    """The epoch a resumed run starts in: the epochs whose training the checkpoint holds
    (an end-of-epoch checkpoint of epoch 0 has processed 1; one saved mid-epoch 1 by a
    SIGTERM has processed 1 too, and that epoch is trained again)."""
    progress = state.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    return int(progress.get("processed", state.get("epoch", 0)))
