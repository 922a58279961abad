"""What `fmb profile` and `fmb models` show: rich tables, JSON, a PNG bar chart (matplotlib Agg).

`run_profile` is `fmb profile` as a library function; `describe_variants` is the table
behind `fmb models`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from rich import box
from rich.markup import escape
from rich.table import Table

from fmb.errors import FmbError
from fmb.models import create_model, get_variant
from fmb.profiling.measure import count_macs, count_params
from fmb.profiling.profile import profile_model
from fmb.utils import atomic_write_text


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


def _ms(v):
    return "-" if v is None else f"{v:.2f}"


def _spread(s: dict) -> str:
    """The IQR from 4 timed runs on; below that the range (or nothing to spread)."""
    if s["p25_ms"] is not None:
        return f"IQR {s['p25_ms']:.1f}-{s['p75_ms']:.1f}"
    return f"range {s['min_ms']:.1f}-{s['max_ms']:.1f} of {s['iters']}" if s["iters"] > 1 else "1 run"


def summary_table(r: dict) -> Table:
    t = Table(title=f"{r['variant']} [{r['blocks']}] @ {r['resolution']}px, batch {r['batch_size']}, "
                    f"{r['device']} {r['precision']}{' fast' if r['fast'] else ''}", box=box.SIMPLE_HEAD)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("params", f"{r['params']:,}")
    t.add_row("GMACs / image", f"{r['macs'] / 1e9:.3f}")
    for key, label, spread in (("infer_latency_ms", "infer ms / batch (median)", "infer_latency_spread_ms"),
                               ("train_step_ms", "train step ms (median)", "train_step_spread_ms")):
        if r[key] is not None:
            t.add_row(label, f"{r[key]:.1f}  " + escape(f"[{_spread(r[spread])}]"))
    if r["infer_images_per_sec"] is not None:
        t.add_row("infer img/s", f"{r['infer_images_per_sec']:.1f}")
    if r["train_images_per_sec"] is not None:
        t.add_row("train img/s", f"{r['train_images_per_sec']:.1f}")
    if r["peak_train_memory_mb"] is not None:
        t.add_row("peak train memory MB", f"{r['peak_train_memory_mb']:.1f}")
    return t


def stages_table(rows: list[dict]) -> Table:
    t = Table(title="per stage (0 = stem)", box=box.SIMPLE_HEAD)
    for col in ("stage", "block", "params", "MMACs", "forward ms", "activation MB"):
        t.add_column(col, justify="left" if col == "block" else "right")
    for s in rows:
        t.add_row(str(s["stage"]), s["block"], f"{s['params']:,}", f"{s['macs'] / 1e6:.1f}",
                  _ms(s["forward_ms"]), f"{s['activation_mb']:.1f}")
    return t


def compare_table(rows: list[dict]) -> Table:
    t = Table(title="MBConv (M) vs Fused (F) per stage; speedup = M ms / F ms", box=box.SIMPLE_HEAD)
    for col in ("stage", "HxW", "kparams M/F", "MMACs M/F", "infer ms M/F", "train ms M/F", "speedup", "verdict"):
        t.add_column(col, justify="right" if col != "verdict" else "left")
    for r in rows:
        sp = "/".join("-" if r[f"fused_speedup_{m}"] is None else f"{r[f'fused_speedup_{m}']:.2f}"
                      for m in ("infer", "train"))
        t.add_row(str(r["stage"]), str(r["input_hw"]),
                  f"{r['mbconv_params'] / 1e3:.0f}/{r['fused_params'] / 1e3:.0f}",
                  f"{r['mbconv_macs'] / 1e6:.1f}/{r['fused_macs'] / 1e6:.1f}",
                  f"{_ms(r['mbconv_infer_ms'])}/{_ms(r['fused_infer_ms'])}",
                  f"{_ms(r['mbconv_train_ms'])}/{_ms(r['fused_train_ms'])}", sp, r["verdict"])
    return t


def plot(result: dict, path: Path) -> None:
    """Bar chart: MBConv vs Fused ms per stage (with --compare-blocks), else forward ms per stage."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    rows = result.get("compare_blocks")
    if rows:
        series = [(f"{b} {m}", [r[f"{b}_{m}_ms"] or 0 for r in rows]) for m in ("infer", "train")
                  for b in ("mbconv", "fused") if rows[0][f"{b}_{m}_ms"] is not None]
        labels = [str(r["stage"]) for r in rows]
        ax.set_title("MBConv vs Fused-MBConv per stage")
    else:
        stages = result["stages"]
        series = [("forward", [s["forward_ms"] or 0 for s in stages])]
        labels = [str(s["stage"]) for s in stages]
        ax.set_title("forward time per stage")
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series):
        ax.bar([j + i * width for j in range(len(labels))], values, width, label=name)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(labels))], labels)
    ax.set_xlabel("stage")
    ax.set_ylabel("ms per batch")
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_profile(*, variant, blocks, sets, width_mult, depth_mult, num_classes, resolution, batch_size, mode,
                device, precision, channels_last, compile, fast, compare_blocks, warmup, iters,
                json_path, plot_path, console) -> dict:
    model_kwargs = {"name": variant, "blocks": blocks, "stage_overrides": parse_stage_sets(sets),
                    "width_mult": width_mult, "depth_mult": depth_mult, "num_classes": num_classes}
    check_profile_fits(model_kwargs, resolution, batch_size, mode, device, precision)
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
        atomic_write_text(Path(json_path), json.dumps(result, indent=2) + "\n")
    return result


def check_profile_fits(model_kwargs: dict, resolution: int, batch_size: int, mode: str, device: str,
                       precision: str) -> None:
    """Refuse, before building anything, a shape whose activations exceed free memory (a
    training step when `mode` times one, else an inference batch): one line with what fits,
    not a process the kernel kills at tens of GiB."""
    from fmb.training.memory import check_fits, model_activation_bytes

    on_gpu = str(device).startswith("cuda")
    if resolution < 16 or batch_size < 1 or (on_gpu and not torch.cuda.is_available()):
        return  # profile_model says what is wrong with these
    training = mode != "infer"
    need = model_activation_bytes(model_kwargs["name"], resolution, batch_size, blocks=model_kwargs["blocks"],
                                  stage_overrides=model_kwargs["stage_overrides"] or None,
                                  width_mult=model_kwargs["width_mult"], depth_mult=model_kwargs["depth_mult"],
                                  training=training, bytes_per_value=4 if precision == "fp32" else 2)
    check_fits(None, resolution, batch_size, "cuda" if on_gpu else "cpu",
               training=training, size_key="--resolution", batch_key="--batch-size", need=need)


def describe_variant(name: str, num_classes: int = 1000) -> dict:
    """One variant's row, counted on the model itself (about a second per variant)."""
    variant = get_variant(name)
    with torch.device("meta"):  # shapes only: the whole table costs about a second
        model = create_model(name, num_classes=num_classes)
    return {
        "name": name,
        "family": variant.family,
        "params": count_params(model),
        "gmacs": round(count_macs(model, variant.eval_size) / 1e9, 3),
        "placement": variant.placement,
        "train_size": variant.train_size,
        "eval_size": variant.eval_size,
        "drop_rate": variant.drop_rate,
    }


def describe_variants(names=None) -> list[dict]:
    """The `fmb models` rows, from the table fmb/models/variant_table.py keeps (checked against
    `describe_variant` for every variant by the tests)."""
    from fmb.models.variant_table import describe_variants as tabulated

    return tabulated(names)
