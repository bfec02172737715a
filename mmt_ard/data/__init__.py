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

from .bad_samples import BAD_SAMPLE_POLICIES, BadSampleError, bad_sample, bad_sample_policy, label_id, read_skip_logs
from .class_names import (
    check_labels_in_classes,
    class_names_with_source,
    read_class_names_file,
    read_sidecar,
    resolve_class_names,
)
from .collate import ImageClassificationCollator
from .images import decode_image, load_image
from .sources import (
    ID_COLUMN,
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    ImageSource,
    expand_data_files,
    find_columns,
    is_webdataset_source,
    load_image_dataset,
    open_image_source,
    prepare_dataset,
    short_name,
)
from .stream import ShardedStream

__all__ = [
    "BAD_SAMPLE_POLICIES",
    "BadSampleError",
    "ID_COLUMN",
    "IMAGE_COLUMNS",
    "ImageClassificationCollator",
    "ImageSource",
    "LABEL_COLUMNS",
    "ShardedStream",
    "bad_sample",
    "bad_sample_policy",
    "check_labels_in_classes",
    "class_names_with_source",
    "decode_image",
    "expand_data_files",
    "find_columns",
    "is_webdataset_source",
    "label_id",
    "load_image",
    "load_image_dataset",
    "open_image_source",
    "prepare_dataset",
    "read_class_names_file",
    "read_sidecar",
    "read_skip_logs",
    "resolve_class_names",
    "short_name",
]
