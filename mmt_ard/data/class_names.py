"""Class names of a source: explicit, from a names file, a `ClassLabel`, a JSON sidecar or a known dataset."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

from .bad_samples import label_id

logger = logging.getLogger(__name__)

def read_sidecar(files: Sequence[str]) -> dict:
    """The JSON sidecar of data files (`foo.json` next to `foo.parquet`): the first one found, or `{}`."""
    for path in files:
        sidecar = os.path.splitext(path)[0] + ".json"
        if os.path.isfile(sidecar):
            with open(sidecar, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError(f'Sidecar {sidecar!r} holds a {type(data).__name__}: expected {{"classes": [...]}}.')
            return data
    return {}


def read_class_names_file(path: str) -> list[str]:
    """Class names from a file: a JSON list, a JSON object with `classes`/`class_names`/`names`, or one per line."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.lower().endswith(".json"):
        names = _names_in(json.loads(text))
        if names is None:
            raise ValueError(
                f"`class_names_file`={path!r} holds no list of names: give a JSON list or an object with `classes`."
            )
        return names
    return [line.strip() for line in text.splitlines() if line.strip()]


def _names_in(data) -> list[str] | None:
    """A JSON list of names, or the `classes`/`class_names`/`names` list of a JSON object."""
    if isinstance(data, dict):
        data = next((data[k] for k in ("classes", "class_names", "names") if isinstance(data.get(k), list)), None)
    return [str(n) for n in data] if isinstance(data, list) else None


def class_names_with_source(
    dataset,
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    class_names_file: str | None = None,
    *,
    sidecar: Sequence[str] | None = None,
    sidecar_source: str = "sidecar",
    known: str | None = None,
) -> tuple[list[str] | None, str | None]:
    """The class names in label-id order and where they came from, or `(None, None)` when nothing names them.

    Priority: `class_names`, `class_names_file`, the label column's `ClassLabel`, the data's own list (`sidecar`: a
    JSON sidecar's `classes`, a clip-benchmark repository's `classnames.txt`), the built-in names of a `known`
    dataset. A class list given explicitly must have as many names as the `ClassLabel`, if there is one.
    """
    import datasets

    from .known_datasets import CLASS_NAMES

    features = getattr(dataset, "features", None) or {}
    feature = features.get(label_column) if hasattr(features, "get") else None
    from_feature = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if class_names:
        names = [str(n) for n in class_names]
        if len(names) == 1 and "," in names[0]:
            names = [n.strip() for n in names[0].split(",")]
        origin = "class_names"
    elif class_names_file:
        names, origin = read_class_names_file(class_names_file), "class_names_file"
    elif from_feature:
        return from_feature, "ClassLabel"
    elif sidecar:
        names, origin = [str(n) for n in sidecar], sidecar_source
    elif known in CLASS_NAMES:
        return list(CLASS_NAMES[known]), "built-in"
    else:
        return None, None
    described = f"`class_names_file`={class_names_file!r}" if origin == "class_names_file" else f"`{origin}`"
    if from_feature and len(from_feature) != len(names):
        raise ValueError(
            f"{described} has {len(names)} names but column {label_column!r} is a ClassLabel with {len(from_feature)} "
            "classes: give one name per class."
        )
    if not names or any(not n.strip() for n in names):
        raise ValueError(f"{described} gave {names!r}: give one non-empty name per class.")
    return names, origin


def check_labels_in_classes(dataset, label_column: str, class_names: Sequence[str], described: str) -> None:
    """Every label of a map-style `dataset` is a class id or name of `class_names` (one pass over the label column;
    streams are not read ahead: their bad labels are bad samples). A `ValueError` naming `described` (where the
    names came from), the number of names and the labels outside them."""
    if not hasattr(dataset, "unique") or not hasattr(dataset, "__len__"):
        return
    try:
        values = dataset.unique(label_column)
    except (KeyError, ValueError, TypeError):
        return  # a column `find_columns` already vetted but `unique` cannot hash: the collator checks each sample
    name_to_id = {str(n): i for i, n in enumerate(class_names)}
    outside = []
    for value in values:
        try:
            label_id(value, class_names, name_to_id)
        except ValueError:
            outside.append(value)
    if outside:
        shown = sorted(outside, key=str)[:10]
        raise ValueError(
            f"{described} gives {len(class_names)} class names but column {label_column!r} holds labels {shown} "
            f"outside them{_first_sample_with(dataset, label_column, outside)}: give one name per class, in label-id "
            "order."
        )


def _first_sample_with(dataset, label_column: str, values) -> str:
    """` (first: shard 'x.tar', key '000123')` for webdataset rows read by `datasets` (`__url__`, `__key__`), else
    ``."""
    if not {"__url__", "__key__"} <= set(getattr(dataset, "column_names", None) or []):
        return ""
    bad = {str(v) for v in values}
    for row, value in enumerate(dataset[label_column]):
        if str(value) in bad:
            found = dataset.select_columns(["__url__", "__key__"])[row]
            return f" (first: shard {found['__url__']!r}, key {found['__key__']!r})"
    return ""


def resolve_class_names(
    dataset,
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    class_names_file: str | None = None,
    **found,
) -> list[str]:
    """The class names, in label-id order (see `class_names_with_source`); a `ValueError` when nothing names them.

    `found` takes the keyword arguments `sidecar`, `sidecar_source` and `known` of `class_names_with_source`.
    """
    names, _ = class_names_with_source(dataset, label_column, class_names, class_names_file, **found)
    if names is None:
        features = getattr(dataset, "features", None) or {}
        feature = features.get(label_column) if hasattr(features, "get") else None
        raise ValueError(
            f"Column {label_column!r} is not a `ClassLabel` (it is {feature!r}): pass the class names with "
            "`--class_names a b c` or `--class_names_file names.txt` (one per line, in label-id order), or put a "
            'JSON sidecar `{"classes": [...]}` next to the data file (`data.json` for `data.parquet`).'
        )
    return names
