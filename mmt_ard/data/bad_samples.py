"""Bad samples: the `bad_samples` policy (`raise` or `skip`), the error that names a sample, label ids, skip logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("raise", "skip")
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
