"""Image-classification data for MMT-ARD, for training and evaluation alike: loading, class names, decoding, the
batch collator.

Sources (`load_image_dataset`, `open_image_source`): a Hub dataset id, a local directory (an image folder
`class_x/img.png`, a folder of parquet/arrow files, or a `save_to_disk` folder), or local `.parquet` / `.arrow`
files; map-style or streaming (`IterableDataset`). `open_image_source` also finds what a source says about itself:
its image/label columns, its class names (explicit names, a names file, the `ClassLabel`, a JSON sidecar
`{"classes": [...]}` next to a data file, or the built-in names of a known dataset such as `cifar10`, see
`mmt_ard.known_datasets`) and prompt templates. Images stay encoded in the dataset and are decoded by
`ImageClassificationCollator` (training) or `decode_image` (evaluation), which turn them into RGB, resize the
shorter side to the model's input size, centre-crop, and keep pixels in [0,1] (normalisation lives in the model, so
attack budgets are in pixel units).

Bad data (`bad_samples`): an unreadable/truncated image or a label outside the class list raises a `BadSampleError`
naming the sample (`raise`), or is dropped from its batch, counted once per sample and logged (`skip`). Grayscale,
RGBA, CMYK, palette and 16-bit images are converted to RGB, and images smaller than the input size are upsampled:
those are not errors.

>>> source = open_image_source("data/cifar10_test.parquet", split="test")  # class names from cifar10_test.json
>>> ds = prepare_dataset(source.dataset, source.image_column, source.label_column, max_samples=1000)
>>> collate = ImageClassificationCollator(224, class_names=source.class_names)
>>> batch = collate([ds[0], ds[1]])  # {"pixel_values": (2, 3, 224, 224) in [0,1], "labels": (2,), "sample_id": (2,)}
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("raise", "skip")
DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
# column names tried, in order, when a caller names none (`find_columns`)
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "cls", "fine_label", "target", "class")
ID_COLUMN = "sample_id"
# columns kept to name a sample in error messages
NAME_COLUMNS = ("filename", "file_name", "path", "image_path", "id")
_LOGGED_SKIPS = 10
COLLATOR_FIX = (
    "Fix or remove it, or set `--bad_samples skip` (`bad_samples='skip'`) to drop such samples (they are counted and "
    "logged)"
)


class BadSampleError(ValueError):
    """A sample whose image cannot be decoded or whose label is not a class (with `bad_samples='raise'`)."""


def bad_sample_policy(value: str, field_name: str = "bad_samples") -> str:
    """`raise` or `skip` from a user's value (`error` is evaluation's word for `raise`)."""
    policy = {"error": "raise"}.get(value, value) if isinstance(value, str) else value
    if policy not in BAD_SAMPLE_POLICIES:
        raise ValueError(f"`{field_name}`={value!r}: use 'error' (or 'raise') to stop on a bad sample, or 'skip'.")
    return policy


def bad_sample(policy: str, name: str, err: BaseException, fix: str) -> str:
    """The reason a sample is bad (`"OSError: image file is truncated"`); raises a `BadSampleError` naming the sample
    (`name`), the reason and `fix` when `policy` is `raise`."""
    reason = f"{type(err).__name__}: {err}"
    if policy == "raise":
        raise BadSampleError(f"Bad sample {name}: {reason}. {fix.rstrip('.')}.") from err
    return reason


def label_id(value, class_names: Sequence[str], name_to_id: dict[str, int] | None = None) -> int:
    """A label (an id, a numeric string or a class name) as an id in `[0, len(class_names))`; a `ValueError` saying
    why not."""
    if torch.is_tensor(value) or isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, str):
        names = name_to_id if name_to_id is not None else {n: i for i, n in enumerate(class_names)}
        if value in names:
            return names[value]
        if not value.lstrip("-").isdigit():
            raise ValueError(f"label {value!r} is not one of the {len(class_names)} class names")
        value = int(value)
    is_integral = isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not is_integral:
        raise ValueError(f"label {value!r} is not a class id")
    value = int(value)
    if not 0 <= value < len(class_names):
        raise ValueError(f"label {value} is outside the {len(class_names)} classes [0, {len(class_names) - 1}]")
    return value


# ---- loading ----


def _data_file_builder(paths: Sequence[str]) -> str:
    exts = {os.path.splitext(p)[1].lower() for p in paths}
    builders = {DATA_FILE_BUILDERS.get(e) for e in exts}
    if None in builders or len(builders) != 1:
        raise ValueError(
            f"Data files {list(paths)[:3]} have extensions {sorted(exts)}: give only `.parquet` or only `.arrow` "
            "files, a directory (image folder or parquet/arrow files) or a Hub dataset id."
        )
    return builders.pop()


def _pick_split(available: dict, split: str, where: str, any_split: bool) -> tuple[str, object]:
    """`(split, available[split])`; with `any_split`, a source holding a single split serves any `split`."""
    if split in available:
        return split, available[split]
    if any_split and len(available) == 1:
        return next(iter(available.items()))
    raise ValueError(
        f"Split {split!r} is not in {where!r}: it has {sorted(available)}. Pick one of them (`--train_split` / "
        "`--eval_split` in training, `--split` in mmt-ard-eval)."
    )


def _unreadable_file(files: Sequence[str], builder: str) -> str:
    """The first of `files` whose parquet footer cannot be read (all of them, joined, when none or not parquet)."""
    if builder == "parquet":
        import pyarrow.parquet as pq

        for path in files:
            try:
                pq.read_metadata(path)
            except Exception:  # noqa: BLE001 - any reason it cannot be read
                return path
    return ", ".join(files)


def _data_files_by_split(root: str) -> dict[str, list[str]]:
    """The `.parquet`/`.arrow` files under the folder `root`, grouped into splits by their names as `datasets` does
    (`test-00000-of-00001.parquet`, `train/x.parquet`, `data_validation.arrow`; no split in any name: all `train`).
    Other files (a JSON sidecar, a README) are left out."""
    from datasets.data_files import DataFilesDict, get_data_patterns

    if not any(os.path.splitext(n)[1].lower() in DATA_FILE_BUILDERS for _, _, names in os.walk(root) for n in names):
        return {}
    found = DataFilesDict.from_patterns(get_data_patterns(root), base_path=root)
    by_split = {
        name: sorted(str(f) for f in files if os.path.splitext(str(f))[1].lower() in DATA_FILE_BUILDERS)
        for name, files in found.items()
    }
    return {name: files for name, files in by_split.items() if files}


def _load(source, split: str, config_name, streaming: bool, cache_dir, any_split: bool):
    """`(dataset, format, data files)` of `load_image_dataset` (format: parquet, arrow, imagefolder or hub)."""
    import datasets

    if isinstance(source, (list, tuple)) or (isinstance(source, str) and os.path.isfile(source)):
        files = [source] if isinstance(source, str) else list(source)
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"Data files {missing} do not exist.")
        builder = _data_file_builder(files)
        try:
            loaded = datasets.load_dataset(
                builder, data_files={split: files}, split=split, streaming=streaming, cache_dir=cache_dir
            )
        except Exception as err:  # pyarrow's ArrowInvalid, datasets' DatasetGenerationError, OSError
            raise ValueError(
                f"Data file {_unreadable_file(files, builder)!r} cannot be read as {builder} ({type(err).__name__}: "
                f"{' '.join(str(err).split())}): give {builder} files written by pyarrow or `datasets`."
            ) from err
        return loaded, builder, files
    if not isinstance(source, str) or not source:
        raise ValueError(f"`dataset_name`={source!r}: give a Hub dataset id, a local directory or data files.")
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, "dataset_dict.json")) or os.path.isfile(
            os.path.join(source, "state.json")
        ):
            loaded = datasets.load_from_disk(source)
            if isinstance(loaded, datasets.DatasetDict):
                _, loaded = _pick_split(dict(loaded), split, source, any_split)
            return (loaded.to_iterable_dataset() if streaming else loaded), "arrow", []
        by_split = _data_files_by_split(source)
        if by_split:
            _, files = _pick_split(by_split, split, source, any_split)
            return _load(files, split, config_name, streaming, cache_dir, any_split)
        from datasets.data_files import get_data_patterns

        try:
            splits = dict.fromkeys(get_data_patterns(source))
        except FileNotFoundError as err:
            raise ValueError(
                f"{source!r} holds no parquet file, no arrow file, no images in class sub-folders and no "
                "`save_to_disk` dataset: expected `root/<class>/<image>` (optionally under `root/<split>/`), "
                "`*.parquet` / `*.arrow` files, or a folder written by `Dataset.save_to_disk`."
            ) from err
        used, _ = _pick_split(splits, split, source, any_split)
        loaded = datasets.load_dataset(source, split=used, streaming=streaming, cache_dir=cache_dir)
        return loaded, "imagefolder", []
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(f"`dataset_name`={source!r} looks like a local path but does not exist.")
    try:
        loaded = datasets.load_dataset(source, config_name, split=split, streaming=streaming, cache_dir=cache_dir)
    except ValueError as err:
        if "split" in str(err).lower():
            raise ValueError(
                f"Split {split!r} is not available in {source!r} ({err}). Pick another with `--train_split` / "
                "`--eval_split`."
            ) from err
        raise
    except (ConnectionError, OSError) as err:
        raise OSError(
            f"Could not load dataset {source!r}: give a local directory or data files, or a Hub dataset id reachable "
            f"from this machine (HF_DATASETS_OFFLINE is {os.environ.get('HF_DATASETS_OFFLINE', 'unset')}). ({err})"
        ) from err
    return loaded, "hub", []


def load_image_dataset(
    source: str | Sequence[str],
    split: str = "train",
    *,
    config_name: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    any_split: bool = False,
):
    """Load one split of an image-classification dataset.

    Args:
        source: a Hub dataset id (`ILSVRC/imagenet-1k`), a local directory (image folder with one sub-folder per
            class and optional `train/`, `validation/`, `test/` splits; parquet/arrow files named by split; or a
            `save_to_disk` folder), or one or more local `.parquet` / `.arrow` files (then `split` only names them).
        split: the split to load.
        config_name: the Hub dataset's configuration name, if it has several.
        streaming: return an `IterableDataset` that reads as it goes (for ImageNet-size data).
        cache_dir: where `datasets` keeps its Arrow cache.
        any_split: a local directory that holds a single split serves any `split` (evaluation reads
            `root/<class>/<image>` whatever its split is called); otherwise a missing split is an error.

    Returns:
        A `datasets.Dataset` (or `IterableDataset` when streaming).
    """
    return _load(source, split, config_name, streaming, cache_dir, any_split)[0]


# ---- what a source says about itself: columns, class names, known datasets ----
_GENERIC = re.compile(r"^(train|test|testing|val|valid|validation|eval|data|images?)([-_.].*)?$", re.IGNORECASE)


def short_name(spec: str) -> str:
    """Display name: the registry name, the Hub id, or the base name of a local path, skipping generic parts
    (`cifar10/test` and `cifar10/data/test-00000-of-00001.parquet` are both `cifar10`)."""
    if not os.path.exists(spec):
        return spec
    parts = os.path.normpath(os.path.abspath(spec)).split(os.sep)
    parts[-1] = re.sub(r"\.(parquet|arrow)$", "", parts[-1])
    for part in reversed(parts):
        if part and not _GENERIC.match(part):
            return part
    return parts[-1]


def find_columns(dataset, image_column: str | None = None, label_column: str | None = None) -> tuple[str, str]:
    """The image and label columns: the given ones (checked), else the first of `IMAGE_COLUMNS` / `LABEL_COLUMNS`."""
    features = getattr(dataset, "features", None)
    columns = list(features) if features else getattr(dataset, "column_names", None)
    if not columns:  # a stream that does not know its columns: trust the names
        return image_column or IMAGE_COLUMNS[0], label_column or LABEL_COLUMNS[0]
    missing = [c for c in (image_column, label_column) if c is not None and c not in columns]
    if missing:
        raise ValueError(
            f"The dataset has no column {missing}; its columns are {columns}. Set `--image_column` / `--label_column`."
        )
    image_column = image_column or next((c for c in IMAGE_COLUMNS if c in columns), None)
    label_column = label_column or next((c for c in LABEL_COLUMNS if c in columns), None)
    if image_column is None or label_column is None:
        raise ValueError(
            f"Dataset columns {columns}: need an image column (one of {list(IMAGE_COLUMNS)}) and a label column (one "
            f"of {list(LABEL_COLUMNS)}); name yours (`--image_column` / `--label_column`, or `dataset.rename_column`)."
        )
    return image_column, label_column


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
            f"outside them: give one name per class, in label-id order."
        )


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


@dataclass
class ImageSource:
    """One split of a labelled image set, with what it says about itself (`open_image_source`).

    Args:
        dataset: a `datasets.Dataset` or `IterableDataset`, images still encoded.
        name: display name (`cifar10_test` for `data/cifar10_test.parquet`, the Hub id, the folder's name).
        image_column: the column holding images.
        label_column: the column holding labels.
        class_names: one name per label id, or None when nothing names the classes.
        class_names_source: `class_names`, `class_names_file`, `ClassLabel`, `folder names`, `sidecar`,
            `classnames.txt` or `built-in`.
        known: the `mmt_ard.known_datasets` entry the source matched (its name, a sidecar's `name`), or None.
        templates: prompt templates the data came with (a clip-benchmark repository's), or None.
        format: `parquet`, `arrow`, `imagefolder` or `hub`.
        location: the absolute path (of the folder, or the first data file) or `hub:<id>`.
        files: the data files read (parquet / arrow), in order; empty for image folders and Hub datasets.
    """

    dataset: object
    name: str
    image_column: str
    label_column: str
    class_names: list[str] | None
    class_names_source: str | None
    known: str | None
    templates: list[str] | None
    format: str
    location: str
    files: list[str] = field(default_factory=list)


def open_image_source(
    source: str | Sequence[str],
    split: str = "train",
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    class_names: Sequence[str] | None = None,
    class_names_file: str | None = None,
    name: str | None = None,
    config_name: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
    any_split: bool = False,
) -> ImageSource:
    """Load one split of a labelled image set (`load_image_dataset`) and find its columns, class names and prompts.

    The one loader of training and evaluation. Class names, in order: `class_names`, `class_names_file`, the label
    column's `ClassLabel` (an image folder's sub-folder names), the data's own list (the JSON sidecar `foo.json` of
    `foo.parquet` / `foo.arrow`: `{"classes": [...]}`; the `classnames.txt` of a clip-benchmark repository), then
    the built-in names of a known dataset (`mmt_ard.known_datasets`: `cifar10`, `cifar100`, ...), matched by the
    source's name or its sidecar's `name`.

    Args:
        source, split, config_name, streaming, cache_dir, any_split: as in `load_image_dataset`.
        image_column, label_column: the columns (default: found among `IMAGE_COLUMNS` / `LABEL_COLUMNS`).
        class_names: class names in label-id order (wins over everything the data says).
        class_names_file: a file of class names (see `read_class_names_file`).
        name: display name (default: `short_name` of the source).
    """
    from .known_datasets import known_dataset

    dataset, fmt, files = _load(source, split, config_name, streaming, cache_dir, any_split)
    image_column, label_column = find_columns(dataset, image_column, label_column)
    first = source if isinstance(source, str) else source[0]
    name = name or short_name(first)
    sidecar = read_sidecar(files)
    known = known_dataset(name) or known_dataset(str(sidecar.get("name", ""))) or known_dataset(first)
    listed, listed_source, templates = _names_in(sidecar), "sidecar", None
    if fmt == "hub" and first.startswith("clip-benchmark/"):
        listed, templates = _clip_benchmark_files(first)
        listed_source = "classnames.txt"
    names, origin = class_names_with_source(
        dataset, label_column, class_names, class_names_file, sidecar=listed, sidecar_source=listed_source, known=known
    )
    if fmt == "imagefolder" and origin == "ClassLabel":
        origin = "folder names"
    location = f"hub:{first}" if fmt == "hub" else os.path.abspath(first)
    return ImageSource(
        dataset, name, image_column, label_column, names, origin, known, templates, fmt, location, list(files)
    )


def _clip_benchmark_files(hub_id: str) -> tuple[list[str] | None, list[str] | None]:
    """`classnames.txt` and `zeroshot_classification_templates.txt` of a clip-benchmark repository, if any."""
    from .known_datasets import normalize_template

    out = []
    for fname in ("classnames.txt", "zeroshot_classification_templates.txt"):
        try:
            from huggingface_hub import hf_hub_download

            with open(hf_hub_download(hub_id, fname, repo_type="dataset")) as f:
                lines = [line.strip() for line in f if line.strip()]
            out.append([normalize_template(t) for t in lines] if "templates" in fname else lines)
        except (OSError, ValueError, ImportError):  # the file is optional (hub errors are OSErrors)
            out.append(None)
    return out[0], out[1]


def prepare_dataset(
    dataset,
    image_column: str = "image",
    label_column: str = "label",
    *,
    max_samples: int | None = None,
    shuffle: bool = True,
    seed: int = 0,
    shuffle_buffer_size: int = 10_000,
):
    """Keep the image, label (and a naming) column, add a `sample_id`, keep images encoded, subsample.

    Args:
        dataset: a `datasets.Dataset` or `IterableDataset`.
        image_column: column holding images (an `Image` feature, encoded bytes, paths, or `pixel_values` arrays).
        label_column: column holding integer labels (or class-name strings).
        max_samples: keep this many samples (after a seeded shuffle when `shuffle`): `--max_*_samples`.
        shuffle: shuffle before taking `max_samples` (datasets are often sorted by label).
        seed: shuffling seed.
        shuffle_buffer_size: buffer of the approximate shuffle of a streaming dataset.

    Returns:
        The same kind of dataset with columns `image_column`, `label_column`, `sample_id` (the row's index in the
        source), and a file-name column when the source has one.
    """
    import datasets

    features = getattr(dataset, "features", None)
    columns = list(features) if features else getattr(dataset, "column_names", None)
    if columns:
        find_columns(dataset, image_column, label_column)  # both present, or a ValueError naming the fix
        keep = [image_column, label_column] + [c for c in NAME_COLUMNS if c in columns and c not in (image_column,)]
        dataset = dataset.select_columns(list(dict.fromkeys(keep)))
        if isinstance(features.get(image_column) if features else None, datasets.Image):
            # decode in the collator, where a corrupt file can be named and skipped
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    if max_samples is not None and max_samples <= 0:
        raise ValueError(f"`max_samples`={max_samples} must be a positive number of samples (or unset).")
    if isinstance(dataset, datasets.IterableDataset):
        dataset = dataset.map(lambda _, i: {ID_COLUMN: i}, with_indices=True)
        if shuffle:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        return dataset.take(max_samples) if max_samples is not None else dataset
    dataset = dataset.add_column(ID_COLUMN, list(range(len(dataset))))
    if shuffle and max_samples is not None and max_samples < len(dataset):
        dataset = dataset.shuffle(seed=seed)
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.select(range(max_samples))
    return dataset


# ---- decoding ----


def _open_pil(value):
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise ValueError("the image is empty (no `bytes` and no `path`)")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(value)))
    if isinstance(value, (str, os.PathLike)):
        return Image.open(value)
    raise TypeError(f"cannot read an image from a {type(value).__name__}")


def _pil_to_rgb(image):
    """Any PIL mode -> RGB (palette/alpha via RGBA; 16-bit and float rescaled to 8 bits)."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(image, dtype=np.float32)
        top = (
            1.0
            if image.mode == "F" and arr.max(initial=0) <= 1.0
            else (255.0 if arr.max(initial=0) <= 255 else 65535.0)
        )
        image = Image.fromarray((np.clip(arr / top, 0, 1) * 255).round().astype(np.uint8), mode="L")
    if image.mode in ("P", "PA", "LA"):
        image = image.convert("RGBA")  # keeps palette transparency out of the RGB conversion's warning path
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize_crop_pil(image, size: int):
    """Shorter side -> `size` (bicubic; smaller images are upsampled), then a centre crop `size x size`."""
    from PIL import Image

    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return image


def _array_to_tensor(value) -> torch.Tensor:
    """An array `(H, W)`, `(H, W, C)` or `(C, H, W)`, uint8 or float in [0,1], -> float `(3, H, W)` in [0,1]."""
    t = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"an image array has shape {tuple(t.shape)}: expected (H, W), (H, W, C) or (C, H, W)")
    if t.shape[0] not in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
        t = t.permute(2, 0, 1)  # HWC -> CHW
    if t.shape[0] == 4:
        t = t[:3]
    if t.dtype == torch.uint8 or (t.is_floating_point() and float(t.max()) > 1.0):
        t = t.float() / 255.0
    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError("the image array holds NaN or inf")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.clamp(0, 1)


def _resize_crop_tensor(t: torch.Tensor, size: int) -> torch.Tensor:
    h, w = t.shape[-2:]
    if (h, w) == (size, size):
        return t.contiguous()
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    t = F.interpolate(t[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=scale < 1)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return t[:, top : top + size, left : left + size].clamp(0, 1).contiguous()


def decode_image(value, size: int) -> torch.Tensor:
    """Decode one image (PIL image, bytes, `{"bytes", "path"}`, a path, or an array) to `(3, size, size)`: uint8
    for encoded images (a quarter of the memory of floats, for evaluation sets held whole), float in [0,1] for
    arrays."""
    if isinstance(value, np.ndarray) or torch.is_tensor(value) or (isinstance(value, list) and value):
        return _resize_crop_tensor(_array_to_tensor(value), size)
    image = _open_pil(value)
    image.load()  # decode now: truncated or corrupt files fail here
    image = _resize_crop_pil(_pil_to_rgb(image), size)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, S, S) uint8


def load_image(value, size: int) -> torch.Tensor:
    """Decode one image (see `decode_image`) to float `(3, size, size)` in [0,1]."""
    x = decode_image(value, size)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


# ---- the collator ----


class ImageClassificationCollator:
    """Examples -> `{"pixel_values": (B, 3, S, S) float in [0,1], "labels": (B,) int64, "sample_id": (B,)}`.

    Args:
        image_size: the student's input size `S` (shorter side resized to `S`, then centre-cropped).
        class_names: the class list; labels must be ids in `[0, len(class_names))` or one of these names.
        image_column: key of the image in each example (`pixel_values` arrays are accepted too).
        label_column: key of the label.
        bad_samples: `raise` a `BadSampleError` naming the sample, or `skip` it: each bad sample is counted once
            (`num_skipped`), however often it is read (epochs, evaluation passes), and the first ten are logged.
        skip_log: a JSON-lines file to which each skipped sample is appended once per process (`{"sample",
            "sample_id", "reason"}`): collators copied into DataLoader workers or other ranks write there too, and
            `read_skip_logs` merges the files.
    """

    def __init__(
        self,
        image_size: int,
        class_names: Sequence[str],
        image_column: str = "image",
        label_column: str = "label",
        bad_samples: str = "raise",
        skip_log: str | None = None,
    ):
        if bad_samples not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"`bad_samples`={bad_samples!r}: use one of {list(BAD_SAMPLE_POLICIES)}.")
        if int(image_size) <= 0:
            raise ValueError(f"`image_size`={image_size} must be a positive number of pixels.")
        self.image_size = int(image_size)
        self.class_names = [str(n) for n in class_names]
        self.name_to_id = {n: i for i, n in enumerate(self.class_names)}
        self.image_column = image_column
        self.label_column = label_column
        self.bad_samples = bad_samples
        self.skip_log = skip_log
        self.skipped_samples: dict[str, str] = {}  # each skipped sample once: its key -> why
        self.skipped: list[str] = []  # the first few skipped samples and why

    @property
    def num_skipped(self) -> int:
        """Distinct samples skipped so far (in this process)."""
        return len(self.skipped_samples)

    def _sample_key(self, example: dict, name: str) -> str:
        """What identifies a sample across reads: its `sample_id`, file name or path; else this one read."""
        named = ID_COLUMN in example or any(example.get(k) for k in NAME_COLUMNS)
        image = example.get(self.image_column)
        named = named or (isinstance(image, dict) and bool(image.get("path")))
        return name if named else f"{name} #{len(self.skipped_samples)}"

    def _record_skip(self, example: dict, name: str, reason: str) -> None:
        key = self._sample_key(example, name)
        if key in self.skipped_samples:
            return
        self.skipped_samples[key] = reason
        if len(self.skipped) < 100:
            self.skipped.append(f"{name}: {reason}")
        if self.num_skipped <= _LOGGED_SKIPS:
            logger.warning("Skipping bad sample %s: %s (%d skipped so far)", name, reason, self.num_skipped)
        if self.skip_log:
            record = {"sample": key, "sample_id": example.get(ID_COLUMN), "reason": reason}
            os.makedirs(os.path.dirname(os.path.abspath(self.skip_log)), exist_ok=True)
            with open(self.skip_log, "a", encoding="utf-8") as f:  # one short line per write: appends stay whole
                f.write(json.dumps(record, default=str) + "\n")

    def _sample_name(self, example: dict, position: int) -> str:
        name = f"sample_id={example[ID_COLUMN]}" if ID_COLUMN in example else f"position {position} of the batch"
        for key in NAME_COLUMNS:
            if example.get(key):
                return f"{name} ({key}={example[key]!r})"
        image = example.get(self.image_column)
        if isinstance(image, dict) and image.get("path"):
            return f"{name} (path={image['path']!r})"
        return name

    def _label(self, value) -> int:
        return label_id(value, self.class_names, self.name_to_id)

    def _image(self, example: dict):
        if self.image_column in example:
            value = example[self.image_column]
        elif "pixel_values" in example:
            value = example["pixel_values"]
        else:
            raise KeyError(f"no {self.image_column!r} key (keys: {sorted(example)}); set `--image_column`")
        if value is None:
            raise ValueError("the image is missing (None)")
        return load_image(value, self.image_size)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        pixels, labels, ids = [], [], []
        last_bad = "none"
        for position, example in enumerate(examples):
            try:
                if self.label_column not in example and "labels" not in example:
                    raise KeyError(f"no {self.label_column!r} key (keys: {sorted(example)}); set `--label_column`")
                label = self._label(example.get(self.label_column, example.get("labels")))
                image = self._image(example)
            except KeyError:
                raise
            except Exception as err:  # noqa: BLE001 - decoding fails with OSError, ValueError, SyntaxError, ...
                name = self._sample_name(example, position)
                reason = bad_sample(self.bad_samples, name, err, COLLATOR_FIX)
                self._record_skip(example, name, reason)
                last_bad = f"{name}: {reason}"
                continue
            pixels.append(image)
            labels.append(label)
            ids.append(int(example.get(ID_COLUMN, -1)))
        if not pixels:
            raise BadSampleError(
                f"Every one of the {len(examples)} samples of this batch was bad (last: {last_bad}); check "
                "the data source and the image/label columns."
            )
        return {
            "pixel_values": torch.stack(pixels),  # (B, 3, S, S) in [0,1]
            "labels": torch.tensor(labels, dtype=torch.long),  # (B,)
            ID_COLUMN: torch.tensor(ids, dtype=torch.long),  # (B,)
        }


def read_skip_logs(paths: Sequence[str]) -> dict[str, str]:
    """Merge `skip_log` files (several processes, workers, reads of one sample) into `{sample: reason}`, each once."""
    merged: dict[str, str] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    merged.setdefault(str(record["sample"]), str(record["reason"]))
    return merged
