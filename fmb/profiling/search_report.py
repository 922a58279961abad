"""What `fmb profile --search` prints and writes: the validation, the fronts, JSON, CSV, a plot."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from rich import box
from rich.table import Table

from fmb.profiling.search import search_placements
from fmb.utils import atomic_write_text

PAPER_MARK = "◆"


def validation_table(result: dict) -> Table:
    t = Table(title=f"prediction checked end to end on {len(result['validated'])} placements "
                    f"(img/s, error = predicted / measured - 1)", box=box.SIMPLE_HEAD)
    for col in ("placement", "chosen as", "train pred", "train meas", "train err", "infer pred", "infer meas",
                "infer err"):
        t.add_column(col, justify="left" if col in ("placement", "chosen as") else "right")
    for r in result["validated"]:
        t.add_row(r["placement"], r["why"], *(f"{r[f'{w}_{k}_images_per_sec']:.1f}" if w else f"{r[f'error_{k}']:+.1%}"
                                              for k in ("train", "infer") for w in ("predicted", "measured", None)))
    return t


def front_table(result: dict, cost: str, kind: str) -> Table:
    members = result["fronts"][f"{cost}_{kind}"]
    rows = {p["placement"]: p for p in result["predictions"]}
    t = Table(title=f"front: {cost} vs predicted {kind} img/s ({len(members)} of {len(rows)} placements; "
                    f"{PAPER_MARK} = the paper's {result['paper_placement']})", box=box.SIMPLE_HEAD)
    for col in ("placement", "params", "MMACs", f"{kind} img/s"):
        t.add_column(col, justify="left" if col == "placement" else "right")
    for p in members:
        r = rows[p]
        mark = f" {PAPER_MARK}" if p == result["paper_placement"] else ""
        t.add_row(p + mark, f"{r['params']:,}", f"{r['macs'] / 1e6:.1f}", f"{r[f'{kind}_images_per_sec']:.1f}")
    if result["paper_placement"] not in members:
        r = rows[result["paper_placement"]]
        t.add_row(f"{PAPER_MARK} {r['placement']} (not on the front)", f"{r['params']:,}", f"{r['macs'] / 1e6:.1f}",
                  f"{r[f'{kind}_images_per_sec']:.1f}", style="dim")
    return t


def summary_lines(result: dict) -> list[str]:
    tm, err = result["timing_s"], result["median_abs_error"]
    lines = [f"{result['variant']} @ {result['resolution']} px, batch {result['batch_size']}, {result['device']} "
             f"{result['precision']}: {len(result['predictions'])} placements predicted from "
             f"{2 * len(result['table']['stages']) + 2} measured parts in {tm['search']:.1f} s"]
    if err["train"] is not None:
        lines.append(f"median |error| over {len(result['validated'])} validated placements: train "
                     f"{err['train']:.1%}, inference {err['infer']:.1%}")
        lines.append(f"measuring all {len(result['predictions'])} end to end would take {tm['all_end_to_end']:.0f} s "
                     f"({tm['per_placement']:.1f} s each, as the validation measured them); the search took "
                     f"{tm['search_fraction']:.1%} of that (+{tm['validate']:.0f} s validating)")
    return lines + [f"note: {n}" for n in result["notes"]]


def to_csv(result: dict) -> str:
    """One row per placement: predicted figures, fronts, and measured ones where validated."""
    measured = {r["placement"]: r for r in result["validated"]}
    cols = ["placement", "paper", "params", "macs", "predicted_train_images_per_sec",
            "predicted_infer_images_per_sec", "measured_train_images_per_sec", "measured_infer_images_per_sec",
            "error_train", "error_infer", "fronts"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    writer.writeheader()
    for p in result["predictions"]:
        m = measured.get(p["placement"], {})
        writer.writerow({"placement": p["placement"], "paper": p["placement"] == result["paper_placement"],
                         "params": p["params"], "macs": p["macs"],
                         "predicted_train_images_per_sec": f"{p['train_images_per_sec']:.2f}",
                         "predicted_infer_images_per_sec": f"{p['infer_images_per_sec']:.2f}",
                         **{k: (f"{m[k]:.4g}" if k in m else "") for k in cols[6:10]},
                         "fronts": " ".join(p["fronts"])})
    return buf.getvalue()


def plot(result: dict, path: Path, cost: str = "params") -> None:
    """Two panels (train, inference): every placement's cost vs predicted img/s, the front as
    a line, validated placements' measured img/s, the paper's placement marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, unit = (1e6, "M params") if cost == "params" else (1e6, "MMACs per image")
    rows = {p["placement"]: p for p in result["predictions"]}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, kind in zip(axes, ("train", "infer"), strict=True):
        key = f"{kind}_images_per_sec"
        ax.scatter([p[cost] / scale for p in rows.values()], [p[key] for p in rows.values()], s=12, c="0.6",
                   label="predicted")
        members = [rows[p] for p in result["fronts"][f"{cost}_{kind}"]]
        ax.plot([p[cost] / scale for p in members], [p[key] for p in members], "-o", ms=4, c="tab:blue",
                label="front (predicted)")
        # the check's own prediction (parts timed in the same rounds) next to what was measured:
        # the search's prediction above was taken minutes earlier, under another load
        checked = result["validated"]
        xs = [rows[r["placement"]][cost] / scale for r in checked]
        ax.scatter(xs, [r[f"predicted_{key}"] for r in checked], marker="o", s=30, facecolors="none",
                   edgecolors="tab:orange", label="checked: predicted in the same rounds")
        ax.scatter(xs, [r[f"measured_{key}"] for r in checked], marker="x", c="tab:orange",
                   label="checked: measured")
        paper = rows[result["paper_placement"]]
        ax.scatter([paper[cost] / scale], [paper[key]], marker="D", s=60, facecolors="none", edgecolors="tab:red",
                   label=f"paper {paper['placement']}")
        for p in members:
            ax.annotate(p["placement"], (p[cost] / scale, p[key]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=unit, ylabel=f"{'train' if kind == 'train' else 'inference'} img/s",
               title=f"{result['variant']} {result['resolution']} px, {result['device']} {result['precision']}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_search(model_kwargs: dict, *, cost: str, json_path, csv_path, plot_path, console, **options) -> dict:
    """`fmb profile --search` as a library function: search, print, write."""
    result = search_placements(model_kwargs, **options)
    if result["validated"]:
        console.print(validation_table(result))
    for kind in ("train", "infer"):
        console.print(front_table(result, cost, kind))
    for line in summary_lines(result):
        console.print(line, highlight=False)
    if json_path:
        atomic_write_text(Path(json_path), json.dumps(result, indent=2) + "\n")
    if csv_path:
        atomic_write_text(Path(csv_path), to_csv(result))
    if plot_path:
        plot(result, plot_path, cost)
    return result


COSTS = ("params", "macs")


def run_search_command(*, variant, blocks, sets, width_mult, depth_mult, num_classes, mode, compile,
                       compare_blocks, front_cost, **options) -> dict:
    """The flags of `fmb profile` that --search takes, checked; then `run_search`."""
    from fmb.errors import FmbError, choice_error
    from fmb.models import get_variant
    from fmb.profiling.report import parse_stage_sets

    for flag, given, why in (("--blocks", blocks, "it predicts every placement; the paper's is marked"),
                             ("--compile", compile, "compiled parts do not add up to a compiled network"),
                             ("--compare-blocks", compare_blocks, "it measures every stage both ways already"),
                             ("--mode", mode != "both", "it measures training and inference")):
        if given:
            raise FmbError(f"{flag} does not go with --search ({why}); drop {flag}")
    if front_cost not in COSTS:
        raise choice_error("--front-cost", front_cost, COSTS)
    get_variant(variant)
    model_kwargs = {"name": variant, "stage_overrides": parse_stage_sets(sets), "width_mult": width_mult,
                    "depth_mult": depth_mult, "num_classes": num_classes}
    return run_search(model_kwargs, cost=front_cost, **options)
