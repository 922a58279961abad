"""Turn a `data.source` string into `datasets` splits: hub id, local folder or files,
a save_to_disk directory, or the built-in `digits`.

Everything goes through `datasets` (load_dataset / load_from_disk), so a local folder,
parquet files and a hub dataset all arrive as the same thing: a dict of split name →
`datasets.Dataset` (or `datasets.IterableDataset` when streaming).
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import datasets
import numpy as np

from fmb.errors import FmbError

BUILTIN_SOURCES = ("digits", "synthetic")
FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
DIGITS_VERSION = "digits-v1"
DIGITS_FILE = Path(__file__).with_name("digits.npz")  # images (1797, 8, 8) uint8 0..16, labels
MAX_STREAM_SHARDS = 64  # shards made from an on-disk set when it is streamed (caps loader workers)


def default_cache_dir() -> Path:
    return Path(os.environ.get("FMB_CACHE") or Path.home() / ".cache" / "fmb")


def digits_dataset(cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """The 1,797 8×8 handwritten digits (UCI "Optical Recognition of Handwritten Digits", the
    set scikit-learn's `load_digits` returns; pixels 0..16) as a `datasets.Dataset` with an
    Image and a ClassLabel column. They ship with fmb as fmb/data/digits.npz (45 KB), so no
    scikit-learn is needed; saved once under the cache dir so later runs just load it."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / DIGITS_VERSION
    if not (target / "dataset_info.json").exists():
        from PIL import Image as PILImage

        with np.load(DIGITS_FILE) as digits:
            images, labels = digits["images"], digits["labels"]
        pixels = np.clip(np.round(images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        features = datasets.Features({"image": datasets.Image(),
                                      "label": datasets.ClassLabel(names=[str(d) for d in range(10)])})
        ds = datasets.Dataset.from_dict(
            {"image": [PILImage.fromarray(p, "L") for p in pixels], "label": labels.tolist()},
            features=features)
        root.mkdir(parents=True, exist_ok=True)
        # build next to the target and rename, so a crash never leaves a half-written cache
        tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root))
        try:
            ds.save_to_disk(str(tmp / "ds"))
            try:
                os.replace(tmp / "ds", target)
            except OSError:
                if not (target / "dataset_info.json").exists():  # another process did not win the race
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(target))


def _is_save_to_disk_dir(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (
        (path / "state.json").exists() and (path / "dataset_info.json").exists())


def _empty_split(split: str, source: str) -> FmbError:
    return FmbError(f"split '{split}' of data.source '{source}' is empty; expected examples in every split "
                    f"(remove the empty one or choose another with data.train_split/val_split/test_split)")


def _check_saved_splits(path: Path, source: str) -> None:
    """`datasets` cannot load a saved split with no rows; say which split it is."""
    names = json.loads((path / "dataset_dict.json").read_text())["splits"] \
        if (path / "dataset_dict.json").exists() else [None]
    for name in names:
        state = path / name / "state.json" if name else path / "state.json"
        if state.exists() and not json.loads(state.read_text()).get("_data_files"):
            raise _empty_split(name or "train", source)


def _looks_like_path(source: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; anything else shaped like a path is one."""
    return (source.startswith(("/", ".", "~")) or source.count("/") >= 2 or "\\" in source
            or any(ch in source for ch in "*?[") or Path(source).suffix.lower() in FILE_BUILDERS)


def _as_splits(loaded) -> dict:
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return dict(loaded)
    return {"train": loaded}


def _stream(splits: dict) -> dict:
    return {name: ds.to_iterable_dataset(num_shards=max(1, min(len(ds), MAX_STREAM_SHARDS)))
            for name, ds in splits.items()}


def _load_files(files: list[str], source: str, cache_dir, streaming: bool) -> dict:
    suffixes = {Path(f).suffix.lower() for f in files}
    builders = {FILE_BUILDERS.get(s) for s in suffixes}
    if None in builders or len(builders) != 1:
        raise FmbError(f"data.source '{source}' matches files of type {', '.join(sorted(suffixes))}; expected "
                       f"one kind of {', '.join(FILE_BUILDERS)} files, an image folder or a save_to_disk directory")
    try:
        return _as_splits(datasets.load_dataset(builders.pop(), data_files={"train": files},
                                                cache_dir=cache_dir, streaming=streaming))
    except FmbError:
        raise
    except Exception as exc:
        raise FmbError(f"could not read data.source '{source}': {_first_line(exc)}; expected readable "
                       f"{', '.join(FILE_BUILDERS)} files") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_local(source: str, cache_dir=None, streaming: bool = False) -> dict:
    """A local image folder (class per sub-folder), data files, a glob, or a save_to_disk dir."""
    expanded = os.path.expanduser(source)
    if any(ch in expanded for ch in "*?["):
        files = sorted(glob.glob(expanded, recursive=True))
        if not files:
            raise FmbError(f"data.source '{source}' matches no files; expected a glob that matches "
                           f"{', '.join(FILE_BUILDERS)} files")
        return _load_files(files, source, cache_dir, streaming)
    path = Path(expanded)
    if not path.exists():
        parent = path.parent if path.parent.exists() else None
        hint = ""
        if parent is not None:
            from fmb.errors import nearest
            hint = nearest(path.name, [p.name for p in parent.iterdir()])
        raise FmbError(f"data.source '{source}' does not exist; expected an image folder, data files, a "
                       f"save_to_disk directory, a hub id, or one of {', '.join(BUILTIN_SOURCES)}{hint}")
    if path.is_file():
        return _load_files([str(path)], source, cache_dir, streaming)
    if _is_save_to_disk_dir(path):
        _check_saved_splits(path, source)
        try:
            splits = _as_splits(datasets.load_from_disk(str(path)))
        except Exception as exc:
            raise FmbError(f"could not load the save_to_disk directory data.source '{source}' "
                           f"({_first_line(exc)}); expected a directory written by Dataset.save_to_disk "
                           f"with non-empty splits") from exc
        return _stream(splits) if streaming else splits
    try:
        return _as_splits(datasets.load_dataset(str(path), cache_dir=cache_dir, streaming=streaming))
    except FmbError:
        raise
    except Exception as exc:
        empty = re.search(r'Instruction "([^"]+)" corresponds to no data', str(exc))
        if empty:
            raise _empty_split(empty.group(1), source) from exc
        raise FmbError(f"could not load the folder data.source '{source}' ({_first_line(exc)}); expected a "
                       f"folder of images in one sub-folder per class, {', '.join(FILE_BUILDERS)} files, "
                       f"or a save_to_disk directory") from exc


HUB_PROBE_TIMEOUT_S = 3.0


def hub_endpoint() -> tuple[str, int]:
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the hub, so an unreachable hub fails in seconds, not after
    `datasets`' retries."""
    import socket

    try:
        socket.create_connection(hub_endpoint(), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_offline() -> bool:
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    return any(os.environ.get(f, "").lower() in ("1", "true", "yes") for f in flags) or bool(
        getattr(datasets.config, "HF_HUB_OFFLINE", False))


@contextlib.contextmanager
def _cache_only():
    """Load from the local cache only (`datasets` read HF_HUB_OFFLINE when it was imported)."""
    import huggingface_hub.constants as hub_constants

    saved = (getattr(datasets.config, "HF_HUB_OFFLINE", False), hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def load_hub(source: str, name: str | None = None, cache_dir=None, streaming: bool = False) -> dict:
    """A Hugging Face hub dataset (from the local `datasets` cache when offline or when the
    hub cannot be reached)."""
    unreachable = not _hub_offline() and not hub_reachable()
    try:
        with _cache_only() if unreachable else contextlib.nullcontext():
            return _as_splits(datasets.load_dataset(source, name, cache_dir=cache_dir, streaming=streaming))
    except FmbError:
        raise
    except Exception as exc:
        message = str(exc)
        if "Config name is missing" in message or "BuilderConfig" in message:
            raise FmbError(f"hub dataset '{source}' needs a config: {_first_line(exc)}; set data.name") from exc
        offline = (_hub_offline() or "offline" in message.lower() or "connect" in message.lower())
        host, port = hub_endpoint()
        why = ("the hub is offline and it is not in the local cache" if offline else "it was not found")
        if unreachable:
            why = (f"the hub is unreachable (no connection to {host}:{port} within {HUB_PROBE_TIMEOUT_S:g} s) "
                   "and it is not in the local cache")
        raise FmbError(
            f"could not load hub dataset '{source}'" + (f" (config '{name}')" if name else "")
            + f": {why} ({_first_line(exc)}); check the id, or download it where there is network "
            f"and point at a local copy: data.source=/path/to/folder (image folder or parquet files) "
            f"or a directory written by Dataset.save_to_disk") from exc


def load_source(source: str, name: str | None = None, cache_dir=None, streaming: bool = False) -> dict:
    """Split name → Dataset / IterableDataset for any supported `data.source` except
    'synthetic' (which is not a `datasets` set; the datamodule builds it)."""
    if not isinstance(source, str) or not source.strip():
        raise FmbError(f"data.source={source!r} is empty; expected a hub id, a local path, "
                       f"or one of {', '.join(BUILTIN_SOURCES)}")
    source = source.strip()
    if source == "digits":
        splits = {"train": digits_dataset(cache_dir)}
        return _stream(splits) if streaming else splits
    if os.path.exists(os.path.expanduser(source)) or _looks_like_path(source):
        return load_local(source, cache_dir=cache_dir, streaming=streaming)
    return load_hub(source, name, cache_dir=cache_dir, streaming=streaming)
