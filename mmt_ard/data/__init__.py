"""Image-classification data for MMT-ARD, for training and evaluation alike.

- `sources`: where rows come from (`load_image_dataset`, `open_image_source`, `prepare_dataset`): a Hub dataset id, a
  local directory (an image folder `class_x/img.png`, a folder of parquet/arrow files, or a `save_to_disk` folder),
  or local `.parquet` / `.arrow` files; map-style or streaming (`IterableDataset`); their image and label columns.
- `class_names`: what a source says about its classes (explicit names, a names file, the `ClassLabel`, a JSON
  sidecar `{"classes": [...]}` next to a data file, or the built-in names of a known dataset, `known_datasets`).
- `images`: decoding (`decode_image`): RGB, the shorter side resized to the model's input size, centre-cropped,
  pixels kept in [0,1] (normalisation lives in the model, so attack budgets are in pixel units).
- `collate`: `ImageClassificationCollator`, the training batch.
- `webdataset`: tar shards (brace patterns, checks, reading with `tarfile`, CLIP_benchmark's `wds_*` layout).
- `stream`: `ShardedStream`, the `--streaming` training stream over parquet / arrow / webdataset files, which
  resumes from a saved position without replay.
- `bad_samples`: the `bad_samples` policy: an unreadable/truncated image or a label outside the class list raises a
  `BadSampleError` naming the sample (`raise`), or is dropped from its batch, counted once per sample and logged
  (`skip`). Grayscale, RGBA, CMYK, palette and 16-bit images are converted to RGB, and images smaller than the input
  size are upsampled: those are not errors.

>>> source = open_image_source("data/cifar10_test.parquet", split="test")  # class names from cifar10_test.json
>>> ds = prepare_dataset(source.dataset, source.image_column, source.label_column, max_samples=1000)
>>> collate = ImageClassificationCollator(224, class_names=source.class_names)
>>> batch = collate([ds[0], ds[1]])  # {"pixel_values": (2, 3, 224, 224) in [0,1], "labels": (2,), "sample_id": (2,)}
"""

from .._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (mmt_ard/_lazy.py)
_EXPORTS = {
    "BAD_SAMPLE_POLICIES": ".bad_samples",
    "BadSampleError": ".bad_samples",
    "bad_sample": ".bad_samples",
    "bad_sample_policy": ".bad_samples",
    "label_id": ".bad_samples",
    "read_skip_logs": ".bad_samples",
    "check_labels_in_classes": ".class_names",
    "class_names_with_source": ".class_names",
    "read_class_names_file": ".class_names",
    "read_sidecar": ".class_names",
    "resolve_class_names": ".class_names",
    "ImageClassificationCollator": ".collate",
    "decode_image": ".images",
    "load_image": ".images",
    "ID_COLUMN": ".sources",
    "IMAGE_COLUMNS": ".sources",
    "LABEL_COLUMNS": ".sources",
    "ImageSource": ".sources",
    "find_columns": ".sources",
    "load_image_dataset": ".sources",
    "open_image_source": ".sources",
    "prepare_dataset": ".sources",
    "short_name": ".sources",
    "expand_data_files": ".sources",
    "is_webdataset_source": ".sources",
    "ShardedStream": ".stream",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted([*_EXPORTS])
