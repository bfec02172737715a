"""Resizing a ViT's position-embedding grid to another resolution (bicubic, class position kept; square or
rectangular grids, with or without a class position).

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


def grid_shape(config, num_positions: int, has_class_token: bool, what: str) -> tuple[int, int]:
    """`(rows, columns)` of a position grid: from the config's `image_size` / `patch_size` when the image is not
    square (`image_size` given as `(height, width)`), else the square side of `num_positions`."""
    size = config.get("image_size") if isinstance(config, dict) else getattr(config, "image_size", None)
    patch = config.get("patch_size") if isinstance(config, dict) else getattr(config, "patch_size", None)
    if isinstance(size, (list, tuple)) and patch:
        (h, w), (ph, pw) = size, (patch if isinstance(patch, (list, tuple)) else (patch, patch))
        shape = (int(h) // int(ph), int(w) // int(pw))
        if shape[0] * shape[1] + (1 if has_class_token else 0) == num_positions:
            return shape
    side = grid_side(num_positions, has_class_token, what)
    return side, side


def resize_position_embedding(
    weight: torch.Tensor,
    target_positions: int,
    has_class_token: bool,
    source_grid: tuple[int, int] | None = None,
    target_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize a `(P, D)` position embedding to `(target_positions, D)`.

    Args:
        weight: `(P, D)` rows: `[class position,] grid positions in row-major order`.
        target_positions: rows wanted (a grid, plus 1 with a class position).
        has_class_token: the first row is the class position: it is kept as is.
        source_grid: `(rows, columns)` of the student's grid (default: the square side of `P`).
        target_grid: `(rows, columns)` of the LVLM's grid (default: the square side of `target_positions`).

    Returns:
        `(target_positions, D)` float32; `weight` itself (as float32) when the sizes already match.
    """
    num, dim = weight.shape
    src = source_grid or (grid_side(num, has_class_token, "student's position embedding"),) * 2
    dst = target_grid or (grid_side(target_positions, has_class_token, "LVLM's position embedding"),) * 2
    extra = 1 if has_class_token else 0
    if src[0] * src[1] + extra != num or dst[0] * dst[1] + extra != target_positions:
        raise ValueError(f"position grids {src} -> {dst} do not match {num} -> {target_positions} positions.")
    weight = weight.detach().float()
    if tuple(src) == tuple(dst):
        return weight.clone()
    head, grid = (weight[:1], weight[1:]) if has_class_token else (weight[:0], weight)
    grid = grid.reshape(1, src[0], src[1], dim).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid, size=tuple(dst), mode="bicubic", align_corners=False)  # (1, D, H, W)
    grid = grid.permute(0, 2, 3, 1).reshape(dst[0] * dst[1], dim)  # (H*W, D)
    return torch.cat([head, grid], dim=0)
