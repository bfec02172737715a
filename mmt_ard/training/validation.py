"""Input validation shared by the config and the trainer: bad input becomes a `TypeError`/`ValueError` that names the
field, the value it got and the fix, never a traceback from deep inside torch.

* `check_field` checks the type (and finiteness) of one config field; `MMTARDConfig` runs it over every field it
  owns before anything else reads them. Range checks stay in `MMTARDConfig._validate`.
* `check_batch` checks a training/evaluation batch: a mapping with `pixel_values` `(B, 3, H, W)` float in [0, 1]
  (finite) and `labels` `(B,)` integer class ids in `[0, C)`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np
import torch

PIXEL_RANGE_TOLERANCE = 1e-4  # resampling round-off; anything further out is unnormalised or normalised data

# kinds of config fields: "number", "int", "bool", "str", "str_list"; a trailing "?" allows None
KINDS = ("number", "int", "bool", "str", "str_list")


def _type_name(value) -> str:
    return type(value).__name__


def check_field(name: str, value, kind: str):
    """Check one config field against its kind; returns the (normalised) value.

    Args:
        name: the field's name (used in the message).
        value: what the user gave.
        kind: one of `KINDS`, with a trailing `?` when None is allowed.

    Raises:
        TypeError: wrong type (e.g. a string for a number, a float for a step count).
        ValueError: a NaN or infinite number.
    """
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None:
        if optional:
            return None
        raise TypeError(f"`{name}` is None: it needs a value ({kind}).")
    if kind in ("number", "int"):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"`{name}`={value!r} is a {_type_name(value)}: give a {kind}.")
        if kind == "int":
            if isinstance(value, numbers.Integral):
                return int(value)
            if math.isfinite(float(value)) and float(value).is_integer():
                return int(value)
            raise TypeError(f"`{name}`={value!r} is not a whole number: give an int.")
        if not math.isfinite(float(value)):
            raise ValueError(f"`{name}`={value!r} is not a finite number.")
        return value
    if kind == "bool":
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        raise TypeError(f"`{name}`={value!r} is a {_type_name(value)}: give True or False.")
    if kind == "str":
        if isinstance(value, str):
            return value
        raise TypeError(f"`{name}`={value!r} is a {_type_name(value)}: give a string.")
    if kind == "str_list":
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise TypeError(f"`{name}`={value!r}: give a list of strings.")
    raise AssertionError(f"unknown field kind {kind!r}")


def check_prompt_templates(templates: list[str]) -> None:
    """Each template must turn a class name into a prompt with `template.format(name)`."""
    bad = []
    for template in templates:
        try:
            ok = "{}" in template and template.format("x") != template
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            bad.append(template)
    if not templates or bad:
        raise ValueError(
            f"`prompt_templates`={templates!r}: each template needs exactly one '{{}}' for the class name and no "
            f"other braces (bad: {bad!r}), e.g. 'This is a photo of a {{}}'."
        )


def check_batch(inputs, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a batch; returns `pixel_values` as float32 `(B, 3, H, W)` and `labels` as int64 `(B,)`.

    Args:
        inputs: the batch the collator produced.
        num_classes: `C`, the number of class names.
    """
    if not isinstance(inputs, Mapping):
        raise TypeError(
            f"The batch is a {_type_name(inputs)}: expected a dict with `pixel_values` (B,3,H,W) in [0,1] and "
            "`labels` (B,). Use `mmt_ard.data.ImageClassificationCollator`."
        )
    missing = [k for k in ("pixel_values", "labels") if k not in inputs]
    if missing:
        raise ValueError(
            f"The batch has no {missing} (keys: {sorted(map(str, inputs))}): batches need `pixel_values` (B,3,H,W) "
            "in [0,1] and `labels` (B,). Use `mmt_ard.data.ImageClassificationCollator` or rename the columns."
        )
    x = _check_pixels(inputs["pixel_values"])
    y = _check_labels(inputs["labels"], x.shape[0], num_classes)
    return x, y


def _check_pixels(x) -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(
            f"`pixel_values` is a {_type_name(x)}: expected a float tensor (B, 3, H, W) in [0, 1] (collate the "
            "images into one tensor)."
        )
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"`pixel_values` has shape {tuple(x.shape)}: expected (B, 3, H, W) RGB in [0, 1].")
    if not x.is_floating_point():
        hint = " (divide uint8 images by 255)" if x.dtype == torch.uint8 else ""
        raise TypeError(f"`pixel_values` has dtype {x.dtype}: expected floating point values in [0, 1]{hint}.")
    if x.numel() == 0:
        raise ValueError(f"`pixel_values` has shape {tuple(x.shape)}: the batch holds no pixels.")
    x = x.float()
    finite = torch.isfinite(x)
    finite_x = torch.where(finite, x, 0.5)
    stats = torch.stack([(~finite).sum().float(), finite_x.amin(), finite_x.amax()])
    n_bad, low, high = stats.tolist()  # one device sync for the three checks
    if n_bad:
        rows = torch.nonzero(~finite.flatten(1).all(1)).flatten().tolist()
        raise ValueError(
            f"`pixel_values` holds {int(n_bad)} NaN/inf values (images at batch positions {rows[:10]}): drop or fix "
            "those images (`bad_samples='skip'` drops unreadable ones)."
        )
    if low < -PIXEL_RANGE_TOLERANCE or high > 1 + PIXEL_RANGE_TOLERANCE:
        raise ValueError(
            f"`pixel_values` ranges over [{low:.4g}, {high:.4g}]: expected [0, 1]. Pass unnormalised pixels (the "
            "models resize and normalise inside their forward) and divide 0-255 images by 255."
        )
    return x


def _check_labels(y, batch_size: int, num_classes: int) -> torch.Tensor:
    if not torch.is_tensor(y):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError, OverflowError):
            raise TypeError(
                f"`labels` is a {_type_name(y)} that is not a sequence of class ids: give a tensor or list of ints."
            ) from None
    if y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"`labels` has dtype {y.dtype}: expected integer class ids.")
    if y.is_floating_point() and not (bool(torch.isfinite(y).all()) and bool((y == y.round()).all())):
        raise TypeError(f"`labels` has dtype {y.dtype} with non-integer values: expected integer class ids.")
    y = y.reshape(-1)
    if y.numel() != batch_size:
        raise ValueError(
            f"`labels` has {y.numel()} entries for {batch_size} images: give one class id per image (not one-hot)."
        )
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.numel():
        raise ValueError(
            f"`labels` holds {sorted(set(bad.tolist()))[:10]}, outside the {num_classes} classes of `class_names`: "
            "check the label column or pass the full class list."
        )
    return y.long()
