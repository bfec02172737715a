"""PIL's 8-bit image resize, with a gradient, so that an attack can run through an image processor's resizes.

The PIL backend of transformers' image processors (used where torchvision is not installed) resizes a uint8 image
with Pillow: two separable passes, each a weighted sum whose weights Pillow computes in double precision, normalises
to sum 1 and rounds to 22-bit fixed point; each pass rounds its result to uint8. Pillow 13 picks the order of the two
passes itself, and the order changes the rounding, so `pil_resize` takes its forward value from Pillow itself (on the
image rounded to 8 bits): on an image whose pixels are multiples of 1/255 (a decoded 8-bit image) it returns
Pillow's bytes / 255 exactly. Its gradient is that of Pillow's weighted sums without the roundings (the same weights,
`pil_weights`; a straight-through estimate), which is what an attack in [0, 1] pixel space needs. So the LVLM sees
what its processor makes of the adversarial image stored as an 8-bit image.

Pillow's filters (`libImaging/Resample.c`): bilinear (support 1), bicubic (a = -0.5, support 2), lanczos (a = 3,
support 3); the support is widened by the scale when downsampling (antialiasing).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

# PIL.Image.Resampling values
NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING = 0, 1, 2, 3, 4, 5


def _bilinear(x: float) -> float:
    x = abs(x)
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    return _sinc(x) * _sinc(x / 3) if -3.0 <= x < 3.0 else 0.0


FILTERS = {BILINEAR: (_bilinear, 1.0), BICUBIC: (_bicubic, 2.0), LANCZOS: (_lanczos, 3.0)}


@functools.lru_cache(maxsize=256)
def pil_weights(in_size: int, out_size: int, resample: int) -> torch.Tensor:
    """Pillow's resampling weights from `in_size` to `out_size` samples, before its fixed-point rounding: an
    `(out, in)` float64 matrix (as Pillow's `precompute_coeffs`)."""
    if resample not in FILTERS:
        names = {NEAREST: "NEAREST", BOX: "BOX", HAMMING: "HAMMING"}
        raise ValueError(
            f"resample={names.get(resample, resample)!r}: the differentiable pipeline reproduces Pillow's BILINEAR, "
            "BICUBIC and LANCZOS resizes (the ones LVLM image processors use); set the image processor's `resample` "
            "to one of them."
        )
    kernel, base_support = FILTERS[resample]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    exact = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        ws = [kernel((x + xmin - center + 0.5) / filterscale) for x in range(xmax - xmin)]
        total = sum(ws)
        for x, w in enumerate(ws):
            k = w / total if total != 0.0 else w
            exact[xx, xmin + x] = k
    return exact


def _pillow(x255: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
    """Pillow's own resize of `(..., 3 or 1, H, W)` values in 0..255 (rounded to uint8 first), as float."""
    from PIL import Image

    h, w = size
    flat = x255.detach().round().clamp(0, 255).to(torch.uint8).cpu().reshape(-1, *x255.shape[-3:])
    out = []
    for img in flat:  # (C, H, W)
        arrays = [np.asarray(Image.fromarray(c.numpy()).resize((w, h), resample=resample)) for c in img]
        out.append(torch.from_numpy(np.stack(arrays)))
    return torch.stack(out).reshape(*x255.shape[:-2], h, w).to(device=x255.device, dtype=x255.dtype)


def pil_resize(x: torch.Tensor, size: tuple[int, int], resample: int) -> torch.Tensor:
    """Resize `(..., C, H, W)` pixels in [0, 1] to `size = (h, w)` exactly as Pillow resizes the 8-bit image, with the
    gradient of Pillow's weighted sums (see the module docstring). The same size returns `x` itself, as Pillow does."""
    h, w = int(size[0]), int(size[1])
    H, W = x.shape[-2:]
    if (h, w) == (H, W):
        return x
    exact_w = pil_weights(W, w, resample).to(device=x.device, dtype=torch.float64)  # (w, W)
    exact_h = pil_weights(H, h, resample).to(device=x.device, dtype=torch.float64)  # (h, H)
    linear = (exact_h @ (x.double() * 255.0) @ exact_w.T).to(x.dtype)  # (..., C, h, w), Pillow without rounding
    value = _pillow(x * 255.0, (h, w), resample)
    return (linear + (value - linear).detach()) / 255.0
