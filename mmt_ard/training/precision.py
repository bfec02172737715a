"""The precision policy (`MMTARDConfig.precision`): which parts of a step run in bf16, decided once per run.

| policy | student training forward | training attack | teachers | matmuls | evaluation attacks |
|---|---|---|---|---|---|
| `fp32` | fp32 | fp32 | fp32 | TF32 off | fp32 |
| `bf16` | bf16 autocast (`bf16=True`) | bf16 autocast | bf16 weights | TF32 on (CUDA) | fp32 |
| `auto` (default) | `bf16` on a CUDA device that supports it, `fp32` everywhere else (CPU, MPS, older GPUs) |

`fp32` is the authors' setting, bit for bit. Evaluation attacks never use reduced precision (method.md section 6:
attacking under autocast inflates robust accuracy). Every field the policy decides (`bf16`, `tf32`, `teacher_dtype`,
`attack_autocast`) is only a default: a value set explicitly wins. `fp16` is never chosen by the policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class PrecisionPlan:
    """What a precision policy resolves to.

    Args:
        name: `fp32` or `bf16` (what `auto` became).
        bf16: bf16 autocast of the student's training forward (the Trainer's `bf16`).
        tf32: TF32 matmuls (`None`: leave the device default alone).
        teacher_dtype: the dtype teachers run in.
        attack_autocast: bf16 autocast of the training attack.
    """

    name: str
    bf16: bool
    tf32: bool | None
    teacher_dtype: str
    attack_autocast: bool


def cuda_bf16_available() -> bool:
    """Whether this process sees a CUDA device with bf16 support (Ampere or newer)."""
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def resolve_precision(precision: str, *, cuda: bool, bf16_supported: bool) -> PrecisionPlan:
    """The plan of a policy on a device.

    Args:
        precision: `auto`, `fp32` or `bf16`.
        cuda: whether the run uses a CUDA device (False with `use_cpu=True`).
        bf16_supported: whether that device supports bf16.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`precision`={precision!r}: use one of {list(PRECISIONS)}.")
    if precision == "auto":
        precision = "bf16" if cuda and bf16_supported else "fp32"
        if precision == "fp32":  # nothing to speed up; leave the device's own TF32 default alone
            return PrecisionPlan("fp32", bf16=False, tf32=None, teacher_dtype="fp32", attack_autocast=False)
    if precision == "fp32":
        return PrecisionPlan(
            "fp32", bf16=False, tf32=False if cuda else None, teacher_dtype="fp32", attack_autocast=False
        )
    return PrecisionPlan("bf16", bf16=True, tf32=True if cuda else None, teacher_dtype="bf16", attack_autocast=True)


def describe(args) -> str:
    """One line for logs and the model card, e.g. `bf16 (student forward + training attack autocast, bf16 teachers,
    TF32); evaluation attacks fp32`."""
    parts = []
    if args.bf16 or args.fp16:
        parts.append(f"{'bf16' if args.bf16 else 'fp16'} autocast of the student's training forward")
    if args.attack_autocast:
        parts.append("bf16 autocast of the training attack")
    parts.append(f"{args.teacher_dtype} teachers")
    if args.tf32:
        parts.append("TF32 matmuls")
    return f"{args.precision} -> " + ", ".join(parts) + "; evaluation attacks fp32"


# ---- the training attack under autocast: cast the matmul weights once per attack, not once per forward ----
AUTOCAST_CAST_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def autocast_weight_copies(module: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Detached `dtype` copies of the parameters that autocast casts to `dtype` at every call.

    Under autocast, `linear`/`conv` cast their weight and bias to the autocast dtype on every forward; with frozen
    parameters (the attack's) the cast is not cached, so a PGD-10 attack re-casts every weight 10 times (about
    2,800 casts per attack on a ViT-B/32). Casting once per attack gives bit-identical results: autocast's cast
    of a tensor already in `dtype` is a no-op. Parameters of other layers (LayerNorm, embeddings) stay as they
    are, since autocast runs those ops in fp32.

    Args:
        module: the model the attack runs on (not sharded: FSDP parameters cannot be copied this way).
        dtype: the autocast dtype.

    Returns:
        `{parameter name: copy}` for `torch.func.functional_call(module, copies, ...)`.
    """
    copies = {}
    for prefix, sub in module.named_modules():
        if isinstance(sub, AUTOCAST_CAST_MODULES):
            for name, param in sub.named_parameters(recurse=False):
                copies[f"{prefix}.{name}" if prefix else name] = param.detach().to(dtype)
    return copies


class PrecastForward(nn.Module):
    """`module` with its autocast matmul weights cast once (see `autocast_weight_copies`); attack it in their place.

    Args:
        module: the model to attack (a submodule here, so `attacks.eval_mode` switches its flags).
        dtype: the autocast dtype the attack runs under.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.module = module
        self.copies = autocast_weight_copies(module, dtype)

    def forward(self, *args, **kwargs):
        return torch.func.functional_call(self.module, self.copies, args, kwargs, strict=False)
