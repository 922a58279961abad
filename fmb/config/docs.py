"""The schema's one-line docs where users read them: `fmb train --help`, `--print-config`
comments, and `fmb configs` (the presets shipped in fmb/configs)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from fmb.config.schema import TrainConfig, section_docs

SECTION_DOCS = {
    "model": "the network: variant, Fused-MBConv placement, scaling, regularisation",
    "data": "where images come from and how they are split, sized and loaded",
    "aug": "augmentation and label smoothing",
    "optim": "optimizer",
    "sched": "learning-rate schedule (per step)",
    "progressive": "progressive learning: image size and regularisation grow over stages",
    "ema": "exponential moving average of the weights",
    "trainer": "passed to lightning.Trainer as is (max_epochs, accelerator, devices, strategy, precision, ...)",
    "run": "run directory, seed, loggers, progress lines",
}


def _sections() -> list[tuple[str, type | None]]:
    """(name, section dataclass or None for the free-form trainer) — from the annotations, since
    building a section runs its checks (and the model's imports torch)."""
    import typing

    hints = typing.get_type_hints(TrainConfig)
    return [(f.name, hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else None)
            for f in dataclasses.fields(TrainConfig)]


def _default_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return str(value).replace("'", "") if value else ("[]" if isinstance(value, list) else "{}")
    return str(value)


def settings_rows() -> list[tuple[str, str, str, str]]:
    """(section, key, default, doc) for every schema key; the trainer section as one row."""
    rows = []
    for name, cls in _sections():
        if cls is None:
            rows.append((name, f"{name}.*", "", SECTION_DOCS.get(name, "")))
            continue
        docs = section_docs(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
            rows.append((name, f"{name}.{f.name}", _default_text(default), docs.get(f.name, "")))
    return rows


def print_settings_help(console) -> None:
    """The config sections and keys with their defaults and docs, for `fmb train --help`."""
    from rich import box
    from rich.table import Table

    table = Table(title="Settings: key=value after the options, over the -c files (default: the front door, "
                        "experiment/digits_v2s) over these schema defaults",
                  box=box.SIMPLE_HEAD, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("key", no_wrap=True, style="cyan")
    table.add_column("default", overflow="fold", max_width=24)
    table.add_column("what it does")
    last = None
    for section, key, default, doc in settings_rows():
        if section != last:
            table.add_row(f"[bold]{section}[/]", "", f"[bold]{SECTION_DOCS.get(section, '')}[/]")
            last = section
        table.add_row(f"  {key}", default, doc)
    console.print(table)
    console.print("Presets (`fmb configs` lists them): fmb train -c cifar10_v2s   |   data=NAME swaps the data "
                  "section for fmb/configs/data/NAME.yaml   |   --print-config shows the result with these docs.")


def commented_yaml(cfg) -> str:
    """`to_yaml(cfg)` with each key's doc as a `# comment` (and each section's above it); no
    trailing spaces, still valid YAML that loads back to the same config."""
    from fmb.config import to_yaml

    docs = {name: (section_docs(cls) if cls else {}) for name, cls in _sections()}
    lines = to_yaml(cfg).rstrip("\n").split("\n")
    out, section = [], None
    width = min(56, max((len(line) for line in lines if line.startswith("  ") and not line.startswith("   ")),
                        default=0))
    for line in lines:
        stripped = line.rstrip()
        if stripped and not stripped.startswith((" ", "-")) and stripped.endswith(":"):
            section = stripped[:-1]
            if out:
                out.append("")
            if SECTION_DOCS.get(section):
                out.append(f"# {SECTION_DOCS[section]}")
            out.append(stripped)
            continue
        doc = None
        if section and line.startswith("  ") and not line.startswith("   ") and not line.startswith("  -"):
            key = line.strip().split(":", 1)[0]
            doc = docs.get(section, {}).get(key)
        out.append(f"{stripped:<{width}}  # {doc}" if doc else stripped)
    return "\n".join(out) + "\n"


def list_presets() -> list[dict]:
    """Every preset under fmb/configs: {name, group, path, about} (about = its first comment line)."""
    from fmb.config import CONFIG_DIR

    presets = []
    for path in sorted(Path(CONFIG_DIR).glob("*/*.yaml")):
        block = []  # the file's first comment block, cut to its first sentence
        for line in path.read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if not text.startswith("#"):
                if block or text:
                    break
                continue
            block.append(text.lstrip("#").strip())
        about = " ".join(block)
        about = about.split(". ")[0].rstrip(".")
        about = about if len(about) <= 100 else about[:99].rsplit(" ", 1)[0] + " ..."
        presets.append({"name": path.stem, "group": path.parent.name, "path": str(path), "about": about})
    return presets
