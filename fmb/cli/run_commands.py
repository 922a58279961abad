"""`fmb train`, `fmb eval`, `fmb ablate`: the commands that run models on data."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from fmb.cli.app import app, check_outputs, console, err_console, write_json
from fmb.errors import FmbError


class _TrainCommand(typer.core.TyperCommand):
    """`fmb train --help` also lists every config key with its default and one-line doc."""

    def format_help(self, ctx, formatter):
        super().format_help(ctx, formatter)
        from fmb.config.docs import print_settings_help
        print_settings_help(Console())


@app.command("train", cls=_TrainCommand,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_cmd(
    ctx: typer.Context,
    config: Optional[list[str]] = typer.Option(None, "--config", "-c", help="YAML files or preset names, merged in order."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue a run: its directory (from last.ckpt) or one of its .ckpt files."),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the resolved config as YAML, each key's doc as a comment, and exit."),
):
    """Train a model: fmb train -c FILE ... key=value ... (no arguments: V2-S on digits)."""
    from fmb.config import load_config

    overrides = list(ctx.args)
    for arg in overrides:
        if arg.startswith("-"):
            raise FmbError(f"unknown option '{arg}'; expected -c FILE, --resume RUN_DIR|CKPT, --print-config or key=value")
    if resume is not None:
        from fmb.training.run import load_run_config
        cfg = load_run_config(resume, overrides)
    else:
        cfg = load_config([str(c) for c in config or []], overrides, front_door=True)
    if print_config:  # plain text: valid YAML to save and pass back with -c, no padding
        from fmb.config.docs import commented_yaml
        typer.echo(commented_yaml(cfg), nl=False)
        return
    from fmb.training.run import train
    from fmb.training.summary import next_step_hint

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
    console.print(next_step_hint(summary), markup=False, highlight=False, emoji=False)  # paths may hold [..]


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="A .ckpt written by fmb train."),
    split: str = typer.Option("val", "--split", help="val | test | any split name of the data (e.g. train)."),
    data: Optional[list[str]] = typer.Option(None, "--data", help="Data override key=value (data.* keys)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Eval image size (default: the run's)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights when the run kept them."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="fp32 | bf16 | fp16 (autocast); default: the run's training precision."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Images per batch (default: the run's)."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Loader workers (default: the run's)."),
    devices: int = typer.Option(1, "--devices", help="Devices (DDP processes, through Lightning) sharing the split."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write results as JSON here."),
    confusion: Optional[Path] = typer.Option(None, "--confusion", help="Write a confusion-matrix PNG here."),
):
    """Evaluate a checkpoint: top-1, top-5, loss and per-class accuracy."""
    from fmb.training.evaluate import evaluate, plot_confusion

    check_outputs(json=json_path, confusion=confusion)
    result = evaluate(checkpoint, split=split, data_overrides=data, resolution=resolution, ema=ema, device=device,
                      precision=precision, batch_size=batch_size, num_workers=num_workers, devices=devices)
    from lightning.pytorch.utilities import rank_zero_only
    if rank_zero_only.rank != 0:  # with --devices N every rank holds the same result; report once
        return
    table = Table(title=f"{checkpoint} — {result.get('split_name', split)} ({result['examples']} images, "
                        f"{result['weights']} weights, {result['device']} {result['precision']}"
                        f"{' ×' + str(result['devices']) if result['devices'] > 1 else ''})", box=box.SIMPLE_HEAD)
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


@app.command("ablate")
def ablate_cmd(
    overrides: Optional[list[str]] = typer.Argument(None, help="Config overrides key=value (ablate.* too)."),
    config: Optional[list[Path]] = typer.Option(
        None, "--config", "-c", help="YAML preset(s), e.g. configs/ablate/digits_quick.yaml."),
    placements: Optional[str] = typer.Option(
        None, "--placements", help="Comma-separated, e.g. MMMMMM,FFFMMM; or pareto:K, K placements from the front "
                                   "`fmb profile --search` finds."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="prefix | single | exhaustive."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated integers, e.g. 0,1,2."),
    profile_only: Optional[bool] = typer.Option(None, "--profile-only", help="Profile each placement; train nothing."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Study directory (default runs/ablate/<preset>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the study in --out (alone: with its stored settings)."),
    fail_fast: Optional[bool] = typer.Option(None, "--fail-fast", help="Stop at the first failed trial."),
    force: bool = typer.Option(False, "--force", help="Allow an exhaustive sweep above the cap."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write results as JSON here."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, one trial's config and an estimated "
                                                          "cost (quick profile); run and write nothing."),
):
    """Block-placement ablation: which stages use Fused-MBConv. Table, CSV and plots in --out.

    Trials at once: ablate.jobs=N (ablate.devices_per_trial GPUs each); on SLURM: ablate.launcher=slurm."""
    from fmb.ablation import run_ablation

    check_outputs(json=json_path)
    if dry_run:
        from fmb.ablation import format_plan, plan_ablation

        plan = plan_ablation(config or [], overrides or [], placements=placements, sweep=sweep, seeds=seeds,
                             profile_only=profile_only, out=out, resume=resume, fail_fast=fail_fast, force=force)
        for line in format_plan(plan):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        if json_path:
            write_json(json_path, plan)
        raise typer.Exit(0)
    result = run_ablation(config or [], overrides or [], placements=placements, sweep=sweep, seeds=seeds,
                          profile_only=profile_only, out=out, resume=resume, fail_fast=fail_fast, force=force,
                          json_path=json_path, console=err_console)
    if result.rows:
        console.print(result.table())
    console.print(f"{result.files.get('report_md', result.out_dir)}"
                  + (f"  [red]{len(result.failed)} trial(s) failed or did not run[/]" if result.failed else ""))
    raise typer.Exit(result.exit_code)
