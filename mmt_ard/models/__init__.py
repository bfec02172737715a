"""Models: the families of CLIP-like models (`families`), the zero-shot wrapper (`zero_shot`), and loading
(`loading`, which sits above the wrapper and the open_clip converter)."""

from .families import (
    FAMILIES,
    ModelFamily,
    PixelLayout,
    UnsupportedModelError,
    base_model,
    check_processor,
    family_of,
    register_family,
)
from .loading import load_clip, load_processor
from .zero_shot import ZeroShotCLIP, ZeroShotOutput, build_text_head, compute_text_head, logits_of

__all__ = [
    "FAMILIES",
    "ModelFamily",
    "PixelLayout",
    "UnsupportedModelError",
    "ZeroShotCLIP",
    "ZeroShotOutput",
    "base_model",
    "build_text_head",
    "check_processor",
    "compute_text_head",
    "family_of",
    "load_clip",
    "load_processor",
    "logits_of",
    "register_family",
]
