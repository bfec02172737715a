"""Teacher specs: which model, which input it sees, which student output it is matched to, and its losses."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..models import ZeroShotCLIP, load_clip, load_processor

INPUTS = ("clean", "adversarial")
KL_DIRECTIONS = ("teacher_student", "student_teacher")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OWNED_FLAG = "_mmt_ard_owned"  # set on models the trainer made itself (not the caller's)

logger = logging.getLogger(__name__)


@dataclass
class Teacher:
    """A frozen teacher of the student.

    Args:
        model: a `CLIPModel`, `SiglipModel` or `Siglip2Model`, or a Hub id / local path loaded with `load_clip` (a
            transformers CLIP or SigLIP, or an open_clip / OpenAI-CLIP checkpoint such as `hf-hub:chs20/fare2-clip`,
            converted).
        role: `robust`, `clean` or `original`; fills the defaults below from the preset (any other name: give all).
        input: the images the teacher sees, `clean` or `adversarial`.
        match: the student output it is matched to, `clean` or `adversarial`.
        coef: coefficient `beta` of its KL term (default from the preset's `<role>_coef`).
        kl: whether it has a KL term on logits.
        kl_direction: `teacher_student` (`KL(p_T || p_S)`) or `student_teacher`.
        feature_weight: `lambda_feat` of its feature term (0: none; a learned projection is added if dims differ).
        processor: its processor (or a Hub id / path); loaded from `model` when it is a string and this is None.
            For an open_clip checkpoint: where its tokenizer comes from, or, for a vision-only file, the CLIP it was
            fine-tuned from (see `load_clip`).
        dtype: `fp32`, `bf16` or `fp16` (default: the config's `teacher_dtype`).
        name: used in logged metrics and loss keys (default: the role).
    """

    model: Any
    role: str = "robust"
    input: str | None = None
    match: str | None = None
    coef: float | None = None
    kl: bool | None = None
    kl_direction: str | None = None
    feature_weight: float | None = None
    processor: Any = None
    dtype: str | None = None
    name: str | None = None

    def resolved(self, args) -> "Teacher":
        """Fill unset fields from the preset's role defaults and the config; validate."""
        defaults = dict(getattr(args, "preset_roles", {}).get(self.role, {}))
        coef_field = defaults.pop("coef_field", f"{self.role}_coef")
        out = replace(self)
        out.name = self.name or self.role
        out.input = self.input or defaults.get("input")
        out.match = self.match or defaults.get("match")
        if out.coef is None:
            out.coef = getattr(args, coef_field, None)
        if out.kl is None:
            out.kl = defaults.get("kl", True)
        out.kl_direction = self.kl_direction or defaults.get("kl_direction", "teacher_student")
        if out.feature_weight is None:
            out.feature_weight = defaults.get("feature_weight", args.feature_weight)
        out.dtype = self.dtype or args.teacher_dtype
        for field_name, allowed in (("input", INPUTS), ("match", INPUTS), ("kl_direction", KL_DIRECTIONS)):
            if getattr(out, field_name) not in allowed:
                raise ValueError(
                    f"Teacher `{out.name}`: `{field_name}`={getattr(out, field_name)!r}; use one of {list(allowed)} "
                    f"(role {self.role!r} has no preset default for it)."
                )
        if out.coef is None or out.coef < 0:
            raise ValueError(f"Teacher `{out.name}`: `coef`={out.coef!r}; give a coefficient >= 0.")
        if out.dtype not in DTYPES:
            raise ValueError(f"Teacher `{out.name}`: `dtype`={out.dtype!r}; use one of {list(DTYPES)}.")
        if not out.kl and not out.feature_weight:
            raise ValueError(
                f"Teacher `{out.name}` has neither a KL term nor a feature term: set `kl` or `feature_weight`."
            )
        return out


def build_teacher_module(
    teacher: Teacher, logit_scale: float | None, device: torch.device | str | None = None
) -> ZeroShotCLIP:
    """Load (if needed) and freeze a teacher in its dtype on `device`, leaving a model the caller passed unchanged.

    Args:
        teacher: a resolved `Teacher` spec.
        logit_scale: the fixed zero-shot logit scale (None: the model's own).
        device: where the teacher runs (None: where its model is).

    A model given as a Hub id or path (or the trainer's own `frozen_copy`) belongs to the trainer and is converted in
    place. A model object the caller passed is not changed: see `placed_model`.
    """
    model, processor = teacher.model, teacher.processor
    owned = bool(getattr(model, OWNED_FLAG, False))
    if isinstance(model, str):
        loaded, loaded_processor = load_clip(model, processor)  # a processor object is used as given
        model, processor = (
            loaded,
            processor if (processor is not None and not isinstance(processor, str)) else loaded_processor,
        )
        owned = True
    elif isinstance(processor, str):
        processor = load_processor(processor)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Teacher `{teacher.name}`: `model` is a {type(model).__name__}; give a model (CLIPModel, SiglipModel, "
            "...), a Hub id or a local path."
        )
    if processor is None:
        raise ValueError(
            f"Teacher `{teacher.name}`: no processor. Pass `Teacher(..., processor=...)` (the model's processor or its "
            "Hub id)."
        )
    dtype = DTYPES[teacher.dtype]
    if device is None:
        device = next(model.parameters()).device
    if owned:
        model = model.to(device=device, dtype=dtype)
    else:
        model = placed_model(model, dtype, torch.device(device), teacher.name)
    model.eval()
    model.requires_grad_(False)
    module = ZeroShotCLIP(model, processor, logit_scale=logit_scale)
    module.to(device)  # its own buffers (image mean/std); the model's tensors are there already
    module.eval()
    return module


def placed_model(model: nn.Module, dtype: torch.dtype, device: torch.device, name: str = "teacher") -> nn.Module:
    """`model` in `dtype` on `device`, as a new module object that leaves the caller's `model` as it was.

    The copy is structural: tensors already in `dtype` on `device` share their storage with `model` (no memory),
    the others are converted copies (only the converted tensors are allocated, on `device`). The returned module has
    its own module and Parameter objects, frozen (`requires_grad=False`); the caller's model keeps its weights, dtype,
    device, train/eval mode and `requires_grad` flags. Shared storage means that later in-place changes to the
    caller's weights would reach the teacher; the trainer itself never writes to teacher weights.

    One exception, with a warning: when `model` already lives on `device`, an accelerator, and needs another dtype,
    it is converted in place, since a converted copy would keep both versions in accelerator memory (the reason for
    `teacher_dtype` is to save that memory). Load it in that dtype (`from_pretrained(..., dtype=...)`), or pass it on
    the CPU, to keep your object unchanged.

    Args:
        model: the caller's teacher model.
        dtype: floating-point dtype the teacher runs in (integer buffers keep theirs).
        device: where it runs.
        name: the teacher's name, for the warning.
    """

    def needs(t: torch.Tensor) -> bool:
        return t.device != device or (t.is_floating_point() and t.dtype != dtype)

    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(device=device, dtype=dtype if t.is_floating_point() else None)

    tensors = list(model.parameters()) + list(model.buffers())
    on_device = all(t.device == device for t in tensors)
    if device.type != "cpu" and on_device and any(needs(t) for t in tensors):
        before = next((t.dtype for t in tensors if t.is_floating_point() and t.dtype != dtype), dtype)
        logger.warning(
            f"Teacher `{name}`: its model is on {device} in {before}; it is converted to {dtype} in place, since a "
            f"converted copy would keep both on {device}. The model object you passed is now {dtype}: load it in "
            "that dtype, or pass it on the CPU, to keep it unchanged."
        )
        model.to(dtype=dtype)
    memo = {}
    for p in model.parameters():  # own Parameter objects (own `requires_grad`), shared storage where no conversion
        memo[id(p)] = nn.Parameter(convert(p) if needs(p) else p.detach(), requires_grad=False)
    for b in model.buffers():
        memo[id(b)] = convert(b) if needs(b) else b
    return copy.deepcopy(model, memo)


def frozen_copy(student: ZeroShotCLIP) -> nn.Module:
    """A frozen deep copy of the student's CLIP (the `original` teacher of FARE and PMG-AFT), without LoRA adapters."""
    from .lora import unadapted_copy

    base = unadapted_copy(student.clip)
    base.eval()
    base.requires_grad_(False)
    setattr(base, OWNED_FLAG, True)  # the trainer's own copy: `build_teacher_module` may convert it in place
    return base
