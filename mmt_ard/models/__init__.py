"""Models: the families of CLIP-like models (`families`), the zero-shot wrapper (`zero_shot`), and loading
(`loading`, which sits above the wrapper and the open_clip converter)."""

from .._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (mmt_ard/_lazy.py)
_EXPORTS = {
    "FAMILIES": ".families",
    "ModelFamily": ".families",
    "PixelLayout": ".families",
    "UnsupportedModelError": ".families",
    "base_model": ".families",
    "check_processor": ".families",
    "family_of": ".families",
    "register_family": ".families",
    "load_clip": ".loading",
    "load_processor": ".loading",
    "ZeroShotCLIP": ".zero_shot",
    "ZeroShotOutput": ".zero_shot",
    "build_text_head": ".zero_shot",
    "compute_text_head": ".zero_shot",
    "logits_of": ".zero_shot",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted([*_EXPORTS])
