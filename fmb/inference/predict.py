"""`fmb predict` as a library function: a checkpoint (or a file written by `fmb export`) and
images → top-k labels with probabilities.

Inputs are image files, folders (searched recursively for images) or a dataset: anything
`data.source` takes (a save_to_disk directory, parquet/arrow/csv files, a hub id, `digits`),
read from one split. Images get the run's own eval transform (resize, centre crop,
normalisation with the run's mean/std) at the run's eval size; an exported .onnx (run by
onnxruntime) or .pt2 brings the same settings in its metadata. An image that cannot be
decoded is reported, counted and skipped; the others are still predicted.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from fmb.errors import FmbError
from fmb.inference.device import autocast, check_precision, resolve_device

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
DATA_FILE_EXTENSIONS = (".parquet", ".arrow", ".csv", ".json", ".jsonl")
SPLIT_ORDER = ("test", "validation", "valid", "val", "train")


@dataclass
class Classifier:
    """A network ready for inference, with what it needs to read images: a checkpoint's
    module, or an exported file (`run` then computes the logits and `model` is None)."""
    model: torch.nn.Module | None  # fmb's ImageClassifier (eval mode)
    class_names: list[str]
    eval_image_size: int
    crop_ratio: float
    weights: str  # "ema" or "raw"
    checkpoint: str
    preprocessing: dict = field(default_factory=dict)  # build_eval_transform's interpolation, mean, std, preprocessing
    train_image_size: int | None = None
    model_fields: dict = field(default_factory=dict)  # the model section: variant, blocks, ... (memory estimate)
    run: Callable[[torch.Tensor], torch.Tensor] | None = None
    fixed_size: bool = False  # an export takes only the size it was written for


def load_classifier(checkpoint: str | Path, *, ema: bool = True) -> Classifier:
    """The checkpoint's module on CPU with its EMA weights (when it kept them and `ema`) or raw ones."""
    from fmb.data.transforms import preprocessing_kwargs
    from fmb.training.evaluate import load_checkpoint, restore_module

    ckpt = load_checkpoint(checkpoint)
    module = restore_module(ckpt, ema=ema)
    cfg = module.cfg
    names = [str(n) for n in (module.hparams.get("class_names") or range(module.hparams["num_classes"]))]
    size = cfg.data.eval_image_size or cfg.data.image_size
    if size is None:
        raise FmbError(f"{checkpoint} does not record its eval image size; pass --resolution")
    return Classifier(module, names, int(size), float(cfg.data.crop_ratio),
                      "ema" if ema and "current_model_state" in ckpt else "raw", str(checkpoint),
                      preprocessing_kwargs(cfg.data), cfg.data.image_size,
                      _model_fields(module.hparams["config"]["model"]))


def _model_fields(model: dict) -> dict:
    return {"variant_name": model["variant"], "blocks": model.get("blocks"),
            "stage_overrides": {int(k): v for k, v in (model.get("stage_overrides") or {}).items()} or None,
            "width_mult": model.get("width_mult"), "depth_mult": model.get("depth_mult")}


def load_exported(path: str | Path, device: torch.device, precision: str) -> Classifier:
    """An .onnx or .pt2 written by `fmb export`, with the classes and preprocessing its metadata holds."""
    from fmb.inference.exported import exported_runner, read_metadata

    path = Path(path)
    if not path.is_file():
        raise FmbError(f"exported model not found: {path}; expected a file written by fmb export, or a .ckpt")
    meta = read_metadata(path)
    prep = {"mean": tuple(json.loads(meta["mean"])), "std": tuple(json.loads(meta["std"])),
            "interpolation": meta["interpolation"], "preprocessing": meta.get("preprocessing", "fmb")}
    train_size = meta.get("image_size")
    return Classifier(None, json.loads(meta["class_names"]), int(meta["eval_image_size"]), float(meta["crop_ratio"]),
                      meta.get("weights", "raw"), str(path), prep, int(train_size) if str(train_size).isdigit() else None,
                      _model_fields(json.loads(meta["model"])), exported_runner(path, device, precision),
                      fixed_size=True)


@dataclass
class PredictResult:
    checkpoint: str
    weights: str
    device: str
    precision: str
    top_k: int
    predictions: list[dict] = field(default_factory=list)  # {"input", "top": [{"label", "index", "prob"}]}
    skipped: list[dict] = field(default_factory=list)  # {"input", "error"}

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "weights": self.weights, "device": self.device,
                "precision": self.precision, "top_k": self.top_k, "images": len(self.predictions),
                "skipped_count": len(self.skipped), "skipped": self.skipped, "predictions": self.predictions}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        """One row per image: input, label_1, prob_1, ..., label_k, prob_k."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["input"] + [f"{col}_{i}" for i in range(1, self.top_k + 1) for col in ("label", "prob")])
        for row in self.predictions:
            writer.writerow([row["input"]] + [v for t in row["top"] for v in (t["label"], f"{t['prob']:.6f}")])
        return buffer.getvalue()


# ---- inputs ----------------------------------------------------------------------------
Item = tuple[str, Callable[[], object]]  # (name shown to the user, decoder returning a PIL image)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _is_dataset(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in DATA_FILE_EXTENSIONS
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def _dataset_items(source: str, split: str | None) -> Iterator[Item]:
    import datasets

    from fmb.data.columns import find_image_column
    from fmb.data.sources import load_source
    from fmb.data.transforms import decode_image

    splits = load_source(source)
    if split is None:
        split = next((s for s in SPLIT_ORDER if s in splits), next(iter(splits)))
    elif split not in splits:
        raise FmbError(f"dataset '{source}' has no split '{split}'; expected one of {', '.join(splits)}")
    hf = splits[split]
    column = find_image_column(hf.features, None)
    if isinstance(hf.features[column], datasets.Image):
        hf = hf.cast_column(column, datasets.Image(decode=False))
    hf = hf.select_columns([column])
    for i in range(len(hf)):
        yield f"{source}[{split}][{i}]", (lambda i=i: decode_image(hf[i][column]))


def _looks_like_path(text: str) -> bool:
    """Hub ids are 'name' or 'owner/name'; a missing file is not one of them."""
    return (text.startswith((".", "/", "~")) or text.count("/") >= 2 or "\\" in text
            or Path(text).suffix.lower() in IMAGE_EXTENSIONS + DATA_FILE_EXTENSIONS)


def iter_inputs(inputs: list[str | Path], split: str | None = None) -> Iterator[Item]:
    """Every image the inputs name, in order: files as given, folders searched recursively,
    datasets row by row."""
    from fmb.data.transforms import decode_image

    for raw in inputs:
        path = Path(str(raw)).expanduser()
        if path.exists() and _is_dataset(path):
            yield from _dataset_items(str(path), split)
        elif path.is_dir():
            files = _image_files(path)
            if not files:
                raise FmbError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)}); expected image "
                               "files, or a dataset directory written by save_to_disk")
            for file in files:
                yield str(file), (lambda file=file: decode_image(str(file)))
        elif path.is_file():
            yield str(path), (lambda path=path: decode_image(str(path)))
        elif _looks_like_path(str(raw)):
            raise FmbError(f"input {raw} does not exist; expected an image file, a folder of images or a dataset")
        else:  # not a local path: a dataset source such as `digits` or a hub id
            yield from _dataset_items(str(raw), split)


# ---- prediction ------------------------------------------------------------------------
def predict(checkpoint: str | Path, inputs: list[str | Path], *, top_k: int = 5, batch_size: int = 32,
            device: str = "auto", precision: str = "fp32", ema: bool = True, split: str | None = None,
            resolution: int | None = None, on_progress: Callable[[int], None] | None = None) -> PredictResult:
    """Top-k classes and probabilities for every image the inputs name (see `iter_inputs`)."""
    from fmb.data.transforms import build_eval_transform
    from fmb.inference.exported import EXPORTED_SUFFIXES
    from fmb.training.memory import check_fits, model_activation_bytes

    if not inputs:
        raise FmbError("no inputs; expected image files, folders or a dataset after the checkpoint")
    if top_k < 1:
        raise FmbError(f"--top-k {top_k}; expected 1 or more")
    if batch_size < 1:
        raise FmbError(f"--batch-size {batch_size}; expected 1 or more")
    if resolution is not None and resolution < 16:
        raise FmbError(f"--resolution {resolution}; expected 16 px or more (the network downsamples 32x), e.g. 224")
    target = resolve_device(device)
    precision = check_precision(precision, target)
    exported = Path(checkpoint).suffix.lower() in EXPORTED_SUFFIXES
    if exported and not ema:
        raise FmbError(f"--no-ema: {checkpoint} holds the one set of weights it was exported with; expected the "
                       "run's .ckpt for --no-ema")
    classifier = load_exported(checkpoint, target, precision) if exported else load_classifier(checkpoint, ema=ema)
    size = int(resolution or classifier.eval_image_size)
    if classifier.fixed_size and size != classifier.eval_image_size:
        raise FmbError(f"--resolution {size}: {checkpoint} was exported for {classifier.eval_image_size} px; expected "
                       f"--resolution {classifier.eval_image_size} (or export again with --resolution {size})")
    need = model_activation_bytes(**classifier.model_fields, image_size=size, batch_size=batch_size, training=False,
                                  bytes_per_value=4 if precision == "fp32" else 2)
    check_fits(None, size, batch_size, target.type, training=False, size_key="--resolution",
               batch_key="--batch-size", need=need)  # before the model grows to what the kernel kills
    if classifier.run is None:
        model = classifier.model.to(target)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), autocast(precision, target):
                return model(batch.to(target))
    else:
        forward = classifier.run
    transform = build_eval_transform(size, classifier.crop_ratio, normalize=True, **classifier.preprocessing)
    k = min(top_k, len(classifier.class_names))
    result = PredictResult(classifier.checkpoint, classifier.weights, str(target), precision, k)

    def run(names: list[str], images: list[torch.Tensor]) -> None:
        logits = forward(torch.stack(images))
        probs, indices = logits.float().softmax(-1).topk(k, dim=-1)
        for name, p_row, i_row in zip(names, probs.cpu().tolist(), indices.cpu().tolist()):
            result.predictions.append({"input": name, "top": [
                {"label": classifier.class_names[i], "index": i, "prob": p} for p, i in zip(p_row, i_row)]})
        if on_progress is not None:
            on_progress(len(result.predictions))

    names, images = [], []
    for name, decode in iter_inputs(inputs, split):
        try:
            images.append(transform(decode()))
        except Exception as exc:  # noqa: BLE001 - any decoder failure: report, count, go on
            result.skipped.append({"input": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                                   if str(exc) else type(exc).__name__})
            continue
        names.append(name)
        if len(images) == batch_size:
            run(names, images)
            names, images = [], []
    if images:
        run(names, images)
    if not result.predictions and not result.skipped:
        raise FmbError(f"no images found in {', '.join(map(str, inputs))}")
    if not result.predictions:  # a result of nothing is not a success
        first = result.skipped[0]
        raise FmbError(f"none of the {len(result.skipped)} image(s) could be read (first: {first['input']}: "
                       f"{first['error']}); expected image files PIL can open")
    return result
