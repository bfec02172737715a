"""Resizing a ViT's position-embedding grid to another resolution (bicubic, class position kept).

A tower trained at 224 px with 14 px patches has a 16 x 16 grid (plus a class position for CLIP); a 336 px LVLM
expects 24 x 24. The grid rows are resized as an image, the way transformers' own `interpolate_pos_encoding` does:
`torch.nn.functional.interpolate(..., mode="bicubic", align_corners=False)` on the `(1, D, s, s)` grid, in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def grid_side(num_positions: int, has_class_token: bool, what: str = "position embedding") -> int:
    """Side `s` of the square grid of a position embedding with `num_positions` rows (`s*s`, plus 1 with a class
    position)."""
    cells = num_positions - (1 if has_class_token else 0)
    side = math.isqrt(max(cells, 0))
    if cells <= 0 or side * side != cells:
        raise ValueError(
            f"The {what} has {num_positions} positions, which is not a square grid"
            + (" plus one class position" if has_class_token else "")
            + ": only square grids can be resized."
        )
    return side


def resize_position_embedding(weight: torch.Tensor, target_positions: int, has_class_token: bool) -> torch.Tensor:
    """Resize a `(P, D)` position embedding to `(target_positions, D)`.

    Args:
        weight: `(P, D)` rows: `[class position,] grid positions in row-major order`.
        target_positions: rows wanted (a square grid, plus 1 with a class position).
        has_class_token: the first row is the class position: it is kept as is.

    Returns:
        `(target_positions, D)` float32; `weight` itself (as float32) when the sizes already match.
    """
    num, dim = weight.shape
    src = grid_side(num, has_class_token, "student's position embedding")
    dst = grid_side(target_positions, has_class_token, "LVLM's position embedding")
    weight = weight.detach().float()
    if src == dst:
        return weight.clone()
    head, grid = (weight[:1], weight[1:]) if has_class_token else (weight[:0], weight)
    grid = grid.reshape(1, src, src, dim).permute(0, 3, 1, 2)  # (1, D, s, s)
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)  # (1, D, t, t)
    grid = grid.permute(0, 2, 3, 1).reshape(dst * dst, dim)  # (t*t, D)
    return torch.cat([head, grid], dim=0)
