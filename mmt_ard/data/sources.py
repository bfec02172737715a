"""Image-classification sources: Hub ids, local folders, parquet/arrow files, map-style or streaming; their columns."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .class_names import _names_in, class_names_with_source, read_sidecar
from .webdataset import expand_braces, is_brace_pattern, is_wds_folder, read_wds_texts, wds_split_files

logger = logging.getLogger(__name__)

DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".tar": "webdataset"}
# column names tried, in order, when a caller names none (`find_columns`)
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "cls", "fine_label", "target", "class")
ID_COLUMN = "sample_id"
# columns kept to name a sample in error messages
NAME_COLUMNS = ("filename", "file_name", "path", "image_path", "id", "__url__", "__key__")

# ---- loading ----


def _data_file_builder(paths: Sequence[str]) -> str:
    exts = {os.path.splitext(p)[1].lower() for p in paths}
    builders = {DATA_FILE_BUILDERS.get(e) for e in exts}
    if None in builders or len(builders) != 1:
        raise ValueError(
            f"Data files {list(paths)[:3]} have extensions {sorted(exts)}: give only `.parquet`, only `.arrow` or "
            "only webdataset `.tar` files (a brace pattern such as `shards/{00000..00099}.tar` lists shards), a "
            "directory (image folder, parquet/arrow files, CLIP_benchmark `wds_*` folder) or a Hub dataset id."
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


def expand_data_files(source) -> list[str]:
    """Data files from a path, a brace pattern (`shards/{00000..00099}.tar`) or a list of them, in order; a
    `FileNotFoundError` naming a pattern that matches no file, or the files that do not exist."""
    files = []
    for item in [source] if isinstance(source, str) else list(source):
        expanded = expand_braces(item) if is_brace_pattern(item) else [item]
        if len(expanded) > 1 and not any(os.path.isfile(f) for f in expanded):
            raise FileNotFoundError(
                f"The brace pattern {item!r} matches no file (it stands for {expanded[0]!r} ... {expanded[-1]!r}): "
                "check the folder and the range."
            )
        files += expanded
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(
            f"Data files {missing[:5]} do not exist{f' ({len(missing)} missing)' if len(missing) > 5 else ''}: check "
            "the paths (and a brace pattern's range)."
        )
    return files


def is_webdataset_source(source) -> bool:
    """Whether `source` names webdataset shards: `.tar` files, a brace pattern of them, or a `wds_*` folder."""
    items = [source] if isinstance(source, str) else list(source or [])
    return any(
        isinstance(i, str) and (i.lower().endswith(".tar") or (os.path.isdir(i) and is_wds_folder(i))) for i in items
    )


def _load(source, split: str, config_name, streaming: bool, cache_dir, any_split: bool):
    """`(dataset, format, data files)` of `load_image_dataset` (format: parquet, arrow, webdataset, imagefolder or
    hub)."""
    import datasets

    if isinstance(source, str) and os.path.isdir(source) and is_wds_folder(source):
        # CLIP_benchmark's layout: `<split>/0.tar, 1.tar, ...` beside classnames.txt
        splits = {d: wds_split_files(source, d) for d in sorted(os.listdir(source))}
        _, files = _pick_split({k: v for k, v in splits.items() if v}, split, source, any_split)
        return _load(files, split, config_name, streaming, cache_dir, any_split)
    if (
        isinstance(source, (list, tuple))
        or (isinstance(source, str) and os.path.isfile(source))
        or is_brace_pattern(source)
    ):
        files = expand_data_files(source)
        builder = _data_file_builder(files)
        try:
            loaded = datasets.load_dataset(
                builder, data_files={split: files}, split=split, streaming=streaming, cache_dir=cache_dir
            )
        except Exception as err:  # pyarrow's ArrowInvalid, datasets' DatasetGenerationError, OSError
            if builder == "webdataset":
                from .webdataset import check_shard

                for path in files:
                    check_shard(path)  # the `ShardError` naming the shard, when one is at fault
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


def hub_data_files(hub_id: str, split: str, config_name: str | None = None) -> tuple[list[str], str] | None:
    """`(data file URLs, format)` of one split of a Hub dataset stored as parquet, arrow or webdataset files
    (`hf://datasets/<id>@<revision>/...`, what `datasets` itself would stream), or None for other datasets (a
    loading script, an image folder): what `--streaming` needs to read a Hub dataset as a `ShardedStream`."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(hub_id, config_name)
    except Exception:  # noqa: BLE001 - unreachable, gated, a script: stream through `datasets` instead
        return None
    kind = getattr(builder, "name", None)
    files = (getattr(builder.config, "data_files", None) or {}).get(split)
    if kind not in ("parquet", "arrow", "webdataset") or not files:
        return None
    return [str(f) for f in files], kind


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
    if is_brace_pattern(spec):
        spec = os.path.dirname(spec) or spec
    if not os.path.exists(spec):
        return spec
    parts = os.path.normpath(os.path.abspath(spec)).split(os.sep)
    parts[-1] = re.sub(r"\.(parquet|arrow|tar)$", "", parts[-1])
    for part in reversed(parts):
        if part and not _GENERIC.match(part) and not part.isdigit():  # `0.tar`: a shard number
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
        known: the `mmt_ard.data.known_datasets` entry the source matched (its name, a sidecar's `name`), or None.
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
    label_json_field: str | None = None,
) -> ImageSource:
    """Load one split of a labelled image set (`load_image_dataset`) and find its columns, class names and prompts.

    The one loader of training and evaluation. Class names, in order: `class_names`, `class_names_file`, the label
    column's `ClassLabel` (an image folder's sub-folder names), the data's own list (the JSON sidecar `foo.json` of
    `foo.parquet` / `foo.arrow`: `{"classes": [...]}`; the `classnames.txt` of a clip-benchmark repository), then
    the built-in names of a known dataset (`mmt_ard.data.known_datasets`: `cifar10`, `cifar100`, ...), matched by the
    source's name or its sidecar's `name`.

    Args:
        source, split, config_name, streaming, cache_dir, any_split: as in `load_image_dataset`.
        image_column, label_column: the columns (default: found among `IMAGE_COLUMNS` / `LABEL_COLUMNS`).
        class_names: class names in label-id order (wins over everything the data says).
        class_names_file: a file of class names (see `read_class_names_file`).
        name: display name (default: `short_name` of the source).
        label_json_field: webdataset shards: the label is this field of each sample's `.json` (column `json`),
            put into `label_column` (default `label`); otherwise the `.cls` file (column `cls`) is the label.
    """
    from .known_datasets import known_dataset

    dataset, fmt, files = _load(source, split, config_name, streaming, cache_dir, any_split)
    if label_json_field:
        label_column = label_column or "label"
        dataset = _label_from_json(dataset, label_json_field, label_column)
    image_column, label_column = find_columns(dataset, image_column, label_column)
    first = source if isinstance(source, str) else source[0]
    name = name or short_name(first)
    sidecar = read_sidecar(files)
    known = known_dataset(name) or known_dataset(str(sidecar.get("name", ""))) or known_dataset(first)
    listed, listed_source, templates = _names_in(sidecar), "sidecar", None
    if fmt == "hub" and first.startswith("clip-benchmark/"):
        listed, templates = _clip_benchmark_files(first)
        listed_source = "classnames.txt"
    elif fmt == "webdataset":
        root = _wds_root(first if os.path.isdir(first) else files[0])
        if root is not None:
            listed, templates = read_wds_texts(root)
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


def _wds_root(path: str) -> str | None:
    """The folder holding `classnames.txt` for a `wds_*` folder or one of its shards (`root/test/0.tar`), or None."""
    for folder in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        if folder and os.path.isfile(os.path.join(folder, "classnames.txt")):
            return folder
    return None


def _label_from_json(dataset, field_name: str, label_column: str):
    """`dataset` with `label_column` taken from the field `field_name` of its `json` column (webdataset `.json`)."""
    features = getattr(dataset, "features", None)
    columns = list(features) if features else getattr(dataset, "column_names", None) or []
    if columns and "json" not in columns:
        raise ValueError(
            f"`label_json_field`={field_name!r} but the data has no `.json` files (columns {columns}): leave it out to "
            "read `.cls` labels, or give shards whose samples hold a `.json`."
        )

    def pick(meta):
        return {label_column: meta.get(field_name) if isinstance(meta, dict) else None}

    return dataset.map(pick, input_columns=["json"])


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
        source; in a stream of `n` shards, `j * n + i` for row `j` of shard `i`), and a file-name column when the
        source has one.
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
        dataset = _with_stream_ids(dataset)
        if shuffle:
            dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer_size)
        return dataset.take(max_samples) if max_samples is not None else dataset
    dataset = dataset.add_column(ID_COLUMN, list(range(len(dataset))))
    if shuffle and max_samples is not None and max_samples < len(dataset):
        dataset = dataset.shuffle(seed=seed)
    if max_samples is not None and max_samples < len(dataset):
        dataset = dataset.select(range(max_samples))
    return dataset


def _with_stream_ids(dataset):
    """A streamed `dataset` whose `sample_id` names one row in every pass, DataLoader worker and process: row `j` of
    shard `i` (of `n`) gets `j * n + i`.

    One counter over the stream (`map(..., with_indices=True)`) does not: `datasets` restarts it in each shard that
    `shuffle` interleaves, in each DataLoader worker and process (each reads its own shards), and `set_epoch` reorders
    the shards under it, so ids repeat within a pass and move between rows across passes. The teacher cache
    (`cache_teacher_outputs`) and the count of bad samples key on these ids."""
    import datasets

    n = dataset.n_shards
    features = dataset.features  # given to `map`: `concatenate_datasets` would otherwise read each shard's head
    if features is not None:
        features = datasets.Features({**features, ID_COLUMN: datasets.Value("int64")})
    shards = [
        dataset.shard(num_shards=n, index=i).map(
            lambda _, j, i=i: {ID_COLUMN: j * n + i}, with_indices=True, features=features
        )
        for i in range(n)
    ]  # one map per shard: its counter starts at 0 in whichever worker, process or pass reads the shard
    return shards[0] if n == 1 else datasets.concatenate_datasets(shards)


# ---- decoding ----
