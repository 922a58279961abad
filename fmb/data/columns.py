"""Find the image and label columns of a `datasets` split and learn the class names.

The image column is the `Image` feature (or a path/bytes column the user names); the label
column is a `ClassLabel`, or an integer or string column with a common name. String labels
are encoded in sorted order; class names come from the ClassLabel when there is one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import numpy as np

from fmb.errors import FmbError, choice_error

IMAGE_NAMES = ("image", "img", "images", "picture", "image_path", "path", "file")
LABEL_NAMES = ("label", "labels", "fine_label", "class", "target", "category", "y")


@dataclass
class Columns:
    image: str
    label: str
    class_names: list[str]
    label_map: dict[str, int] | None = field(default=None)  # string label → index

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def encode(self, value) -> int:
        return self.label_map[value] if self.label_map is not None else int(value)


def _describe(features: datasets.Features) -> str:
    def kind(f):
        if isinstance(f, datasets.Value):
            return f.dtype
        return type(f).__name__
    return ", ".join(f"{name}:{kind(f)}" for name, f in features.items())


def _can_hold_image(feature) -> bool:
    if isinstance(feature, datasets.Image):
        return True
    if isinstance(feature, datasets.Value):
        return feature.dtype in ("string", "large_string", "binary", "large_binary")
    return isinstance(feature, dict) and ("bytes" in feature or "path" in feature)


def find_image_column(features: datasets.Features, override: str | None) -> str:
    columns = list(features)
    if override:
        if override not in features:
            raise choice_error("data.image_column", override, columns)
        if not _can_hold_image(features[override]):
            kind = _describe(datasets.Features({override: features[override]}))
            raise FmbError(f"data.image_column '{override}' has type {kind}; "
                           f"expected an Image column, image bytes or file paths (columns: {_describe(features)})")
        return override
    images = [name for name, f in features.items() if isinstance(f, datasets.Image)]
    if not images:  # files written by other tools: bytes/path under a usual name
        images = [name for name in IMAGE_NAMES if name in features and _can_hold_image(features[name])][:1]
    if len(images) == 1:
        return images[0]
    if not images:
        raise FmbError(f"no image column found (columns: {_describe(features)}); expected a datasets Image "
                       f"column, or name one with data.image_column=NAME")
    raise FmbError(f"several image columns ({', '.join(images)}); set data.image_column to one of them")


def find_label_column(features: datasets.Features, override: str | None, image_column: str) -> str:
    columns = [c for c in features if c != image_column]
    if override:
        if override not in features:
            raise choice_error("data.label_column", override, columns)
        return override
    class_labels = [name for name, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if len(class_labels) == 1:
        return class_labels[0]
    named = [name for name in LABEL_NAMES if name in features]
    if class_labels:  # several ClassLabels (cifar100: fine_label, coarse_label): prefer the usual names
        preferred = [name for name in named if name in class_labels]
        if preferred:
            return preferred[0]
        raise FmbError(f"several label columns ({', '.join(class_labels)}); set data.label_column to one of them")
    if named:
        return named[0]
    if all(isinstance(f, datasets.Image) for f in features.values()):
        raise FmbError(f"the data has images but no labels (columns: {_describe(features)}); an image folder needs "
                       "one sub-folder per class and at least 2 classes (a single class folder, or images "
                       "directly in the folder, carry no label); or name a label column with data.label_column=NAME")
    raise FmbError(f"no label column found (columns: {_describe(features)}); expected a ClassLabel column or "
                   f"one named {'/'.join(LABEL_NAMES[:3])}, or name one with data.label_column=NAME")


def _label_kind(feature, name: str) -> str:
    if isinstance(feature, datasets.ClassLabel):
        return "classlabel"
    if isinstance(feature, datasets.Value):
        if feature.dtype.startswith(("int", "uint")):
            return "int"
        if feature.dtype in ("string", "large_string"):
            return "str"
    kind = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
    raise FmbError(f"label column '{name}' has type {kind}; expected a ClassLabel, integer or string "
                   f"column (set data.label_column to another column)")


def resolve_columns(features: datasets.Features, image_column: str | None, label_column: str | None,
                    label_values) -> Columns:
    """Pick the columns and learn the classes. ``label_values`` is a zero-argument callable
    returning the train split's labels; it is only called for integer/string labels."""
    if features is None:
        raise FmbError("the data source does not declare its columns (features); expected a dataset with an "
                       "Image column and a label column, e.g. parquet written by datasets")
    image = find_image_column(features, image_column)
    label = find_label_column(features, label_column, image)
    if label == image:
        raise FmbError(f"data.label_column and data.image_column are both '{label}'; expected two columns")
    kind = _label_kind(features[label], label)
    if kind == "classlabel":
        return Columns(image, label, list(features[label].names))
    values = label_values(label)
    if kind == "str":
        names = sorted({str(v) for v in values if v is not None})
        if not names:
            raise FmbError(f"label column '{label}' holds no labels; expected class names")
        if len(names) < 2:
            raise _one_class(label, names[0])
        return Columns(image, label, names, {name: i for i, name in enumerate(names)})
    array = np.asarray(values, dtype=np.int64)
    if array.size == 0:
        raise FmbError(f"label column '{label}' holds no labels; expected class indices")
    if array.min() < 0:
        raise FmbError(f"label column '{label}' has negative labels (e.g. {int(array.min())}, an unlabelled "
                       f"split?); expected class indices 0..N-1")
    if len(np.unique(array)) < 2:
        raise _one_class(label, int(array[0]))
    return Columns(image, label, [str(i) for i in range(int(array.max()) + 1)])


def _one_class(label: str, value) -> FmbError:
    # A head sized from the one label's value would train to 100 % on nothing.
    return FmbError(f"label column '{label}' holds a single class (every example is {value!r}); expected at "
                    "least 2 classes to tell apart (is this the right split or label column?)")


def as_image_column(ds, column: str):
    """Keep images undecoded until a loader worker needs them: decoding (and bad-image
    handling) happens per example in the worker, never as a map over the whole set."""
    return ds.cast_column(column, datasets.Image(decode=False))
