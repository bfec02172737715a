"""Mapping a student's vision tower onto the tower tensors of an LVLM checkpoint.

Pure functions on configs and tensors: find the tower in the checkpoint, refuse towers that cannot compute the same
function (other width, depth, patch size, head count, ...), resize the position grid, and optionally fold a
difference in image normalisation into the patch embedding. Nothing here reads or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.families import ModelFamily
from .position import grid_shape, resize_position_embedding
from .safetensors_io import TensorInfo

PATCH_WEIGHT = "embeddings.patch_embedding.weight"
PATCH_BIAS = "embeddings.patch_embedding.bias"
POSITION = "embeddings.position_embedding.weight"

# (what the user reads, config field): a mismatch in any of these means the student's weights cannot run as the
# LVLM's tower (the LVLM's config is kept as it is)
ARCHITECTURE_FIELDS = (
    ("width", "hidden_size"),
    ("depth", "num_hidden_layers"),
    ("patch size", "patch_size"),
    ("head count", "num_attention_heads"),
    ("MLP width", "intermediate_size"),
    ("input channels", "num_channels"),
    ("activation", "hidden_act"),
    ("layer-norm eps", "layer_norm_eps"),
)


class ExportError(ValueError):
    """The student cannot go into this LVLM as asked; nothing was written."""


def config_value(config, name: str):
    return config.get(name) if isinstance(config, dict) else getattr(config, name, None)


def describe_tower(config, num_positions: int | None = None, has_class_token: bool = True) -> str:
    """`ViT width 1024, depth 24, 16 heads, patch 14, 224 px (16x16 grid)` for messages."""
    size = config_value(config, "image_size")
    patch = config_value(config, "patch_size")
    text = (
        f"width {config_value(config, 'hidden_size')}, depth {config_value(config, 'num_hidden_layers')}, "
        f"{config_value(config, 'num_attention_heads')} heads, patch {patch}, {size} px"
    )
    if num_positions is not None:
        rows, cols = grid_shape(config, num_positions, has_class_token, "position embedding")
        text += f" ({rows}x{cols} grid)"
    return text


def check_architecture(student_config, lvlm_config, student_desc: str, lvlm_desc: str) -> None:
    """Refuse, naming both towers, when a field of `ARCHITECTURE_FIELDS` differs."""
    diffs = []
    for label, name in ARCHITECTURE_FIELDS:
        s, t = config_value(student_config, name), config_value(lvlm_config, name)
        if s is None or t is None:
            continue
        same = abs(float(s) - float(t)) <= 1e-12 * max(1.0, abs(float(t))) if isinstance(s, float) else s == t
        if not same:
            diffs.append(f"{label} (`{name}`): student {s!r} vs LVLM {t!r}")
    if diffs:
        raise ExportError(
            "The student's vision tower does not fit this LVLM: "
            + "; ".join(diffs)
            + f". Student tower: {student_desc}. LVLM tower: {lvlm_desc}. Train (or pick) a student with the LVLM's "
            "tower architecture (e.g. ViT-L/14 for LLaVA-1.5). Nothing was written."
        )


def close(a, b, tol: float = 1e-5) -> bool:
    return len(a) == len(b) and all(abs(float(x) - float(y)) <= tol for x, y in zip(a, b))


def find_tower_prefix(layout: dict[str, TensorInfo], where: str, markers: tuple[str, ...] = ("vision_tower",)) -> str:
    """The key prefix of the vision tower in a checkpoint (`vision_tower.`, `vision_tower.vision_model.`,
    `model.vision_tower.`, Idefics3's `model.vision_model.`, ...), found from its patch embedding under one of the
    registry entry's `markers`."""
    prefixes = sorted(
        key[: -len(PATCH_WEIGHT)]
        for key in layout
        if key.endswith(PATCH_WEIGHT) and any(m.rstrip(".") in key for m in markers)
    )
    if len(prefixes) != 1:
        raise ExportError(
            f"Could not find one vision tower in the checkpoint of {where!r} (patch embeddings under "
            f"{' or '.join(f'`{m}`' for m in markers)}: {prefixes or 'none'}); is it a supported LVLM saved by "
            "transformers?"
        )
    return prefixes[0]


def fold_normalization(
    state: dict[str, torch.Tensor],
    kind: ModelFamily,
    student_mean,
    student_std,
    lvlm_mean,
    lvlm_std,
) -> dict[str, torch.Tensor]:
    """Rewrite the patch embedding so that the tower, fed pixels normalised with the LVLM's mean/std, computes
    exactly what the student computes on pixels normalised with its own.

    With `x_s = (p - m_s) / s_s` and `x_l = (p - m_l) / s_l`: `x_s = a * x_l + b`, `a = s_l / s_s`,
    `b = (m_l - m_s) / s_s` (per channel). The patch convolution `W` is linear and has no padding, so
    `W * x_s = (W a) * x_l + k` with `k[o] = sum_{c,i,j} W[o, c, i, j] b[c]`: the scale goes into `W`, the constant
    `k` into the patch bias (SigLIP) or, for CLIP whose patch embedding has no bias, into every grid row of the
    position embedding (the class position is not a patch). Computed in float64.
    """
    state = dict(state)
    weight = state[PATCH_WEIGHT].double()  # (D, C, p, p)
    a = torch.tensor(lvlm_std, dtype=torch.float64) / torch.tensor(student_std, dtype=torch.float64)  # (C,)
    b = (
        torch.tensor(lvlm_mean, dtype=torch.float64) - torch.tensor(student_mean, dtype=torch.float64)
    ) / torch.tensor(student_std, dtype=torch.float64)  # (C,)
    k = (weight * b[None, :, None, None]).sum(dim=(1, 2, 3))  # (D,)
    state[PATCH_WEIGHT] = (weight * a[None, :, None, None]).float()
    if PATCH_BIAS in state:
        state[PATCH_BIAS] = (state[PATCH_BIAS].double() + k).float()
    else:
        position = state[POSITION].double().clone()  # (P, D)
        start = 1 if kind.class_token else 0
        position[start:] += k
        state[POSITION] = position.float()
    return state


@dataclass
class TowerPlan:
    """What the export writes into the LVLM's tower.

    Args:
        tensors: LVLM checkpoint key -> the new tensor (fp32; cast to the checkpoint's dtype when written).
        infos: LVLM checkpoint key -> where it lives.
        resized: `((rows, columns) of the student's grid, (rows, columns) of the LVLM's)` when the position grid was
            resized, else None.
        dropped: student tensors the LVLM's tower has no place for (e.g. a SigLIP head the LVLM does not keep).
        kept: LVLM tower tensors with no student counterpart that are kept as they are (buffers such as
            `position_ids`).
    """

    tensors: dict[str, torch.Tensor]
    infos: dict[str, TensorInfo]
    resized: tuple[tuple[int, int], tuple[int, int]] | None
    dropped: list[str]
    kept: list[str]


def plan_tower(
    student_state: dict[str, torch.Tensor],
    layout: dict[str, TensorInfo],
    prefix: str,
    kind: ModelFamily,
    student_desc: str,
    lvlm_desc: str,
    student_config=None,
    lvlm_config=None,
) -> TowerPlan:
    """Map the student's tower tensors onto the LVLM checkpoint's tower keys; refuse on any shape mismatch. The
    configs give rectangular position grids (`image_size` as `(height, width)`); square grids need none."""
    tower_keys = sorted(k for k in layout if k.startswith(prefix))
    tensors, infos, kept, problems = {}, {}, [], []
    resized = None
    for key in tower_keys:
        rel, info = key[len(prefix) :], layout[key]
        if rel not in student_state:
            if rel.endswith("position_ids"):  # an index buffer some checkpoints carry: the LVLM's stays right
                kept.append(key)
                continue
            problems.append(f"`{rel}` {list(info.shape)} is in the LVLM's tower but not in the student's")
            continue
        tensor = student_state[rel]
        if rel == POSITION and tuple(tensor.shape) != info.shape and tensor.shape[1:] == info.shape[1:]:
            src = grid_shape(student_config, tensor.shape[0], kind.class_token, "student's position embedding")
            dst = grid_shape(lvlm_config, info.shape[0], kind.class_token, "LVLM's position embedding")
            tensor = resize_position_embedding(tensor, info.shape[0], kind.class_token, src, dst)
            resized = (src, dst)
        if tuple(tensor.shape) != info.shape:
            problems.append(f"`{rel}`: student {list(tensor.shape)} vs LVLM {list(info.shape)}")
            continue
        tensors[key], infos[key] = tensor.float(), info
    if problems:
        raise ExportError(
            "The student's vision tower does not fit this LVLM: "
            + "; ".join(problems[:8])
            + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
            + f". Student tower: {student_desc}. LVLM tower: {lvlm_desc}. Nothing was written."
        )
    dropped = sorted(k for k in student_state if prefix + k not in layout)
    return TowerPlan(tensors, infos, resized, dropped, kept)
