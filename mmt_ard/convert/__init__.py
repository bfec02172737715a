"""Checkpoints of other CLIP libraries as transformers `CLIPModel`s, without importing those libraries.

`load_open_clip` reads open_clip and OpenAI-CLIP ViT checkpoints (Hub `hf-hub:` repositories, local folders, weights
files); `mmt_ard.load_clip` dispatches to it, so `Teacher(...)`, the example script and `mmt-ard-eval` accept them.
"""

from .open_clip_arch import KNOWN_ARCHS, OpenCLIPArch, arch_from_model_cfg, arch_from_state_dict, clip_config
from .open_clip_loader import load_open_clip
from .open_clip_processor import build_image_processor, resolve_tokenizer
from .open_clip_sources import (
    OpenCLIPSource,
    describe_source,
    fetch_files,
    hub_repo_has_open_clip_config,
    is_open_clip_source,
    parse_source,
)
from .open_clip_weights import normalise_keys, read_checkpoint, to_transformers

__all__ = [
    "KNOWN_ARCHS",
    "OpenCLIPArch",
    "OpenCLIPSource",
    "arch_from_model_cfg",
    "arch_from_state_dict",
    "build_image_processor",
    "clip_config",
    "describe_source",
    "fetch_files",
    "hub_repo_has_open_clip_config",
    "is_open_clip_source",
    "load_open_clip",
    "normalise_keys",
    "parse_source",
    "read_checkpoint",
    "resolve_tokenizer",
    "to_transformers",
]
