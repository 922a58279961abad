"""The `fmb` command line: parse, call one library function, print. No logic lives here."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from fmb.errors import FmbError, unwrap_worker_error

console = Console()
err_console = Console(stderr=True)


class _App(typer.Typer):
    """Typer app that turns FmbError into one red line and an exit code (traceback only with --debug)."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except FmbError as exc:
            if _debug_requested():
                raise
            exc = unwrap_worker_error(exc)
            err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)


def _debug_requested() -> bool:
    return "--debug" in sys.argv or os.environ.get("FMB_DEBUG", "") not in ("", "0")


app = _App(
    name="fmb",
    help="EfficientNet V1/V2 around the Fused-MBConv block: train, eval, ablate, profile.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    if debug:
        os.environ["FMB_DEBUG"] = "1"


def check_outputs(**paths) -> None:
    """Refuse unusable output paths before any work, not after it."""
    for option, path in paths.items():
        if path is not None and Path(path).is_dir():
            raise FmbError(f"--{option.replace('_', '-')} {path} is a directory; expected a file path such as "
                           f"{Path(path) / ('result.json' if option == 'json' else 'plot.png')}")


def write_json(path: Path, payload) -> None:
    """Write JSON atomically: a temp file renamed into place, so no half-written results."""
    from fmb.utils import atomic_write_text
    atomic_write_text(Path(path), json.dumps(payload, indent=2) + "\n")


@app.command("models")
def models_cmd(
    variant: Optional[list[str]] = typer.Option(None, "--variant", "-v", help="Only these variants."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON here."),
):
    """List every variant: params, GMACs at its eval size, default placement, sizes."""
    from fmb.models import get_variant
    from fmb.profiling.catalog import describe_variants

    check_outputs(json=json_path)
    for name in variant or []:
        get_variant(name)  # fail on a bad name before any work
    rows = describe_variants(variant or None)
    table = Table(title="fmb variants (num_classes=1000, GMACs at eval size)", box=box.SIMPLE_HEAD)
    for col in ("variant", "params", "GMACs", "blocks", "train", "eval", "drop"):
        table.add_column(col, justify="left" if col in ("variant", "blocks") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r["name"], f"{r['params']:,}", f"{r['gmacs']:.2f}", r["placement"],
                      str(r["train_size"]), str(r["eval_size"]), f"{r['drop_rate']:.1f}")
    console.print(table)
    if json_path:
        write_json(json_path, {"models": rows})


@app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_cmd(
    ctx: typer.Context,
    config: Optional[list[str]] = typer.Option(None, "--config", "-c", help="YAML files or preset names, merged in order."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue a run: its directory (from last.ckpt) or one of its .ckpt files."),
    print_config: bool = typer.Option(False, "--print-config", help="Show the resolved config and exit."),
):
    """Train a model: fmb train -c FILE ... key=value ... (no arguments: V2-S on digits)."""
    from fmb.config import load_config, to_yaml

    overrides = list(ctx.args)
    for arg in overrides:
        if arg.startswith("-"):
            raise FmbError(f"unknown option '{arg}'; expected -c FILE, --resume RUN_DIR|CKPT, --print-config or key=value")
    if resume is not None:
        from fmb.training.run import load_run_config
        cfg = load_run_config(resume, overrides)
    else:
        cfg = load_config([str(c) for c in config or []], overrides, front_door=True)
    if print_config:
        from rich.syntax import Syntax
        console.print(Syntax(to_yaml(cfg), "yaml"))
        return
    from fmb.training.run import next_step_hint, train

    summary = train(cfg, resume=resume)
    from lightning.pytorch.utilities import rank_zero_only
    if rank_zero_only.rank != 0:  # under DDP every rank returns here; report once
        return
    if summary["status"] != "completed":
        raise FmbError(f"run {summary['status']}: {summary['run_dir']}", exit_code=1)
    def pct(value):
        return "n/a" if value is None else f"{value:.4f}"

    console.print(f"[bold green]done[/] {summary['run_dir']}  val top-1 {pct(summary['val_top1'])} "
                  f"(best {pct(summary['best_val_top1'])}), {summary['epochs']} epochs, "
                  f"{summary['train_images_per_sec']} img/s, {summary['wall_time_s']:.0f} s")
    console.print(next_step_hint(summary))


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="A .ckpt written by fmb train."),
    split: str = typer.Option("val", "--split", help="val | test."),
    data: Optional[list[str]] = typer.Option(None, "--data", help="Data override key=value (data.* keys)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Eval image size (default: the run's)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights when the run kept them."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write results as JSON here."),
    confusion: Optional[Path] = typer.Option(None, "--confusion", help="Write a confusion-matrix PNG here."),
):
    """Evaluate a checkpoint: top-1, top-5, loss and per-class accuracy."""
    from fmb.training.evaluate import evaluate, plot_confusion

    check_outputs(json=json_path, confusion=confusion)
    result = evaluate(checkpoint, split=split, data_overrides=data, resolution=resolution, ema=ema)
    table = Table(title=f"{checkpoint} — {split} ({result['examples']} images)", box=box.SIMPLE_HEAD)
    for col in ("class", "accuracy", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for row in result["per_class"]:
        table.add_row(row["class"], f"{row['accuracy']:.4f}", str(row["support"]))
    console.print(table)
    top5 = f"  top-5 {result['top5']:.4f}" if result["top5"] is not None else ""
    console.print(f"[bold]top-1 {result['top1']:.4f}[/]{top5}  loss {result['loss']:.4f}")
    if confusion:
        plot_confusion(result, confusion)
    if json_path:
        write_json(json_path, {k: v for k, v in result.items()})


@app.command("profile")
def profile_cmd(
    variant: str = typer.Option("efficientnetv2_s", "--variant", "-v", help="Model variant (see `fmb models`)."),
    blocks: Optional[str] = typer.Option(None, "--blocks", help="Placement, one letter per stage: F or M."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Stage override stage.N.field=value (repeatable)."),
    width_mult: Optional[float] = typer.Option(None, "--width-mult", help="Multiply the variant's width."),
    depth_mult: Optional[float] = typer.Option(None, "--depth-mult", help="Multiply the variant's depth."),
    num_classes: int = typer.Option(1000, "--num-classes", help="Classifier outputs."),
    resolution: int = typer.Option(224, "--resolution", "-r", help="Input size in pixels."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per batch."),
    mode: str = typer.Option("both", "--mode", help="infer | train | both."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (autocast)."),
    channels_last: bool = typer.Option(False, "--channels-last/--no-channels-last", help="NHWC memory format."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the model."),
    fast: bool = typer.Option(False, "--fast", help="Inference fast path: BN folded, channels_last."),
    compare_blocks: bool = typer.Option(False, "--compare-blocks", help="Time every stage as MBConv and Fused."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed iterations first."),
    iters: int = typer.Option(10, "--iters", help="Timed iterations."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON here."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG bar chart here."),
):
    """Params, FLOPs, speed and memory, in total and per stage; MBConv vs Fused per stage."""
    from fmb.profiling.command import run_profile

    check_outputs(json=json_path, plot=plot_path)
    run_profile(variant=variant, blocks=blocks, sets=sets, width_mult=width_mult, depth_mult=depth_mult,
                num_classes=num_classes, resolution=resolution, batch_size=batch_size, mode=mode, device=device,
                precision=precision, channels_last=channels_last, compile=compile, fast=fast,
                compare_blocks=compare_blocks, warmup=warmup, iters=iters, json_path=json_path,
                plot_path=plot_path, console=console)


@app.command("ablate")
def ablate_cmd(
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key=value (ablate.* too)."),
    config: Optional[list[Path]] = typer.Option(
        None, "--config", "-c", help="YAML preset(s), e.g. configs/ablate/digits_quick.yaml."),
    placements: Optional[str] = typer.Option(None, "--placements", help="Comma-separated, e.g. MMMMMM,FFFMMM."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="prefix | single | exhaustive."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated integers, e.g. 0,1,2."),
    profile_only: Optional[bool] = typer.Option(None, "--profile-only", help="Profile each placement; train nothing."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Study directory (default runs/ablate/<preset>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the study in --out (alone: with its stored settings)."),
    fail_fast: Optional[bool] = typer.Option(None, "--fail-fast", help="Stop at the first failed trial."),
    force: bool = typer.Option(False, "--force", help="Allow an exhaustive sweep above the cap."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write results as JSON here."),
):
    """Block-placement ablation: which stages use Fused-MBConv. Table, CSV and plots in --out."""
    from fmb.ablation import run_ablation

    check_outputs(json=json_path)
    result = run_ablation(config or [], overrides or [], placements=placements, sweep=sweep, seeds=seeds,
                          profile_only=profile_only, out=out, resume=resume, fail_fast=fail_fast, force=force,
                          json_path=json_path, console=err_console)
    if result.rows:
        console.print(result.table())
    console.print(f"{result.files.get('report_md', result.out_dir)}"
                  + (f"  [red]{len(result.failed)} trial(s) failed or did not run[/]" if result.failed else ""))
    raise typer.Exit(result.exit_code)
