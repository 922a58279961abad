"""`fmb models`, `fmb profile`, `fmb predict`, `fmb export`, `fmb configs`: tools around a model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from fmb.cli.app import app, check_outputs, console, err_console, write_json


@app.command("models")
def models_cmd(
    variant: Optional[list[str]] = typer.Option(None, "--variant", "-v", help="Only these variants."),
    pretrained: bool = typer.Option(False, "--pretrained", help="List the published weights each variant can "
                                    "start from (model.pretrained=SPEC; the first is what `true` loads)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON here."),
):
    """List every variant: params, GMACs at its eval size, default placement, sizes; or its published weights."""
    # fmb's own tables only (fmb/models/variant_table.py): no network is built, no torch imported
    from fmb.models import get_variant
    from fmb.models.variant_table import describe_pretrained, describe_variants

    check_outputs(json=json_path)
    for name in variant or []:
        get_variant(name)  # fail on a bad name before any work
    if pretrained:
        rows = describe_pretrained(variant or None)
        table = Table(title="published weights (model.pretrained=SPEC; * = what model.pretrained=true loads)",
                      box=box.SIMPLE_HEAD)
        for col in ("variant", "model.pretrained", "trained on", "pad", "train", "eval", "crop", "mean"):
            table.add_column(col, justify="right" if col in ("train", "eval", "crop") else "left", no_wrap=True)
        for r in rows:
            table.add_row(r["variant"], ("* " if r["default"] else "  ") + r["spec"], r["trained_on"], r["padding"],
                          str(r["train_size"]), str(r["eval_size"]), f"{r['crop_ratio']:.3f}",
                          "[-1, 1]" if r["mean"] == [0.5, 0.5, 0.5] else "ImageNet")
        console.print(table)
        if json_path:
            write_json(json_path, {"pretrained": rows})
        return
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
    search: bool = typer.Option(False, "--search", help="Predict every placement from per-stage timings, check "
                                "some end to end, show the Pareto fronts (the paper's placement marked)."),
    validate: int = typer.Option(8, "--validate", help="With --search: placements measured end to end (0: none)."),
    front_cost: str = typer.Option("params", "--front-cost", help="With --search: params | macs on the fronts."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="With --search: one row per placement here."),
    warmup: int = typer.Option(3, "--warmup", help="Untimed iterations first."),
    iters: int = typer.Option(10, "--iters", help="Timed iterations."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON here."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG bar chart here."),
):
    """Params, FLOPs, speed and memory, in total and per stage; MBConv vs Fused per stage;
    with --search, every placement's cost and its Pareto fronts."""
    from fmb.profiling.report import run_profile

    check_outputs(json=json_path, plot=plot_path, csv=csv_path)
    if search:
        from fmb.profiling.search_report import run_search_command

        run_search_command(variant=variant, blocks=blocks, sets=sets, width_mult=width_mult, depth_mult=depth_mult,
                           num_classes=num_classes, resolution=resolution, batch_size=batch_size, mode=mode,
                           device=device, precision=precision, channels_last=channels_last, compile=compile,
                           fast=fast, compare_blocks=compare_blocks, validate=validate, front_cost=front_cost,
                           warmup=warmup, iters=iters, json_path=json_path, csv_path=csv_path,
                           plot_path=plot_path, console=console)
        return
    if csv_path:
        from fmb.errors import FmbError

        raise FmbError("--csv is written by --search (one row per placement); add --search or drop --csv")
    run_profile(variant=variant, blocks=blocks, sets=sets, width_mult=width_mult, depth_mult=depth_mult,
                num_classes=num_classes, resolution=resolution, batch_size=batch_size, mode=mode, device=device,
                precision=precision, channels_last=channels_last, compile=compile, fast=fast,
                compare_blocks=compare_blocks, warmup=warmup, iters=iters, json_path=json_path,
                plot_path=plot_path, console=console)


@app.command("predict")
def predict_cmd(
    checkpoint: Path = typer.Argument(..., help="A .ckpt written by fmb train, or an .onnx/.pt2 from fmb export."),
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
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset, 18 or newer (default: the exporter's)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output file if it exists."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write what was written and the check as JSON here."),
):
    """Export the network (ONNX, .pt2, safetensors, TorchScript) and check it by running the file."""
    from fmb.inference.export import export_model

    check_outputs(json=json_path)
    result = export_model(checkpoint, format=format, output=output, fold_bn=fold_bn, dynamic_batch=dynamic_batch,
                          ema=ema, resolution=resolution, batch_size=batch_size, tolerance=tolerance, opset=opset,
                          overwrite=overwrite)
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
