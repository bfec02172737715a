"""Evaluation data: a seeded subset of a labelled image set, as pixels in [0,1] at the model's input size.

Data are read by the same loader as training (`mmt_ard.data.open_image_source`); a spec string is

* a local path: a parquet/arrow file (class names from its `ClassLabel` or its JSON sidecar `foo.json`:
  `{"classes": [...]}`), a folder of parquet/arrow files, an image folder (`root/<class>/<image>`, or
  `root/<split>/<class>/<image>`; class names from the folder names), or a `save_to_disk` folder;
* a short name of the usual zero-shot sets (`cifar10`, `pets`, `imagenet-r`, ... see `known_datasets.HUB_IDS`): its
  clip-benchmark WebDataset repository on the Hub (`clip-benchmark/wds_*`), whose `classnames.txt` and
  `zeroshot_classification_templates.txt` are used when present;
* any other `owner/name`: a Hub dataset loaded with `datasets.load_dataset(name, split=split)`.

A known dataset (matched by its name, `cifar10_test.parquet` included, or by its sidecar's `name`) gets its prompt
ensemble, and its built-in class names when the data carry none. Class names and templates can be overridden per
dataset by a user JSON file: `{"<dataset name>": {"classnames": [...], "templates": ["a photo of a {}.", ...]}}`
(`{c}` is accepted for `{}`).

The subset is `numpy.random.default_rng(seed).permutation(N)[:num_samples]`: the same images for every model and
every rerun, in a random order (so the first images, on which the gradient-masking checks run, span the classes).

Bad rows (an image that cannot be decoded, a label outside the class names) are handled as in training
(`mmt_ard.data.bad_sample`): `bad_samples="error"` raises a `BadSampleError` naming the dataset file and the row;
`"skip"` leaves the row out of the subset and records it in `EvalData.skipped` (`skipped_rows` puts the count in
each result).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data import (
    bad_sample,
    bad_sample_policy,
    class_names_with_source,
    decode_image,
    find_columns,
    label_id,
    open_image_source,
    short_name,
)
from ..data.known_datasets import DEFAULT_TEMPLATES, HUB_IDS, TEMPLATES, known_dataset, normalize_template
from ..data.webdataset import is_brace_pattern

__all__ = ["EvalData", "load_eval_data", "load_user_meta", "short_name", "skipped_rows", "source_id", "subset_indices"]
MAX_LISTED_SKIPS = 50  # skipped rows listed one by one in a result (all are counted)


@dataclass
class EvalData:
    """A labelled image subset ready for attacks.

    Args:
        name: display name (a result key).
        images: `(N, 3, S, S)` uint8 (0-255) or float in [0,1].
        labels: `(N,)` int64 class indices.
        class_names: one name per class index.
        templates: prompt templates, each with one `{}`.
        source: where the data came from (path or Hub id).
        dataset_size: size of the split the subset was drawn from.
        meta: provenance of the class names and templates.
        skipped: rows of the split left out as bad (`bad_samples="skip"`): row index -> why.
        indices: `(N,)` each sample's row in the split (default `0..N-1`): its identity in per-sample records and
            in its random streams, whichever subset, order or shard it is evaluated in.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    templates: list[str]
    source: str = "in-memory"
    dataset_size: int | None = None
    meta: dict = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)
    indices: list[int] | None = None

    def __post_init__(self):
        self.labels = torch.as_tensor(self.labels).long().view(-1)
        self.indices = list(range(len(self.labels))) if self.indices is None else [int(i) for i in self.indices]
        if len(self.indices) != len(self.labels) or len(set(self.indices)) != len(self.indices):
            raise ValueError(
                f"Dataset {self.name!r}: `indices` must give each of the {len(self.labels)} samples its own row "
                f"number (got {len(self.indices)} values, {len(set(self.indices))} distinct)."
            )
        if self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(
                f"`images` of dataset {self.name!r} has shape {tuple(self.images.shape)}: expected (N, 3, H, W) RGB."
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"Dataset {self.name!r}: {len(self.images)} images but {len(self.labels)} labels.")
        if not self.class_names:
            raise ValueError(f"Dataset {self.name!r} has no class names: pass them in a user JSON (`classnames`).")
        bad = self.labels[(self.labels < 0) | (self.labels >= len(self.class_names))]
        if bad.numel():
            raise ValueError(
                f"Dataset {self.name!r} has labels {sorted(set(bad.tolist()))[:10]} outside its "
                f"{len(self.class_names)} class names: give the full class list (user JSON `classnames`)."
            )
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError(f"Dataset {self.name!r}: templates {self.templates!r} need one '{{}}' each.")
        if self.dataset_size is None:
            self.dataset_size = len(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def pixels(self, start: int = 0, end: int | None = None) -> torch.Tensor:
        """`(n, 3, S, S)` float32 in [0,1] of images `start:end`."""
        x = self.images[start:end]
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def subset(self, indices) -> EvalData:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return EvalData(
            self.name,
            self.images[idx],
            self.labels[idx],
            self.class_names,
            self.templates,
            self.source,
            self.dataset_size,
            dict(self.meta),
            dict(self.skipped),
            [self.indices[i] for i in idx.tolist()],
        )


def subset_indices(n_total: int, num_samples: int | None, seed: int) -> list[int]:
    """The deterministic seeded subset: a permutation of `range(n_total)` cut at `num_samples`."""
    order = np.random.default_rng(seed).permutation(n_total)
    if num_samples is not None:
        order = order[: int(num_samples)]
    return [int(i) for i in order]


def load_user_meta(path: str | None) -> dict[str, dict]:
    """Read a user JSON of per-dataset `classnames` / `templates`."""
    if path is None:
        return {}
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`class_names_json`={path!r} does not exist: give a JSON file path.")
    with open(path) as f:
        try:
            data = json.load(f)
        except ValueError as err:
            raise ValueError(f"`class_names_json`={path!r} is not valid JSON ({err}).") from err
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(
            f'{path}: expected {{"<dataset>": {{"classnames": [...], "templates": [...]}}}}, got '
            f"{type(data).__name__} with values {sorted({type(v).__name__ for v in getattr(data, 'values', list)()})}."
        )
    for name, entry in data.items():
        unknown = set(entry) - {"classnames", "templates"}
        if unknown:
            raise ValueError(f"{path}: dataset {name!r} has unknown keys {sorted(unknown)}; use classnames/templates.")
    return data


def skipped_rows(data: EvalData) -> dict:
    """What a result records of the rows left out: `num_skipped`, and `skipped_rows` (`[{"row", "reason"}]`, the
    first `MAX_LISTED_SKIPS`) when there are any. Accuracies are over the `num_samples` rows evaluated."""
    out: dict = {"num_skipped": len(data.skipped)}
    if data.skipped:
        rows = sorted(data.skipped.items())[:MAX_LISTED_SKIPS]
        out["skipped_rows"] = [{"row": row, "reason": reason} for row, reason in rows]
    return out


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    if all(t.dtype == torch.uint8 for t in images):
        return torch.stack(images)
    return torch.stack([t.float() / 255.0 if t.dtype == torch.uint8 else t.float() for t in images])


def source_id(spec) -> str | None:
    """What a dataset spec points at (an absolute path, a Hub id), to tell same-named datasets apart on resume."""
    if isinstance(spec, str):
        return os.path.abspath(spec) if os.path.exists(spec) else spec
    return None


def load_eval_data(
    spec,
    *,
    image_size: int,
    num_samples: int | None,
    seed: int = 0,
    split: str = "test",
    templates: str = "ensemble",
    single_template: str = "This is a photo of a {}",
    user_meta: dict | None = None,
    name: str | None = None,
    bad_samples: str = "error",
) -> EvalData:
    """Load a seeded subset of a dataset as `EvalData` at `image_size` px.

    Args:
        spec: an `EvalData`, a `datasets.Dataset`, a local path, a short name (`cifar10`) or a Hub id.
        image_size: the model's input size `S`.
        num_samples: subset size (`None`: the whole split).
        seed: subset seed.
        split: split of Hub datasets and of local data named by split (a local source with a single split serves
            any `split`).
        templates: `ensemble` (per-dataset prompts) or `single`.
        single_template: the template of `templates="single"`.
        user_meta: per-dataset `classnames` / `templates` overrides (see `load_user_meta`).
        name: display name (default: derived from the spec).
        bad_samples: a row whose image cannot be decoded or whose label is not a class: `error` raises a
            `BadSampleError` naming the dataset file and the row; `skip` leaves it out (`EvalData.skipped`).
    """
    user_meta = user_meta or {}
    policy = bad_sample_policy(bad_samples)
    if isinstance(spec, EvalData):
        data = spec
        if num_samples is not None and num_samples < len(data):
            data = data.subset(subset_indices(len(data), num_samples, seed))
        return data  # its own templates; float images of another size are resized inside the model

    if hasattr(spec, "column_names") and hasattr(spec, "select"):  # a datasets.Dataset
        display = name or getattr(getattr(spec, "info", None), "dataset_name", None) or "dataset"
        image_col, label_col = find_columns(spec)
        names, _ = class_names_with_source(spec, label_col, _meta(user_meta, display, "classnames"))
        selection = _select_rows(spec, image_col, label_col, num_samples, seed)
        args = (display, selection, image_size, names, None, "in-memory Dataset")
        return _finish(*args, templates, single_template, user_meta, {}, policy=policy)

    if not isinstance(spec, str):
        raise TypeError(f"Dataset spec of type {type(spec).__name__}: pass a path, a Hub id, a name or an EvalData.")
    display = name or short_name(spec)
    local = os.path.exists(spec) or is_brace_pattern(spec)  # a brace pattern of local shards
    location = spec
    if not local:
        key = known_dataset(spec)
        location = HUB_IDS.get(key, spec) if key is not None else spec
        if "/" not in location:
            raise ValueError(
                f"Dataset {spec!r} is neither a local path, nor a known name ({sorted(HUB_IDS)}), nor a Hub id "
                "(`owner/name`): give one of those."
            )
    source = open_image_source(
        location, split, class_names=_meta(user_meta, display, "classnames"), name=display, any_split=local
    )
    names, origin = source.class_names, source.class_names_source
    if origin == "folder names":
        names = [c.replace("_", " ") for c in names]
    selection = _select_rows(source.dataset, source.image_column, source.label_column, num_samples, seed)
    info = {"format": source.format, "classnames_source": "user json" if origin == "class_names" else origin}
    return _finish(
        display,
        selection,
        image_size,
        names,
        source.known,
        source.location,
        templates,
        single_template,
        user_meta,
        info,
        source.templates,
        policy=policy,
        files=source.files,
    )


def _meta(user_meta: dict, name: str, field_name: str):
    entry = user_meta.get(name) or {}
    value = entry.get(field_name)
    if value is None:
        return None
    if field_name == "templates":
        return [normalize_template(t) for t in value]
    return [str(v) for v in value]


def _templates_for(display, key, mode, single, user_meta, extra: list[str] | None) -> tuple[list[str], str]:
    if mode == "single":
        return [single], "single"
    user = _meta(user_meta, display, "templates")
    if user:
        return user, "user json"
    if key is not None and key in TEMPLATES:
        return list(TEMPLATES[key]), f"built-in ({key})"
    if extra:
        return extra, "dataset"
    return list(DEFAULT_TEMPLATES), "default"


def _select_rows(ds, image_col: str, label_col: str, num_samples, seed) -> tuple[dict, list[int], int]:
    """The seeded subset of a `datasets.Dataset`: `({"image": [...], "label": [...]}, indices, N)`, images still
    encoded (decoded by `_finish`, where a bad one can be named and skipped)."""
    import datasets

    n_total = len(ds)
    indices = subset_indices(n_total, num_samples, seed)
    features = getattr(ds, "features", None) or {}
    if isinstance(features.get(image_col), datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    sub = ds.select(indices)
    if hasattr(sub, "with_format"):
        sub = sub.with_format(None)
    return {"image": sub[image_col], "label": sub[label_col]}, indices, n_total


def _row_name(row: int, value, source: str, files: list[str]) -> str:
    """Where a row lives, for messages: `row 12 of /data/x.parquet`, `row 3 (/data/cat/3.png)`."""
    path = value.get("path") if isinstance(value, dict) else None
    if files and files[0].lower().endswith(".tar"):  # webdataset: the shard, and the sample's key in `path`
        located = _locate_in_files(row, files)
        if located is not None:
            return f"sample {located[1]} ({path or 'no file name'}) of shard {located[0]} (row {row} of the split)"
    if path:
        return f"row {row} ({path})"
    if len(files) > 1:
        located = _locate_in_files(row, files)
        if located is not None:
            return f"row {located[1]} of {located[0]} (row {row} of the split)"
    where = files[0] if len(files) == 1 else source
    return f"row {row} of {where}"


def _locate_in_files(row: int, files: list[str]) -> tuple[str, int] | None:
    """`(file, row within it)` of a row of parquet (or webdataset tar) `files` read one after the other; None when
    they are neither."""
    import pyarrow.parquet as pq

    from ..data.webdataset import count_tar_samples

    start = 0
    for path in files:
        try:
            count = count_tar_samples(path) if path.lower().endswith(".tar") else pq.read_metadata(path).num_rows
        except Exception:  # noqa: BLE001 - not parquet, unreadable: no location
            return None
        if row < start + count:
            return path, row - start
        start += count
    return None


def _decode_rows(display, rows, indices, image_size, class_names, policy, source, files):
    """Decode each image and check each label as the training collator does; returns `(images, labels, skipped)`."""
    skip = "leave such rows out with `--bad-samples skip` (`bad_samples='skip'`; they are counted in the results)"
    fixes = {
        "image": f"Fix or remove it, or {skip}",
        "label": f"Give the full class list (`--class-names-json`), fix the row, or {skip}",
    }
    name_to_id = {n: i for i, n in enumerate(class_names)}
    images, labels, skipped = [], [], {}
    for row, value, label in zip(indices, rows["image"], rows["label"]):
        part = "label"
        try:
            y = label_id(label, class_names, name_to_id)
            part = "image"
            if value is None:
                raise ValueError("the image is missing (None)")
            x = decode_image(value, image_size)
        except Exception as err:  # noqa: BLE001 - decoding errors come as OSError, ValueError, SyntaxError, ...
            where = f"in dataset {display!r}: {_row_name(row, value, source, files)}"
            skipped[row] = bad_sample(policy, where, err, fixes[part])
            continue
        images.append(x)
        labels.append(y)
    if not images:
        raise ValueError(
            f"Dataset {display!r} ({source}): every one of its {len(indices)} rows is bad (e.g. "
            f"{next(iter(skipped.values()), '-')}): check the image and label columns and the class names."
        )
    return images, labels, skipped


def _finish(
    display,
    selection,
    image_size,
    class_names,
    key,
    source,
    templates_mode,
    single_template,
    user_meta,
    extra_meta,
    dataset_templates=None,
    policy: str = "raise",
    files: list[str] | None = None,
) -> EvalData:
    rows, indices, n_total = selection
    if not class_names:
        raise ValueError(
            f"Dataset {display!r} ({source}) has no class names (its label column is not a ClassLabel and no sidecar "
            f'`{display}.json` lists `classes`): pass a JSON with `--class-names-json` holding {{"{display}": '
            '{"classnames": [...]}}.'
        )
    images, labels, skipped = _decode_rows(
        display, rows, indices, image_size, list(class_names), policy, source, list(files or [])
    )
    templ, templ_source = _templates_for(display, key, templates_mode, single_template, user_meta, dataset_templates)
    kept = [row for row in indices if row not in skipped]
    meta = {"templates_source": templ_source, "indices_head": kept[:10], **extra_meta}
    labels = torch.as_tensor(labels, dtype=torch.long)
    return EvalData(display, _stack(images), labels, list(class_names), templ, source, n_total, meta, skipped, kept)
