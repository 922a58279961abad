"""Checks of the run section and of config text that the schema's types cannot express:
names that become folder names, seeds in the range the generators take, and YAML that is
small enough and free of environment look-ups before OmegaConf sees it."""
from __future__ import annotations

import re

from fmb.errors import FmbError

MAX_NAME_BYTES = 200  # a folder name may hold 255 bytes; the rest is room for suffixes (".1", "-from-...")
MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed_everything's limit
MAX_CONFIG_BYTES = 1 << 20  # a config of every key with comments is ~10 kB
MAX_CONFIG_NODES = 100_000  # values after aliases are expanded; a full config has a few hundred
# ${oc.env:VAR} (and the older ${env:VAR}) would copy an environment variable, often a token,
# into config.yaml, the checkpoint's hyperparameters and every logger.
ENV_LOOKUP = re.compile(r"\$\{\s*(oc\.env|env)\s*:")


def check_run_name(name: str | None) -> None:
    """`run.name` becomes one folder under runs/: no separators, no '..', a length the disk takes."""
    if name is None:
        return
    text = str(name)
    if not text.strip() or text.strip() in (".", "..") or any(ch in text for ch in "/\\\0"):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-") or "my-run"
        raise FmbError(f"invalid run.name={text!r}; expected one folder name under runs/ without '/', '\\' or "
                       f"'..', e.g. run.name={safe} (run.dir=PATH chooses the whole directory)")
    if len(text.encode()) > MAX_NAME_BYTES:
        raise FmbError(f"invalid run.name: {len(text.encode())} bytes long; expected at most {MAX_NAME_BYTES} "
                       f"(a folder name), e.g. run.name={text[:40]}")


def check_run_dir(path: str | None) -> None:
    """Each folder of `run.dir` must be a name the disk takes (at most 255 bytes)."""
    if path is None:
        return
    for part in str(path).split("/"):
        if len(part.encode()) > 255:
            raise FmbError(f"invalid run.dir: a folder name of {len(part.encode())} bytes ({part[:30]}...); "
                           "expected folder names of at most 255 bytes")


def check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise FmbError(f"invalid run.seed={seed!r}; expected a whole number from 0 to {MAX_SEED}, e.g. run.seed=0")


def check_no_env_lookup(value, origin: str, key: str = "") -> None:
    """Refuse `${oc.env:...}` anywhere in a config's values: fmb stores the resolved config in
    the run and sends it to the loggers, so an environment variable would be written out where
    others read it."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_no_env_lookup(v, origin, f"{key}.{k}" if key else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_no_env_lookup(v, origin, f"{key}[{i}]")
    elif isinstance(value, str) and ENV_LOOKUP.search(value):
        raise FmbError(f"{key or 'a value'} in {origin} reads an environment variable ({value}); fmb does not "
                       "resolve ${oc.env:...} because the value would be stored in config.yaml and sent to the "
                       "loggers; expected the value itself, e.g. as a key=value override")


def check_file_size(size: int, origin: str) -> None:
    """Refuse a file too big to be a config before reading it."""
    if size > MAX_CONFIG_BYTES:
        raise FmbError(f"config file {origin} is {size / 2**20:.1f} MiB; expected a YAML config of "
                       f"at most {MAX_CONFIG_BYTES // 2**20} MiB")


def check_yaml_size(node, origin: str) -> None:
    """Refuse YAML whose aliases expand to more values than a config holds (a 'billion laughs'
    file: a few lines that OmegaConf would copy into gigabytes). `node` is yaml's composed
    graph, where an alias is the same node object, not a copy."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def expanded(n) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise FmbError(f"{origin} holds an alias inside its own anchor (a recursive value); "
                           "expected plain nested sections")
        open_nodes.add(key)
        if isinstance(n.value, list):
            children = [c for item in n.value for c in (item if isinstance(item, tuple) else (item,))]
            total = 1 + sum(expanded(c) for c in children)
        else:
            total = 1
        open_nodes.discard(key)
        sizes[key] = total
        if total > MAX_CONFIG_NODES:
            raise FmbError(f"{origin} expands to more than {MAX_CONFIG_NODES:,} values through its "
                           "aliases (&anchor / *alias); expected a config of plain sections")
        return total

    if node is not None:
        expanded(node)
