"""Turn trial records into the paper-style table (EfficientNetV2's Table 3), a CSV and plots.

One row per placement: params, FLOPs and throughput come from the profile (they do not depend
on the seed); top-1 is the mean ± sample std over the seeds that completed. Every column is
also shown relative to the all-MBConv baseline, the comparison the paper makes.
"""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from rich.table import Table

from fmb.ablation.plan import baseline_placement, fused_stages_label
from fmb.utils import atomic_write_text

CSV_FIELDS = ("trial_id", "placement", "fused_stages", "seed", "status", "params", "macs", "flops",
              "infer_images_per_sec", "train_images_per_sec", "val_top1", "best_val_top1", "val_loss",
              "epochs", "global_step", "trained_params", "run_train_images_per_sec", "wall_time_s",
              "duration_s", "run_dir", "error")
PLOT_FILES = {"throughput": "top1_vs_train_throughput.png", "params": "params_vs_top1.png",
              "profile": "throughput_vs_params.png"}


def summarize(placements: list[str], records: dict[str, dict]) -> list[dict]:
    rows = []
    for p in placements:
        recs = [r for r in records.values() if r["placement"] == p]
        done = [r for r in recs if r["status"] == "completed"]
        prof = next((r for r in recs if r.get("params") is not None), {})
        top1 = [100 * r["val_top1"] for r in done if r.get("val_top1") is not None]
        rows.append({
            "placement": p, "fused_stages": fused_stages_label(p),
            "params": prof.get("params"), "macs": prof.get("macs"), "flops": prof.get("flops"),
            "infer_images_per_sec": prof.get("infer_images_per_sec"),
            "train_images_per_sec": prof.get("train_images_per_sec"),
            "top1_mean": statistics.fmean(top1) if top1 else None,
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
            "seeds_completed": len(top1), "trials_failed": sum(r["status"] != "completed" for r in recs),
        })
    base = next((r for r in rows if r["placement"] == baseline_placement(len(placements[0]))), rows[0])
    for r in rows:
        for key in ("params", "macs", "infer_images_per_sec", "train_images_per_sec"):
            r[f"{key}_rel"] = r[key] / base[key] if r[key] and base[key] else None
        ok = r["top1_mean"] is not None and base["top1_mean"] is not None
        r["top1_delta"] = r["top1_mean"] - base["top1_mean"] if ok else None
        r["is_baseline"] = r is base
    return rows


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both top-1 and train throughput (higher is better for both)."""
    pts = [r for r in rows if r["top1_mean"] is not None and r["train_images_per_sec"]]
    front, best = [], float("-inf")
    for r in sorted(pts, key=lambda r: (-r["train_images_per_sec"], -r["top1_mean"])):
        if r["top1_mean"] > best:
            front.append(r)
            best = r["top1_mean"]
    return front


def _num(v, fmt):
    return "—" if v is None else format(v, fmt)


def _cells(r: dict) -> list[str]:
    def rel(key):
        return "" if r.get(f"{key}_rel") is None else f" (×{r[f'{key}_rel']:.2f})"
    top1 = "—" if r["top1_mean"] is None else f"{r['top1_mean']:.2f}" + (
        f" ± {r['top1_std']:.2f}" if r["top1_std"] is not None else "") + (
        f" ({r['top1_delta']:+.2f})" if r["top1_delta"] is not None else "")
    return [r["placement"], r["fused_stages"],
            _num(r["params"] and r["params"] / 1e6, ".3g") + rel("params"),
            _num(r["macs"] and r["macs"] / 1e9, ".3g") + rel("macs"),
            top1,
            _num(r["infer_images_per_sec"], ".0f") + rel("infer_images_per_sec"),
            _num(r["train_images_per_sec"], ".0f") + rel("train_images_per_sec")]


HEADERS = ["placement", "fused stages", "params (M)", "GMACs", "top-1 (%)", "infer img/s", "train img/s"]


def rich_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for h in HEADERS:
        # only the placement must never wrap; ratios may drop to a second line on narrow terminals
        table.add_column(h, justify="left" if h in ("placement", "fused stages") else "right",
                         no_wrap=h == "placement")
    for r in rows:
        table.add_row(*_cells(r), style="bold" if r["is_baseline"] else None)
    return table


def write_csv(path: Path, trial_records: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for rec in trial_records:
        writer.writerow({**rec, "fused_stages": fused_stages_label(rec["placement"])})
    atomic_write_text(path, buf.getvalue())


def write_plots(out: Path, rows: list[dict], title: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    written = []
    trained = [r for r in rows if r["top1_mean"] is not None]

    def save(fig, name):
        tmp = out / f".{name}.tmp.png"  # write then rename: a plot is never half there
        fig.savefig(tmp, dpi=130, bbox_inches="tight")
        plt.close(fig)
        tmp.replace(out / name)
        written.append(name)

    def label(ax, pts, xkey, ykey, xscale=1.0):
        for r in pts:
            ax.annotate(r["placement"], (r[xkey] * xscale, r[ykey]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8, family="monospace")

    if trained and any(r["train_images_per_sec"] for r in trained):
        pts = [r for r in trained if r["train_images_per_sec"]]
        front = pareto_front(pts)
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        ax.errorbar([r["train_images_per_sec"] for r in pts], [r["top1_mean"] for r in pts],
                    yerr=[r["top1_std"] or 0 for r in pts], fmt="o", color="tab:blue", capsize=3, label="placement")
        ax.plot([r["train_images_per_sec"] for r in front], [r["top1_mean"] for r in front], "--",
                color="tab:red", marker="*", markersize=12, label="Pareto front")
        label(ax, pts, "train_images_per_sec", "top1_mean")
        ax.set(xlabel="train throughput (img/s, profile)", ylabel="top-1 (%)", title=title)
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, PLOT_FILES["throughput"])
    if trained and any(r["params"] for r in trained):
        pts = [r for r in trained if r["params"]]
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        ax.errorbar([r["params"] / 1e6 for r in pts], [r["top1_mean"] for r in pts],
                    yerr=[r["top1_std"] or 0 for r in pts], fmt="o", color="tab:green", capsize=3)
        label(ax, pts, "params", "top1_mean", 1e-6)
        ax.set(xlabel="params (M)", ylabel="top-1 (%)", title=title)
        ax.grid(alpha=0.3)
        save(fig, PLOT_FILES["params"])
    if not trained and any(r["params"] and r["train_images_per_sec"] for r in rows):
        pts = [r for r in rows if r["params"] and r["train_images_per_sec"]]
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        ax.plot([r["params"] / 1e6 for r in pts], [r["train_images_per_sec"] for r in pts], "o", label="train")
        ax.plot([r["params"] / 1e6 for r in pts], [r["infer_images_per_sec"] or 0 for r in pts], "s", label="infer")
        label(ax, pts, "params", "train_images_per_sec", 1e-6)
        ax.set(xlabel="params (M)", ylabel="img/s (profile)", title=title)
        ax.grid(alpha=0.3)
        ax.legend()
        save(fig, PLOT_FILES["profile"])
    return written


def write_markdown(path: Path, rows: list[dict], title: str, context: list[str], plots: list[str],
                   failed: list[dict]) -> None:
    base = next(r for r in rows if r["is_baseline"])
    lines = [f"# {title}", "", *[f"- {c}" for c in context],
             f"- relative to **{base['placement']}** "
             f"({'all MBConv' if 'F' not in base['placement'] else 'first row: no all-MBConv trial'}): "
             "params, GMACs and img/s as ×ratio, top-1 as ± points; top-1 is mean ± std over seeds", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    front = pareto_front(rows)
    if front:
        lines += ["", "Pareto front (top-1 vs train img/s): " + ", ".join(r["placement"] for r in front)]
    lines += [""] + [f"![{p[:-4].replace('_', ' ')}]({p})" for p in plots]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- `{r['trial_id']}`: {r.get('error')}" for r in failed]
    atomic_write_text(path, "\n".join(lines) + "\n")
