"""Evaluation data: a seeded subset of a labelled image set, as pixels in [0,1] at the model's input size.

Sources, by the form of the spec string:

* a local path: a parquet file, a folder of parquet files, an image folder (`root/<class>/<image>`, or
  `root/<split>/<class>/<image>`), or a `save_to_disk` folder / `.arrow` file (read by `mmt_ard.data`); class names
  come from the `ClassLabel` or the folder names;
* a short name of the usual zero-shot sets (`cifar10`, `pets`, `imagenet-r`, ... see `templates.HUB_IDS`): its
  clip-benchmark WebDataset repository on the Hub (`clip-benchmark/wds_*`), whose `classnames.txt` and
  `zeroshot_classification_templates.txt` are used when present;
* any other `owner/name`: a Hub dataset loaded with `datasets.load_dataset(name, split=split)`.

Class names and templates can be overridden per dataset by a user JSON file:
`{"<dataset name>": {"classnames": [...], "templates": ["a photo of a {}.", ...]}}` (`{c}` is accepted for `{}`).

The subset is `numpy.random.default_rng(seed).permutation(N)[:num_samples]`: the same images for every model and
every rerun, in a random order (so the first images, on which the gradient-masking checks run, span the classes).
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .templates import CLASS_NAMES, DEFAULT_TEMPLATES, HUB_IDS, TEMPLATES, normalize_template

IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "cls", "fine_label", "target", "class")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


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
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    templates: list[str]
    source: str = "in-memory"
    dataset_size: int | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.labels = torch.as_tensor(self.labels).long().view(-1)
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
        data = json.load(f)
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


# ---- pixels ----
def to_pixels(value, image_size: int) -> torch.Tensor:
    """One image (PIL, encoded bytes, HF image dict, or array) -> `(3, S, S)` uint8, or float for float arrays.

    Images are resized (shortest edge to `S`, bicubic) and centre-cropped, as CLIP preprocesses them; the mean/std
    normalisation happens inside the model, after the attack.
    """
    from PIL import Image

    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = Image.open(value["path"])
        else:
            raise ValueError(f"Image dict without `bytes` or `path`: keys {sorted(value)}.")
    if isinstance(value, (bytes, bytearray)):
        value = Image.open(io.BytesIO(value))
    if isinstance(value, Image.Image):
        return _pil_to_uint8(value, image_size)
    arr = torch.as_tensor(np.asarray(value))
    if arr.dim() == 3 and arr.shape[-1] in (1, 3) and arr.shape[0] not in (1, 3):
        arr = arr.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    if arr.dim() == 2:
        arr = arr.unsqueeze(0)
    if arr.dim() != 3 or arr.shape[0] not in (1, 3):
        raise ValueError(f"Cannot read an image from an array of shape {tuple(arr.shape)}: expected (3, H, W).")
    if arr.shape[0] == 1:
        arr = arr.repeat(3, 1, 1)
    if arr.dtype == torch.uint8:
        return _pil_to_uint8(Image.fromarray(arr.permute(1, 2, 0).numpy()), image_size)
    arr = arr.float()
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError(
            f"Float image with values in [{arr.min():.3g}, {arr.max():.3g}]: evaluation needs raw pixels in [0, 1] "
            "(normalisation happens inside the model)."
        )
    if arr.shape[-2:] != (image_size, image_size):
        arr = _resize_crop_tensor(arr, image_size)
    return arr


def _pil_to_uint8(img, size: int) -> torch.Tensor:
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, S, S)


def _resize_crop_tensor(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(x[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top : top + size, left : left + size].clamp(0, 1)


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    if all(t.dtype == torch.uint8 for t in images):
        return torch.stack(images)
    return torch.stack([t.float() / 255.0 if t.dtype == torch.uint8 else t.float() for t in images])


# ---- resolution of a spec ----
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


def source_id(spec) -> str | None:
    """What a dataset spec points at (an absolute path, a Hub id), to tell same-named datasets apart on resume."""
    if isinstance(spec, str):
        return os.path.abspath(spec) if os.path.exists(spec) else spec
    return None


def _registry_key(name: str) -> str | None:
    """The key of the built-in tables a name refers to (`clip-benchmark/wds_vtab-pets` -> `pets`)."""
    if name in TEMPLATES or name in HUB_IDS or name in CLASS_NAMES:
        return name
    for key, hub_id in HUB_IDS.items():
        if name == hub_id:
            return key
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
) -> EvalData:
    """Load a seeded subset of a dataset as `EvalData` at `image_size` px.

    Args:
        spec: an `EvalData`, a `datasets.Dataset`, a local path, a short name (`cifar10`) or a Hub id.
        image_size: the model's input size `S`.
        num_samples: subset size (`None`: the whole split).
        seed: subset seed.
        split: split of Hub datasets and of image folders with split subfolders.
        templates: `ensemble` (per-dataset prompts) or `single`.
        single_template: the template of `templates="single"`.
        user_meta: per-dataset `classnames` / `templates` overrides (see `load_user_meta`).
        name: display name (default: derived from the spec).
    """
    user_meta = user_meta or {}
    if isinstance(spec, EvalData):
        data = spec
        if num_samples is not None and num_samples < len(data):
            data = data.subset(subset_indices(len(data), num_samples, seed))
        return data  # its own templates; float images of another size are resized inside the model

    if hasattr(spec, "column_names") and hasattr(spec, "select"):  # a datasets.Dataset
        display = name or getattr(getattr(spec, "info", None), "dataset_name", None) or "dataset"
        rows, cols, label_names, n_total, indices = _select_rows(spec, num_samples, seed)
        meta_names = _meta(user_meta, display, "classnames") or label_names
        return _finish(
            display,
            rows,
            cols,
            meta_names,
            None,
            image_size,
            indices,
            n_total,
            "in-memory Dataset",
            templates,
            single_template,
            user_meta,
            {},
        )

    if not isinstance(spec, str):
        raise TypeError(f"Dataset spec of type {type(spec).__name__}: pass a path, a Hub id, a name or an EvalData.")
    display = name or short_name(spec)
    if os.path.exists(spec):
        return _load_local(spec, display, image_size, num_samples, seed, split, templates, single_template, user_meta)
    key = _registry_key(spec)
    hub_id = HUB_IDS.get(key, spec) if key is not None else spec
    if "/" not in hub_id:
        raise ValueError(
            f"Dataset {spec!r} is neither a local path, nor a known name ({sorted(HUB_IDS)}), nor a Hub id "
            "(`owner/name`): give one of those."
        )
    return _load_hub(hub_id, display, key, image_size, num_samples, seed, split, templates, single_template, user_meta)


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


def _select_rows(ds, num_samples, seed):
    """Pick the seeded subset of a `datasets.Dataset`; returns (rows, columns, class names, N, indices)."""
    n_total = len(ds)
    indices = subset_indices(n_total, num_samples, seed)
    image_col = next((c for c in IMAGE_COLUMNS if c in ds.column_names), None)
    label_col = next((c for c in LABEL_COLUMNS if c in ds.column_names), None)
    if image_col is None or label_col is None:
        raise ValueError(
            f"Dataset columns {ds.column_names}: need an image column (one of {list(IMAGE_COLUMNS)}) and a label "
            f"column (one of {list(LABEL_COLUMNS)}); rename yours with `dataset.rename_column`."
        )
    label_feature = ds.features.get(label_col) if hasattr(ds, "features") and ds.features else None
    label_names = list(getattr(label_feature, "names", None) or [])
    sub = ds.select(indices)
    if hasattr(sub, "with_format"):
        sub = sub.with_format(None)
    rows = {"image": sub[image_col], "label": sub[label_col]}
    return rows, (image_col, label_col), label_names, n_total, indices


def _finish(
    display,
    rows,
    cols,
    class_names,
    key,
    image_size,
    indices,
    n_total,
    source,
    templates_mode,
    single_template,
    user_meta,
    extra_meta,
    dataset_templates=None,
) -> EvalData:
    if not class_names:
        raise ValueError(
            f"Dataset {display!r} ({source}) has no class names (its label column is not a ClassLabel): pass a JSON "
            f'with `--class-names-json` holding {{"{display}": {{"classnames": [...]}}}}.'
        )
    images = _stack([to_pixels(v, image_size) for v in rows["image"]])
    labels = torch.as_tensor([int(v) for v in rows["label"]], dtype=torch.long)
    templ, templ_source = _templates_for(display, key, templates_mode, single_template, user_meta, dataset_templates)
    meta = {"templates_source": templ_source, "indices_head": indices[:10], **extra_meta}
    return EvalData(display, images, labels, list(class_names), templ, source, n_total, meta)


def _load_local(path, display, image_size, num_samples, seed, split, templates, single_template, user_meta):
    key = _registry_key(display)
    saved = os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")
    )
    user_names = _meta(user_meta, display, "classnames")

    def from_table(ds, info: dict):
        """A `datasets.Dataset` with image bytes and labels -> the seeded subset, as `_finish` wants it."""
        rows, cols, label_names, n_total, indices = _select_rows(ds, num_samples, seed)
        names = user_names or label_names
        args = (display, rows, cols, names, key, image_size, indices, n_total, os.path.abspath(path))
        return _finish(*args, templates, single_template, user_meta, info)

    if saved or path.endswith(".arrow"):  # `save_to_disk` folders and Arrow files: the training data loader reads them
        from ..data import load_image_dataset

        return from_table(load_image_dataset(path, split), {"format": "arrow"})
    parquet = _parquet_files(path, split)
    if parquet:
        import datasets

        ds = datasets.Dataset.from_parquet(parquet if len(parquet) > 1 else parquet[0])
        source = "user json" if user_names else "ClassLabel"
        return from_table(ds, {"format": "parquet", "classnames_source": source})
    root = os.path.join(path, split) if os.path.isdir(os.path.join(path, split)) else path
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    files, labels = [], []
    for label, cls in enumerate(classes):
        for dirpath, _, names in sorted(os.walk(os.path.join(root, cls))):
            for fname in sorted(names):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(dirpath, fname))
                    labels.append(label)
    if not files:
        raise ValueError(
            f"{path!r} holds no parquet file and no images in class subfolders: expected `root/<class>/<image>` "
            f"(optionally under `root/{split}/`) or `*.parquet` files."
        )
    indices = subset_indices(len(files), num_samples, seed)
    rows = {"image": [{"path": files[i]} for i in indices], "label": [labels[i] for i in indices]}
    names = user_names or [c.replace("_", " ") for c in classes]
    return _finish(
        display,
        rows,
        None,
        names,
        key,
        image_size,
        indices,
        len(files),
        os.path.abspath(root),
        templates,
        single_template,
        user_meta,
        {"format": "imagefolder", "classnames_source": "user json" if user_names else "folder names"},
    )


def _parquet_files(path: str, split: str) -> list[str]:
    """Parquet files at `path`; those of `split` when the names say (`test-0000.parquet`, `test/...`)."""
    if os.path.isfile(path):
        return [path] if path.endswith(".parquet") else []
    found = []
    for dirpath, _, names in sorted(os.walk(path)):
        found += [os.path.join(dirpath, n) for n in sorted(names) if n.endswith(".parquet")]

    def in_split(f: str) -> bool:
        parts = os.path.relpath(f, path).replace("\\", "/").split("/")
        return split in parts[:-1] or parts[-1].startswith((f"{split}-", f"{split}.", f"{split}_"))

    return [f for f in found if in_split(f)] or found


def _load_hub(hub_id, display, key, image_size, num_samples, seed, split, templates, single_template, user_meta):
    import datasets

    try:
        ds = datasets.load_dataset(hub_id, split=split)
    except Exception as err:  # offline, gated, missing split, ...
        raise RuntimeError(
            f"Could not load Hub dataset {hub_id!r} (split {split!r}): {type(err).__name__}: {err}. Offline, give a "
            "local copy instead (a parquet file/folder or an image folder) with the same name, or set "
            "HF_DATASETS_OFFLINE=0 on a machine with access."
        ) from err
    rows, cols, label_names, n_total, indices = _select_rows(ds, num_samples, seed)
    wds_names, wds_templates = _clip_benchmark_files(hub_id)
    user_names = _meta(user_meta, display, "classnames")
    builtin = list(CLASS_NAMES.get(key, ())) if key else []
    n_labels = max(int(max(rows["label"])) + 1 if rows["label"] else 0, len(label_names))
    for names, source in (
        (user_names, "user json"),
        (wds_names, "classnames.txt"),
        (builtin if len(builtin) >= n_labels else None, "built-in"),
        (label_names, "ClassLabel"),
    ):
        if names:
            break
    return _finish(
        display,
        rows,
        cols,
        names,
        key,
        image_size,
        indices,
        n_total,
        f"hub:{hub_id}",
        templates,
        single_template,
        user_meta,
        {"format": "hub", "classnames_source": source},
        wds_templates,
    )


def _clip_benchmark_files(hub_id: str) -> tuple[list[str] | None, list[str] | None]:
    """`classnames.txt` and `zeroshot_classification_templates.txt` of a clip-benchmark repository, if any."""
    if not hub_id.startswith("clip-benchmark/"):
        return None, None
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
