"""Loading models and processors of every family: transformers checkpoints (Hub ids, folders) and open_clip files.

`load_clip` is the one public entry. It reads the checkpoint's config, picks the family and class from its
`model_type` (`families.family_for_config`), loads the model and the processor, and checks that they belong
together; open_clip / OpenAI-CLIP checkpoints go to the converter (`mmt_ard.convert`), which is handed this module's
loader for the CLIP a vision-only file was fine-tuned from. This layer sits above both the zero-shot wrapper and the
converter: neither imports the other.
"""

from __future__ import annotations

import os

import torch

from ..convert import hub_repo_has_open_clip_config, is_open_clip_source, load_open_clip
from .families import UnsupportedModelError, check_processor, describe_processor, family_for_config, family_of


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _not_found(name_or_path: str, err: Exception) -> OSError:
    offline = " (offline mode is on: HF_HUB_OFFLINE=1)" if _offline() else ""
    return OSError(
        f"Could not load a model from `{name_or_path}`: it is neither a local folder holding config.json and model "
        f"weights nor a Hub id that could be reached{offline}. Give a local folder, a Hub id reachable from this "
        "machine, or an open_clip checkpoint (`hf-hub:org/name`, a folder with open_clip_config.json, a weights "
        f"file). ({err})"
    )


def load_processor(name_or_path, family=None):
    """The processor saved at `name_or_path` (Hub id or folder); a processor object is returned as given.

    Args:
        name_or_path: Hub id, local folder, or a processor / tokenizer object.
        family: the model's family, for the fallback class when `AutoProcessor` cannot tell.
    """
    if name_or_path is None or not isinstance(name_or_path, (str, os.PathLike)):
        return name_or_path
    import transformers

    try:
        return transformers.AutoProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError, KeyError, TypeError) as auto_err:
        if family is None:
            raise OSError(f"Could not load a processor from `{name_or_path}`. ({auto_err})") from auto_err
        processor_class = {"clip": "CLIPProcessor", "siglip": "SiglipProcessor", "siglip2": "Siglip2Processor"}.get(
            family.name
        )
        if processor_class is None:
            raise
        return getattr(transformers, processor_class).from_pretrained(name_or_path)


def _load_transformers(name_or_path: str, processor_name_or_path=None, dtype: torch.dtype | None = None):
    """A transformers checkpoint of a known family and its processor (see `load_clip`)."""
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        if not os.path.exists(name_or_path) and hub_repo_has_open_clip_config(name_or_path):
            return load_open_clip(
                f"hf-hub:{name_or_path}", processor_name_or_path, dtype=dtype, load_reference=load_clip
            )
        raise _not_found(name_or_path, err) from err
    family, kind, class_name = family_for_config(config, name_or_path)
    if kind == "vision":
        raise UnsupportedModelError(
            f"`{name_or_path}` is a vision-only {family.title} tower ({class_name}): zero-shot classification and "
            f"distillation need the text tower too. Load the full {family.title} model it belongs to, or build "
            "`ZeroShotCLIP(tower, processor)` and give it class embeddings with `set_class_embeddings`."
        )
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = getattr(transformers, class_name).from_pretrained(name_or_path, **kwargs)
    if processor_name_or_path is not None and not isinstance(processor_name_or_path, (str, os.PathLike)):
        processor = processor_name_or_path
    else:
        where = processor_name_or_path or name_or_path
        try:
            processor = load_processor(where, family)
        except (OSError, ValueError) as err:
            raise OSError(
                f"Could not load a processor from `{where}`: this model repository has no tokenizer/image-processor "
                "files; pass `processor=` (a Teacher field) or `--*_processor` naming the repository the model was "
                f"fine-tuned from. ({err})"
            ) from err
    if getattr(processor, "tokenizer", None) is None or getattr(processor, "image_processor", None) is None:
        raise OSError(
            f"`{processor_name_or_path or name_or_path}` gave a {describe_processor(processor)}, not a processor with "
            "a tokenizer and an image processor: pass the repository the model was fine-tuned from as its processor."
        )
    family, _ = family_of(model, processor)
    check_processor(family, model, processor)
    return model, processor


def load_clip(name_or_path: str, processor_name_or_path=None, dtype: torch.dtype | None = None):
    """Load a CLIP-like model of a known family (CLIP, SigLIP, SigLIP 2) and its processor.

    Args:
        name_or_path: Hub id (e.g. `openai/clip-vit-base-patch32`, `google/siglip-base-patch16-224`) or local folder
            of a transformers checkpoint; or an open_clip checkpoint, converted to a `CLIPModel` without open_clip
            (`mmt_ard.convert.load_open_clip`): `hf-hub:org/name`, a Hub repository or local folder holding
            `open_clip_config.json`, a weights file (`.pt`, `.bin`, `.safetensors`, ...), optionally `ViT-B-32@path`
            to name the architecture of a file without config.
        processor_name_or_path: where the processor lives when the model repository has none
            (e.g. `LEAF-CLIP/CLIP-ViT-L-FARE2` takes `openai/clip-vit-large-patch14`'s), or a processor object,
            returned as given. For an open_clip checkpoint: where its tokenizer comes from (default: OpenAI's CLIP
            tokenizer), and for a vision-only file the CLIP it was fine-tuned from, whose text tower completes it.
        dtype: optional dtype to load the weights in.

    Returns:
        `(model, processor)`: a `CLIPModel`, `SiglipModel` or `Siglip2Model` and its processor.

    Raises:
        UnsupportedModelError: a checkpoint of another family (the message lists the supported ones), a vision-only
            tower, or a processor of another family.
        OSError: nothing loadable at `name_or_path` (the message says whether offline mode is on).
    """
    if is_open_clip_source(name_or_path):
        return load_open_clip(name_or_path, processor_name_or_path, dtype=dtype, load_reference=load_clip)
    return _load_transformers(name_or_path, processor_name_or_path, dtype)
