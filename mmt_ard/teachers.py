"""Teacher specs: which model, which input it sees, which student output it is matched to, and its losses."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from .models import ZeroShotCLIP, load_clip

INPUTS = ("clean", "adversarial")
KL_DIRECTIONS = ("teacher_student", "student_teacher")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Teacher:
    """A frozen teacher of the student.

    Args:
        model: a `CLIPModel`, or a Hub id / local path loaded with `load_clip` (a transformers CLIP, or an open_clip /
            OpenAI-CLIP checkpoint such as `hf-hub:chs20/fare2-clip`, converted).
        role: `robust`, `clean` or `original`; fills the defaults below from the preset (any other name: give all).
        input: the images the teacher sees, `clean` or `adversarial`.
        match: the student output it is matched to, `clean` or `adversarial`.
        coef: coefficient `beta` of its KL term (default from the preset's `<role>_coef`).
        kl: whether it has a KL term on logits.
        kl_direction: `teacher_student` (`KL(p_T || p_S)`) or `student_teacher`.
        feature_weight: `lambda_feat` of its feature term (0: none; a learned projection is added if dims differ).
        processor: its `CLIPProcessor` (or a Hub id / path); loaded from `model` when it is a string and this is None.
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


def build_teacher_module(teacher: Teacher, logit_scale: float | None) -> ZeroShotCLIP:
    """Load (if needed) and freeze a teacher: eval mode, `requires_grad=False`, its dtype."""
    model, processor = teacher.model, teacher.processor
    if isinstance(model, str):
        loaded, loaded_processor = load_clip(model, processor)  # a processor object is used as given
        model, processor = (
            loaded,
            processor if (processor is not None and not isinstance(processor, str)) else loaded_processor,
        )
    elif isinstance(processor, str):
        from transformers import CLIPProcessor

        processor = CLIPProcessor.from_pretrained(processor)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Teacher `{teacher.name}`: `model` is a {type(model).__name__}; give a CLIPModel, a Hub id or a local path."
        )
    if processor is None:
        raise ValueError(
            f"Teacher `{teacher.name}`: no processor. Pass `Teacher(..., processor=...)` (a CLIPProcessor or its Hub id)."
        )
    model = model.to(DTYPES[teacher.dtype])
    model.eval()
    model.requires_grad_(False)
    module = ZeroShotCLIP(model, processor, logit_scale=logit_scale)
    module.eval()
    return module


def frozen_copy(student: ZeroShotCLIP) -> nn.Module:
    """A frozen deep copy of the student's CLIP (the `original` teacher of FARE and PMG-AFT), without LoRA adapters."""
    from .lora import unadapted_copy

    base = unadapted_copy(student.clip)
    base.eval()
    base.requires_grad_(False)
    return base
