"""The training batch collator: decode, resize, label, id; bad samples raised or skipped and logged."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import torch

from .bad_samples import _LOGGED_SKIPS, BAD_SAMPLE_POLICIES, COLLATOR_FIX, BadSampleError, bad_sample, label_id
from .images import load_image
from .sources import ID_COLUMN, NAME_COLUMNS

logger = logging.getLogger(__name__)

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
        if example.get("__url__") and example.get("__key__"):  # a webdataset sample read by `datasets`
            return f"{name} (shard={example['__url__']!r}, key={example['__key__']!r})"
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
