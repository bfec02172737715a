"""Decoding images: any PIL-readable bytes, path or array to RGB, shorter side resized, centre-cropped, in [0,1]."""

from __future__ import annotations

import io
import logging
import os

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

def _open_pil(value):
    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise ValueError("the image is empty (no `bytes` and no `path`)")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(value)))
    if isinstance(value, (str, os.PathLike)):
        return Image.open(value)
    raise TypeError(f"cannot read an image from a {type(value).__name__}")


def _pil_to_rgb(image):
    """Any PIL mode -> RGB (palette/alpha via RGBA; 16-bit and float rescaled to 8 bits)."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image) or image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(image, dtype=np.float32)
        top = (
            1.0
            if image.mode == "F" and arr.max(initial=0) <= 1.0
            else (255.0 if arr.max(initial=0) <= 255 else 65535.0)
        )
        image = Image.fromarray((np.clip(arr / top, 0, 1) * 255).round().astype(np.uint8), mode="L")
    if image.mode in ("P", "PA", "LA"):
        image = image.convert("RGBA")  # keeps palette transparency out of the RGB conversion's warning path
    return image if image.mode == "RGB" else image.convert("RGB")


def _resize_crop_pil(image, size: int):
    """Shorter side -> `size` (bicubic; smaller images are upsampled), then a centre crop `size x size`."""
    from PIL import Image

    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return image


def _array_to_tensor(value) -> torch.Tensor:
    """An array `(H, W)`, `(H, W, C)` or `(C, H, W)`, uint8 or float in [0,1], -> float `(3, H, W)` in [0,1]."""
    t = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"an image array has shape {tuple(t.shape)}: expected (H, W), (H, W, C) or (C, H, W)")
    if t.shape[0] not in (1, 3, 4) and t.shape[-1] in (1, 3, 4):
        t = t.permute(2, 0, 1)  # HWC -> CHW
    if t.shape[0] == 4:
        t = t[:3]
    if t.dtype == torch.uint8 or (t.is_floating_point() and float(t.max()) > 1.0):
        t = t.float() / 255.0
    t = t.float()
    if not torch.isfinite(t).all():
        raise ValueError("the image array holds NaN or inf")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.clamp(0, 1)


def _resize_crop_tensor(t: torch.Tensor, size: int) -> torch.Tensor:
    h, w = t.shape[-2:]
    if (h, w) == (size, size):
        return t.contiguous()
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    t = F.interpolate(t[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=scale < 1)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return t[:, top : top + size, left : left + size].clamp(0, 1).contiguous()


def decode_image(value, size: int) -> torch.Tensor:
    """Decode one image (PIL image, bytes, `{"bytes", "path"}`, a path, or an array) to `(3, size, size)`: uint8
    for encoded images (a quarter of the memory of floats, for evaluation sets held whole), float in [0,1] for
    arrays."""
    if isinstance(value, np.ndarray) or torch.is_tensor(value) or (isinstance(value, list) and value):
        return _resize_crop_tensor(_array_to_tensor(value), size)
    image = _open_pil(value)
    image.load()  # decode now: truncated or corrupt files fail here
    image = _resize_crop_pil(_pil_to_rgb(image), size)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, S, S) uint8


def load_image(value, size: int) -> torch.Tensor:
    """Decode one image (see `decode_image`) to float `(3, size, size)` in [0,1]."""
    x = decode_image(value, size)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


# ---- the collator ----
