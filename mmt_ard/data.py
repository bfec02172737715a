"""Image-classification data for MMT-ARD: loading, class names, decoding, and the batch collator.

Sources (`load_image_dataset`): a Hub dataset id, a local directory (an image folder `class_x/img.png`, a folder of
parquet/arrow files, or a `save_to_disk` folder), or local `.parquet` / `.arrow` files; map-style or streaming
(`IterableDataset`). Images stay encoded in the dataset and are decoded by `ImageClassificationCollator`, which turns
them into RGB, resizes the shorter side to the student's input size, centre-crops, and keeps pixels in [0,1]
(normalisation lives in the model, so attack budgets are in pixel units).

Bad data (`bad_samples`): an unreadable/truncated image or a label outside the class list raises a `BadSampleError`
naming the sample (`raise`), or is dropped from its batch, counted and logged (`skip`). Grayscale, RGBA, CMYK,
palette and 16-bit images are converted to RGB, and images smaller than the input size are upsampled: those are not
errors.

>>> ds = load_image_dataset("ylecun/mnist", split="train")
>>> names = resolve_class_names(ds, "label")
>>> ds = prepare_dataset(ds, image_column="image", label_column="label", max_samples=1000)
>>> collate = ImageClassificationCollator(224, class_names=names)
>>> batch = collate([ds[0], ds[1]])  # {"pixel_values": (2, 3, 224, 224) in [0,1], "labels": (2,), "sample_id": (2,)}
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("raise", "skip")
DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
ID_COLUMN = "sample_id"
# columns kept to name a sample in error messages
NAME_COLUMNS = ("filename", "file_name", "path", "image_path", "id")
_LOGGED_SKIPS = 10


class BadSampleError(ValueError):
    """A sample whose image cannot be decoded or whose label is not a class (with `bad_samples='raise'`)."""


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


def load_image_dataset(
    source: str | Sequence[str],
    split: str = "train",
    *,
    config_name: str | None = None,
    streaming: bool = False,
    cache_dir: str | None = None,
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

    Returns:
        A `datasets.Dataset` (or `IterableDataset` when streaming).
    """
    import datasets

    if isinstance(source, (list, tuple)) or (isinstance(source, str) and os.path.isfile(source)):
        files = [source] if isinstance(source, str) else list(source)
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(f"Data files {missing} do not exist.")
        builder = _data_file_builder(files)
        return datasets.load_dataset(
            builder, data_files={split: files}, split=split, streaming=streaming, cache_dir=cache_dir
        )
    if not isinstance(source, str) or not source:
        raise ValueError(f"`dataset_name`={source!r}: give a Hub dataset id, a local directory or data files.")
    if os.path.isdir(source) and (
        os.path.isfile(os.path.join(source, "dataset_dict.json")) or os.path.isfile(os.path.join(source, "state.json"))
    ):
        loaded = datasets.load_from_disk(source)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"Split {split!r} is not in {source!r}: it has {list(loaded)}. Pick one of them.")
            loaded = loaded[split]
        return loaded.to_iterable_dataset() if streaming else loaded
    if not os.path.isdir(source) and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise FileNotFoundError(f"`dataset_name`={source!r} looks like a local path but does not exist.")
    try:
        return datasets.load_dataset(source, config_name, split=split, streaming=streaming, cache_dir=cache_dir)
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


def read_class_names_file(path: str) -> list[str]:
    """Class names from a file: a JSON list, a JSON object with `classes`/`class_names`/`names`, or one per line."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.lower().endswith(".json"):
        data = json.loads(text)
        if isinstance(data, dict):
            for key in ("classes", "class_names", "names"):
                if isinstance(data.get(key), list):
                    data = data[key]
                    break
        if not isinstance(data, list):
            raise ValueError(
                f"`class_names_file`={path!r} holds no list of names: give a JSON list or an object with `classes`."
            )
        return [str(n) for n in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def resolve_class_names(
    dataset,
    label_column: str = "label",
    class_names: Sequence[str] | None = None,
    class_names_file: str | None = None,
) -> list[str]:
    """The class names, in label-id order.

    Priority: `class_names`, then `class_names_file`, then the label column's `ClassLabel` names. A class list given
    explicitly must have as many names as the `ClassLabel`, if there is one.
    """
    import datasets

    features = getattr(dataset, "features", None) or {}
    feature = features.get(label_column) if hasattr(features, "get") else None
    from_feature = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    if class_names:
        names = [str(n) for n in class_names]
        if len(names) == 1 and "," in names[0]:
            names = [n.strip() for n in names[0].split(",")]
        origin = "`class_names`"
    elif class_names_file:
        names, origin = read_class_names_file(class_names_file), f"`class_names_file`={class_names_file!r}"
    elif from_feature:
        return from_feature
    else:
        raise ValueError(
            f"Column {label_column!r} is not a `ClassLabel` (it is {feature!r}): pass the class names with "
            "`--class_names a b c` or `--class_names_file names.txt` (one per line, in label-id order)."
        )
    if from_feature and len(from_feature) != len(names):
        raise ValueError(
            f"{origin} has {len(names)} names but column {label_column!r} is a ClassLabel with {len(from_feature)} "
            "classes: give one name per class."
        )
    if not names or any(not n.strip() for n in names):
        raise ValueError(f"{origin} gave {names!r}: give one non-empty name per class.")
    return names


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
        missing = [c for c in (image_column, label_column) if c not in columns]
        if missing:
            raise ValueError(
                f"The dataset has no column {missing}; its columns are {columns}. Set `--image_column` / "
                "`--label_column`."
            )
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


def load_image(value, size: int) -> torch.Tensor:
    """Decode one image (PIL image, bytes, `{"bytes", "path"}`, a path, or an array) to float `(3, size, size)`."""
    if isinstance(value, np.ndarray) or torch.is_tensor(value) or (isinstance(value, list) and value):
        return _resize_crop_tensor(_array_to_tensor(value), size)
    image = _open_pil(value)
    image.load()  # decode now: truncated or corrupt files fail here
    image = _resize_crop_pil(_pil_to_rgb(image), size)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


# ---- the collator ----


class ImageClassificationCollator:
    """Examples -> `{"pixel_values": (B, 3, S, S) float in [0,1], "labels": (B,) int64, "sample_id": (B,)}`.

    Args:
        image_size: the student's input size `S` (shorter side resized to `S`, then centre-cropped).
        class_names: the class list; labels must be ids in `[0, len(class_names))` or one of these names.
        image_column: key of the image in each example (`pixel_values` arrays are accepted too).
        label_column: key of the label.
        bad_samples: `raise` a `BadSampleError` naming the sample, or `skip` it (counted in `num_skipped`, logged).
    """

    def __init__(
        self,
        image_size: int,
        class_names: Sequence[str],
        image_column: str = "image",
        label_column: str = "label",
        bad_samples: str = "raise",
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
        self.num_skipped = 0
        self.skipped: list[str] = []  # the first few skipped samples and why

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
        if torch.is_tensor(value) or isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str):
            if value in self.name_to_id:
                return self.name_to_id[value]
            if not value.lstrip("-").isdigit():
                raise ValueError(f"label {value!r} is not one of the {len(self.class_names)} class names")
            value = int(value)
        is_integral = isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not is_integral:
            raise ValueError(f"label {value!r} is not a class id")
        value = int(value)
        if not 0 <= value < len(self.class_names):
            raise ValueError(
                f"label {value} is outside the {len(self.class_names)} classes [0, {len(self.class_names) - 1}]"
            )
        return value

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
        for position, example in enumerate(examples):
            try:
                if self.label_column not in example and "labels" not in example:
                    raise KeyError(f"no {self.label_column!r} key (keys: {sorted(example)}); set `--label_column`")
                label = self._label(example.get(self.label_column, example.get("labels")))
                image = self._image(example)
            except KeyError:
                raise
            except (
                Exception
            ) as err:  # decoding errors come as OSError, ValueError, SyntaxError, DecompressionBombError
                reason = f"{type(err).__name__}: {err}"
                name = self._sample_name(example, position)
                if self.bad_samples == "raise":
                    raise BadSampleError(
                        f"Bad sample {name}: {reason}. Fix or remove it, or set `bad_samples='skip'` to drop such "
                        "samples (they are counted and logged)."
                    ) from err
                self.num_skipped += 1
                if len(self.skipped) < 100:
                    self.skipped.append(f"{name}: {reason}")
                if self.num_skipped <= _LOGGED_SKIPS:
                    logger.warning("Skipping bad sample %s: %s (%d skipped so far)", name, reason, self.num_skipped)
                continue
            pixels.append(image)
            labels.append(label)
            ids.append(int(example.get(ID_COLUMN, -1)))
        if not pixels:
            raise BadSampleError(
                f"Every one of the {len(examples)} samples of this batch was bad (last: {self.skipped[-1]}); check "
                "the data source and the image/label columns."
            )
        return {
            "pixel_values": torch.stack(pixels),  # (B, 3, S, S) in [0,1]
            "labels": torch.tensor(labels, dtype=torch.long),  # (B,)
            ID_COLUMN: torch.tensor(ids, dtype=torch.long),  # (B,)
        }
