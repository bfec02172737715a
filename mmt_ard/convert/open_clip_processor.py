"""The `CLIPProcessor` of an open_clip checkpoint: its tokenizer and its eval image preprocessing."""

from __future__ import annotations

import logging
import os

from .open_clip_arch import OpenCLIPArch
from .open_clip_sources import TOKENIZER_FILES

logger = logging.getLogger(__name__)

# open_clip's default tokenizer (SimpleTokenizer) is OpenAI's CLIP BPE: the tokenizer of every openai/clip-vit-* repo
OPENAI_TOKENIZER = "openai/clip-vit-base-patch32"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3, "random": 3}  # PIL codes; `random` is a training option


def _tokenizer_of(obj):
    tokenizer = getattr(obj, "tokenizer", None)
    return tokenizer if tokenizer is not None else obj


def _has_tokenizer_files(folder: str | None) -> bool:
    return bool(folder) and any(os.path.isfile(os.path.join(folder, n)) for n in TOKENIZER_FILES[:3])


def resolve_tokenizer(arch: OpenCLIPArch, spec: str, config: dict | None, folder: str | None, reference=None):
    """The checkpoint's tokenizer: from `reference`, files beside the weights, `hf_tokenizer_name`, or OpenAI's BPE.

    Args:
        arch: the checkpoint's architecture (its vocabulary size and context length).
        spec: the checkpoint as given, for messages.
        config: its `open_clip_config.json` (or `None`).
        folder: where tokenizer files may lie beside the weights.
        reference: a tokenizer / processor object, or a Hub id / folder holding a tokenizer.

    Returns:
        A transformers tokenizer whose `model_max_length` is the text tower's context length.
    """
    from transformers import AutoTokenizer

    text_cfg = (config or {}).get("model_cfg", {}).get("text_cfg", {}) or {}
    if text_cfg.get("tokenizer_kwargs") or text_cfg.get("tokenizer_mode"):
        logger.warning(
            "%s sets tokenizer options %s: the transformers tokenizer used here lower-cases and cleans text the "
            "OpenAI CLIP way and ignores them.",
            spec,
            {k: text_cfg.get(k) for k in ("tokenizer_kwargs", "tokenizer_mode") if text_cfg.get(k)},
        )
    if reference is not None and not isinstance(reference, str):
        tokenizer = _tokenizer_of(reference)
    else:
        where = reference
        if where is None and _has_tokenizer_files(folder):
            where = folder
        if where is None:
            where = text_cfg.get("hf_tokenizer_name")
        if where is None:
            if arch.vocab_size != 49408:
                raise ValueError(
                    f"`{spec}`: its text tower has {arch.vocab_size} tokens, not the 49408 of OpenAI's CLIP "
                    "tokenizer, and no tokenizer is named: pass the tokenizer's repository or folder as "
                    "`processor_name_or_path` (`Teacher(processor=...)`, `--*_processor`, `--processor`)."
                )
            where = OPENAI_TOKENIZER
        try:
            tokenizer = AutoTokenizer.from_pretrained(where)
        except OSError as err:
            raise OSError(
                f"`{spec}`: could not load its tokenizer from `{where}`. open_clip checkpoints use OpenAI's "
                f"CLIP tokenizer (the one of `{OPENAI_TOKENIZER}`, reachable from the Hub or its cache); offline, "
                "pass a local folder holding it as `processor_name_or_path` (`--*_processor`). ({err})"
            ) from err
    if arch.vocab_size is not None and len(tokenizer) > arch.vocab_size:
        raise ValueError(
            f"`{spec}`: the tokenizer has {len(tokenizer)} tokens but the text tower only {arch.vocab_size}: "
            "it is not this checkpoint's tokenizer."
        )
    if arch.context_length is not None:
        tokenizer.model_max_length = arch.context_length
    return tokenizer


def build_image_processor(arch: OpenCLIPArch, preprocess_cfg: dict | None):
    """A `CLIPImageProcessor` (PIL backend: no torchvision) with open_clip's eval preprocessing of the checkpoint.

    open_clip resizes the shortest edge and centre-crops (`resize_mode: shortest`, its default) or resizes both
    edges (`squash`); `longest` (letterbox padding) has no transformers equivalent and falls back to `shortest`.
    """
    try:
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor

    cfg = dict(preprocess_cfg or {})
    size = cfg.get("size", arch.image_size)
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        logger.warning("resize_mode=%r has no transformers equivalent: the processor resizes the shortest edge.", mode)
        mode = "shortest"
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in _RESAMPLE:
        raise ValueError(f"preprocess_cfg `interpolation`={interpolation!r}: expected one of {sorted(_RESAMPLE)}.")
    kwargs = {
        "image_mean": [float(m) for m in cfg.get("mean", OPENAI_CLIP_MEAN)],
        "image_std": [float(s) for s in cfg.get("std", OPENAI_CLIP_STD)],
        "resample": _RESAMPLE[interpolation],
        "crop_size": {"height": size, "width": size},
    }
    if mode == "squash":
        return CLIPImageProcessor(size={"height": size, "width": size}, do_center_crop=False, **kwargs)
    return CLIPImageProcessor(size={"shortest_edge": size}, do_center_crop=True, **kwargs)
