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

from fmb.errors import EXIT_FAILED, EXIT_INTERRUPTED, FmbError, describe_os_error, unwrap_worker_error

console = Console()
err_console = Console(stderr=True)


class _App(typer.Typer):
    """Typer app that turns FmbError into one red line and an exit code (traceback only with --debug)."""

    def __call__(self, *args, **kwargs):
        argv = list(args[0]) if args and args[0] is not None else sys.argv[1:]
        debug_before = os.environ.get("FMB_DEBUG")  # --debug sets it for this call only (notebooks, tests)
        try:
            return super().__call__(*args, **kwargs)
        except FmbError as exc:
            exc = unwrap_worker_error(exc)
            _fail(str(exc), exc.exit_code, argv)
        except KeyboardInterrupt:
            _fail("interrupted (Ctrl-C)", EXIT_INTERRUPTED, argv)
        except MemoryError:
            _fail("out of memory; lower data.batch_size or data.image_size (or --batch-size / --resolution)",
                  EXIT_FAILED, argv)
        except Exception as exc:  # noqa: BLE001 - an unforeseen fault is still one line (docs/errors.md)
            if "out of memory" in str(exc).lower():
                _fail("out of memory; lower data.batch_size or data.image_size (or --batch-size / --resolution)",
                      EXIT_FAILED, argv)
            _fail(f"{type(exc).__name__}: {describe_os_error(exc)} (rerun with --debug for the traceback)",
                  EXIT_FAILED, argv)
        finally:
            if debug_before is None:
                os.environ.pop("FMB_DEBUG", None)
            else:
                os.environ["FMB_DEBUG"] = debug_before


def _fail(message: str, code: int, argv) -> None:
    """One red line on stderr and the exit code; with --debug the traceback first, same code."""
    from rich.markup import escape

    if _debug_requested(argv):
        import traceback
        traceback.print_exc()
    line = " ".join(message.split())  # one line, whatever the message held
    err_console.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False, soft_wrap=True)
    sys.exit(code)


def _debug_requested(argv=None) -> bool:
    return "--debug" in (sys.argv if argv is None else argv) or os.environ.get("FMB_DEBUG", "") not in ("", "0")


app = _App(
    name="fmb",
    help="EfficientNet V1/V2 around the Fused-MBConv block: train, eval, ablate, profile.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion; the commands import lazily
)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")):
    if debug:
        os.environ["FMB_DEBUG"] = "1"


def check_outputs(**paths) -> None:
    """Refuse unusable output paths before any work, not after it: a directory, a path under
    a file, a read-only folder."""
    from fmb.utils import check_writable

    for option, path in paths.items():
        if path is not None and Path(path).is_dir():
            raise FmbError(f"--{option.replace('_', '-')} {path} is a directory; expected a file path such as "
                           f"{Path(path) / ('result.json' if option == 'json' else 'plot.png')}")
        if path is not None:
            check_writable(Path(path), f"--{option.replace('_', '-')}")


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
    from fmb.profiling.report import describe_variants

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
    console.print(next_step_hint(summary))


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Argument(..., help="A .ckpt written by fmb train."),
    split: str = typer.Option("val", "--split", help="val | test | any split name of the data (e.g. train)."),
    data: Optional[list[str]] = typer.Option(None, "--data", help="Data override key=value (data.* keys)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Eval image size (default: the run's)."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights when the run kept them."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (autocast)."),
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
                        f"{result['weights']} weights, {result['device']}"
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
    fast: bool = typer.Option(False, "--fast", help="Inference fast path: channels_last, BN folded (kept on CUDA in bf16/fp16)."),
    compare_blocks: bool = typer.Option(False, "--compare-blocks", help="Time every stage as MBConv and Fused."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed iterations first."),
    iters: int = typer.Option(10, "--iters", help="Timed iterations."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON here."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG bar chart here."),
):
    """Params, FLOPs, speed and memory, in total and per stage; MBConv vs Fused per stage."""
    from fmb.profiling.report import run_profile

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


@app.command("predict")
def predict_cmd(
    checkpoint: Path = typer.Argument(..., help="A .ckpt written by fmb train."),
    inputs: list[str] = typer.Argument(..., help="Image files, folders (searched recursively) or a dataset "
                                                 "(save_to_disk dir, parquet files, hub id, digits)."),
    top_k: int = typer.Option(5, "--top-k", "-k", help="Classes shown per image."),
    split: Optional[str] = typer.Option(None, "--split", help="Dataset split (default: test, else validation, else train)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N | mps."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | fp16 (autocast)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per batch."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Use the EMA weights when the run kept them."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Image size (default: the run's eval size)."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Write one row per image here (input, label_i, prob_i)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the predictions (and skipped images) as JSON here."),
    limit: int = typer.Option(50, "--show", help="Rows shown in the table (all go to --csv/--json)."),
):
    """Top-k classes with probabilities for images, folders or a dataset; unreadable images are skipped."""
    from fmb.inference.predict import predict

    check_outputs(json=json_path, csv=csv_path)
    result = predict(checkpoint, inputs, top_k=top_k, batch_size=batch_size, device=device, precision=precision,
                     ema=ema, split=split, resolution=resolution)
    table = Table(title=f"{checkpoint} — {len(result.predictions)} images, {result.weights} weights, {result.device}",
                  box=box.SIMPLE_HEAD)
    table.add_column("input", overflow="fold")
    for i in range(1, result.top_k + 1):
        table.add_column(f"top-{i}", justify="left", no_wrap=True)
    for row in result.predictions[:max(0, limit)]:
        table.add_row(row["input"], *(f"{t['label']} {t['prob']:.3f}" for t in row["top"]))
    console.print(table)
    if len(result.predictions) > limit:
        console.print(f"... {len(result.predictions) - limit} more rows (--csv/--json hold them all)")
    for bad in result.skipped:
        err_console.print(f"[yellow]skipped[/] {bad['input']}: {bad['error']}", highlight=False, soft_wrap=True)
    if result.skipped:
        err_console.print(f"[yellow]{len(result.skipped)} unreadable image(s) skipped[/]")
    if csv_path:
        from fmb.utils import atomic_write_text
        atomic_write_text(csv_path, result.to_csv())
    if json_path:
        write_json(json_path, result.to_dict())


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Argument(..., help="A .ckpt written by fmb train."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx | pt2 (torch.export) | safetensors | torchscript."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="File to write (default: next to the checkpoint)."),
    fold_bn: bool = typer.Option(False, "--fold-bn", help="Fold every BatchNorm into its convolution first."),
    dynamic_batch: bool = typer.Option(True, "--dynamic-batch/--static-batch", help="Batch size free at run time."),
    ema: bool = typer.Option(True, "--ema/--no-ema", help="Export the EMA weights when the run kept them."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Input size (default: the run's eval size)."),
    batch_size: int = typer.Option(2, "--batch-size", "-b", help="Batch of the example input and the check."),
    tolerance: float = typer.Option(1e-3, "--tolerance", help="Largest allowed |logit difference| from PyTorch."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write what was written and the check as JSON here."),
):
    """Export the network (ONNX, .pt2, safetensors, TorchScript) and check it by running the file."""
    from fmb.inference.export import export_model

    check_outputs(json=json_path)
    result = export_model(checkpoint, format=format, output=output, fold_bn=fold_bn, dynamic_batch=dynamic_batch,
                          ema=ema, resolution=resolution, batch_size=batch_size, tolerance=tolerance, opset=opset)
    runner = {"onnx": "onnxruntime", "pt2": "torch.export.load", "safetensors": "a fresh model",
              "torchscript": "torch.jit.load"}[result["format"]]
    console.print(f"[bold green]wrote[/] {result['path']} ({result['bytes'] / 1e6:.1f} MB, {result['weights']} weights"
                  f"{', BN folded' if result['fold_bn'] else ''}{', dynamic batch' if result['dynamic_batch'] else ''})")
    console.print(f"checked with {runner} on batches {result['batch_sizes']} of {result['input_shape'][2]} px: "
                  f"max abs diff {result['max_abs_diff']:.3g} (tolerance {result['tolerance']:g})")
    if json_path:
        write_json(json_path, result)


@app.command("configs")
def configs_cmd(
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the list as JSON here."),
):
    """List the presets shipped with fmb: pass a name to -c (experiment, ablate) or as data=NAME."""
    from fmb.config.docs import list_presets

    check_outputs(json=json_path)
    presets = list_presets()
    table = Table(title="fmb presets (fmb train -c NAME, fmb train data=NAME, fmb ablate -c NAME)", box=box.SIMPLE_HEAD)
    for col in ("group", "name", "about"):
        table.add_column(col, no_wrap=col != "about")
    for p in presets:
        table.add_row(p["group"], p["name"], p["about"])
    console.print(table)
    if presets:
        console.print(f"in {Path(presets[0]['path']).parent.parent}")
    if json_path:
        write_json(json_path, {"presets": presets})
