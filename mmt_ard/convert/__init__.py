"""Checkpoints of other CLIP libraries as transformers `CLIPModel`s, without importing those libraries.

`load_open_clip` reads open_clip and OpenAI-CLIP ViT checkpoints (Hub `hf-hub:` repositories, local folders, weights
files); `mmt_ard.load_clip` dispatches to it, so `Teacher(...)`, the example script and `mmt-ard-eval` accept them.
"""

from .._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (mmt_ard/_lazy.py)
_EXPORTS = {
    "KNOWN_ARCHS": ".open_clip_arch",
    "OpenCLIPArch": ".open_clip_arch",
    "arch_from_model_cfg": ".open_clip_arch",
    "arch_from_state_dict": ".open_clip_arch",
    "clip_config": ".open_clip_arch",
    "load_open_clip": ".open_clip_loader",
    "build_image_processor": ".open_clip_processor",
    "resolve_tokenizer": ".open_clip_processor",
    "OpenCLIPSource": ".open_clip_sources",
    "describe_source": ".open_clip_sources",
    "fetch_files": ".open_clip_sources",
    "hub_repo_has_open_clip_config": ".open_clip_sources",
    "is_open_clip_source": ".open_clip_sources",
    "parse_source": ".open_clip_sources",
    "normalise_keys": ".open_clip_weights",
    "read_checkpoint": ".open_clip_weights",
    "to_transformers": ".open_clip_weights",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted([*_EXPORTS])
