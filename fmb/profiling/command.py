"""`fmb profile` as a library function: parse --set, profile, print tables, write JSON / plot."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from fmb.errors import FmbError
from fmb.profiling.profile import profile_model
from fmb.profiling.report import compare_table, plot, stages_table, summary_table


def parse_stage_sets(items) -> dict | None:
    """['stage.4.kernel_size=5', ...] → {4: {'kernel_size': 5}}; values parsed as YAML scalars.

    Stage numbers and field names are validated by create_model's apply_overrides."""
    overrides: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 3 or parts[0] != "stage":
            raise FmbError(f"invalid --set '{item}': expected stage.N.field=value, e.g. stage.4.kernel_size=5")
        try:
            number = int(parts[1])
        except ValueError:
            raise FmbError(f"invalid --set '{item}': stage '{parts[1]}' is not a number") from None
        overrides.setdefault(number, {})[parts[2]] = yaml.safe_load(value)
    return overrides or None


def run_profile(*, variant, blocks, sets, width_mult, depth_mult, num_classes, resolution, batch_size, mode,
                device, precision, channels_last, compile, fast, compare_blocks, warmup, iters,
                json_path, plot_path, console) -> dict:
    model_kwargs = {"name": variant, "blocks": blocks, "stage_overrides": parse_stage_sets(sets),
                    "width_mult": width_mult, "depth_mult": depth_mult, "num_classes": num_classes}
    result = profile_model(model_kwargs, resolution=resolution, batch_size=batch_size, device=device,
                           precision=precision, mode=mode, channels_last=channels_last, compile=compile,
                           fast=fast, warmup=warmup, iters=iters, per_stage=True, compare_blocks=compare_blocks)
    for note in result["notes"]:
        console.print(f"[yellow]note:[/] {note}")
    console.print(summary_table(result))
    console.print(stages_table(result["stages"]))
    if result["compare_blocks"]:
        console.print(compare_table(result["compare_blocks"]))
    if plot_path:
        plot(result, plot_path)
    if json_path:
        from fmb.utils import atomic_write_text
        atomic_write_text(Path(json_path), json.dumps(result, indent=2) + "\n")
    return result
