"""Turn trial records into the paper-style table (EfficientNetV2's Table 3), a CSV and plots.

One row per placement: params and GMACs are those of the models the trials trained (their
classes and resolution; the profile's model only in a profile-only study), throughput comes
from the profile (it does not depend on the seed); top-1 is the mean ± sample std over the
seeds that completed, and against the all-MBConv baseline the paired difference over seeds
with its 95 % confidence interval (fmb.ablation.stats). Every column is also shown relative to
the baseline, the comparison the paper makes.
"""
from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from rich.table import Table

from fmb.ablation.plan import baseline_placement, fused_stages_label
from fmb.ablation.stats import paired_difference
from fmb.utils import atomic_path, atomic_write_text

CSV_FIELDS = ("trial_id", "placement", "fused_stages", "seed", "status", "params", "macs", "flops",
              "infer_images_per_sec", "train_images_per_sec", "val_top1", "best_val_top1", "val_loss",
              "epochs", "global_step", "trained_params", "trained_macs", "trained_num_classes",
              "trained_image_size", "run_train_images_per_sec", "wall_time_s", "duration_s", "started_at",
              "ended_at", "hardware", "run_dir", "error")
PLOT_FILES = {"throughput": "top1_vs_train_throughput.png", "params": "params_vs_top1.png",
              "profile": "throughput_vs_params.png"}


def summarize(placements: list[str], records: dict[str, dict]) -> list[dict]:
    rows = []
    for p in placements:
        recs = [r for r in records.values() if r["placement"] == p]
        done = [r for r in recs if r["status"] == "completed"]
        prof = next((r for r in recs if r.get("params") is not None), {})
        trained = next((r for r in done if r.get("trained_params") is not None), None)
        by_seed = {r["seed"]: 100 * r["val_top1"] for r in done if r.get("val_top1") is not None}
        top1 = list(by_seed.values())
        rows.append({
            "placement": p, "fused_stages": fused_stages_label(p),
            # the trained model's count when there is one; the profile model's otherwise
            "params": trained["trained_params"] if trained else prof.get("params"),
            "macs": (trained.get("trained_macs") if trained else None) or (None if trained else prof.get("macs")),
            "flops": prof.get("flops"), "sizes_from": "trained" if trained else "profile" if prof else None,
            "infer_images_per_sec": prof.get("infer_images_per_sec"),
            "train_images_per_sec": prof.get("train_images_per_sec"),
            "top1_mean": statistics.fmean(top1) if top1 else None,
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else None,
            "top1_by_seed": by_seed,
            "seeds_completed": len(top1), "trials_failed": sum(r["status"] != "completed" for r in recs),
        })
    base = next((r for r in rows if r["placement"] == baseline_placement(len(placements[0]))), rows[0])
    for r in rows:
        for key in ("params", "macs", "infer_images_per_sec", "train_images_per_sec"):
            r[f"{key}_rel"] = r[key] / base[key] if r[key] and base[key] else None
        ok = r["top1_mean"] is not None and base["top1_mean"] is not None
        r["top1_delta"] = r["top1_mean"] - base["top1_mean"] if ok else None
        r["is_baseline"] = r is base
        stats = paired_difference(r["top1_by_seed"], base["top1_by_seed"]) if r is not base else {}
        for key in ("n_pairs", "diff_mean", "diff_ci_low", "diff_ci_high", "significant"):
            r[key] = stats.get(key)
    return rows


def verdict(r: dict) -> str:
    """'+1.39 [+0.21, +2.57] yes' — the paired difference, its 95 % CI, significant or not."""
    if r["is_baseline"]:
        return "baseline"
    if r["diff_mean"] is None:
        return "—"
    if r["diff_ci_low"] is None:
        return f"{r['diff_mean']:+.2f} (1 seed: no CI)"
    return (f"{r['diff_mean']:+.2f} [{r['diff_ci_low']:+.2f}, {r['diff_ci_high']:+.2f}] "
            + ("yes" if r["significant"] else "no"))


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


def _cells(r: dict, trained: bool = True) -> list[str]:
    def rel(key):
        return "" if r.get(f"{key}_rel") is None else f" (×{r[f'{key}_rel']:.2f})"
    top1 = "—" if r["top1_mean"] is None else f"{r['top1_mean']:.2f}" + (
        f" ± {r['top1_std']:.2f}" if r["top1_std"] is not None else "") + (
        f" ({r['top1_delta']:+.2f})" if r["top1_delta"] is not None else "")
    return [r["placement"], r["fused_stages"],
            _num(r["params"] and r["params"] / 1e6, ".3g") + rel("params"),
            _num(r["macs"] and r["macs"] / 1e9, ".3g") + rel("macs"),
            *([top1, verdict(r)] if trained else []),
            _num(r["infer_images_per_sec"], ".0f") + rel("infer_images_per_sec"),
            _num(r["train_images_per_sec"], ".0f") + rel("train_images_per_sec")]


HEADERS = ["placement", "fused stages", "params (M)", "GMACs", "top-1 (%)", "Δ top-1 vs baseline [95% CI] significant",
           "infer img/s", "train img/s"]
TRAINED_ONLY = ("top-1 (%)", "Δ top-1 vs baseline [95% CI] significant")


def headers(trained: bool) -> list[str]:
    return [h for h in HEADERS if trained or h not in TRAINED_ONLY]


def rich_table(rows: list[dict], title: str, trained: bool = True) -> Table:
    table = Table(title=title)
    for h in headers(trained):
        # only the placement must never wrap; ratios may drop to a second line on narrow terminals
        table.add_column(h, justify="left" if h in ("placement", "fused stages") else "right",
                         no_wrap=h == "placement")
    for r in rows:
        table.add_row(*_cells(r, trained), style="bold" if r["is_baseline"] else None)
    return table


def write_csv(path: Path, trial_records: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for rec in trial_records:
        writer.writerow({**rec, "fused_stages": fused_stages_label(rec["placement"])})
    atomic_write_text(path, buf.getvalue())


# offsets (points) tried in turn for a label until it overlaps no other label and no marker
LABEL_OFFSETS = [(5, 5), (5, -11), (-5, 5), (-5, -11), (5, 15), (5, -21), (-5, 15), (-5, -21), (5, 25), (5, -31),
                 (-5, 25), (-5, -31), (5, 35), (5, -41), (-5, 35), (-5, -41), (5, 45), (5, -51)]


def place_labels(ax, xy: list[tuple], texts: list[str]) -> list:
    """Annotate each point with its text where the label stays inside the axes and overlaps no
    label placed before it (the first such offset of LABEL_OFFSETS; the last one if none is)."""
    fig = ax.figure
    fig.canvas.draw()  # a renderer, and the axis limits the points will have
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed, out = [], []
    for (x, y), text in sorted(zip(xy, texts), key=lambda item: (-item[0][1], item[0][0])):
        for dx, dy in LABEL_OFFSETS:
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                              family="monospace", ha="left" if dx >= 0 else "right")
            box = ann.get_window_extent(renderer).expanded(1.05, 1.1)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if (inside and not any(box.overlaps(other) for other in placed)) or (dx, dy) == LABEL_OFFSETS[-1]:
                placed.append(box)
                out.append(ann)
                break
            ann.remove()
    return out


def write_plots(out: Path, rows: list[dict], title: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    written = []
    trained = [r for r in rows if r["top1_mean"] is not None]

    def save(fig, name):
        with atomic_path(out / name, suffix=".png") as tmp:  # a plot is never half there
            fig.savefig(tmp, dpi=130, bbox_inches="tight")
        plt.close(fig)
        written.append(name)

    def label(ax, pts, xkey, ykey, xscale=1.0):
        place_labels(ax, [(r[xkey] * xscale, r[ykey]) for r in pts], [r["placement"] for r in pts])

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
                   failed: list[dict], trained: bool = True) -> None:
    base = next(r for r in rows if r["is_baseline"])
    cols = headers(trained)
    how = ("params, GMACs and img/s as ×ratio, top-1 as ± points; top-1 is mean ± std over seeds; "
           "Δ is the paired difference over the seeds both completed, with its 95 % CI (Student's t), "
           "significant when the CI excludes 0" if trained else "params, GMACs and img/s as ×ratio")
    lines = [f"# {title}", "", *[f"- {c}" for c in context],
             f"- relative to **{base['placement']}** "
             f"({'all MBConv' if 'F' not in base['placement'] else 'first row: no all-MBConv trial'}): {how}", "",
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_cells(r, trained)) + " |" for r in rows]
    front = pareto_front(rows)
    if front:
        lines += ["", "Pareto front (top-1 vs train img/s): " + ", ".join(r["placement"] for r in front)]
    lines += [""] + [f"![{p[:-4].replace('_', ' ')}]({p})" for p in plots]
    if failed:
        lines += ["", "## Failed trials", ""] + [f"- `{r['trial_id']}`: {r.get('error')}" for r in failed]
    atomic_write_text(path, "\n".join(lines) + "\n")
