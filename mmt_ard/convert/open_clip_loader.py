"""Load an open_clip or OpenAI-CLIP checkpoint as a transformers `CLIPModel` + `CLIPProcessor`, without open_clip.

`load_open_clip(spec, reference)` reads the source (`open_clip_sources`), its weights (`open_clip_weights`), its
architecture from `open_clip_config.json`, an `ARCH@` name or the tensor shapes (`open_clip_arch`), and builds the
processor (`open_clip_processor`). A weights file may be a full state dict or a vision-only one (`model.visual`'s
keys), possibly nested under `state_dict` / `model` / `vision_encoder_state_dict` and prefixed with `module.`.
Without a config the architecture is read from the tensor shapes with QuickGELU (OpenAI CLIP's activation, kept by
every fine-tune of OpenAI's weights).

What the checkpoint lacks comes from `reference`: the tokenizer (open_clip's default tokenizer is OpenAI's CLIP BPE,
the tokenizer of every `openai/clip-vit-*` repository, which is used when nothing else is given), and, for a
vision-only file, the text tower, text projection, logit scale, activation and processor of the CLIP it was
fine-tuned from.
"""

from __future__ import annotations

import torch

from .open_clip_arch import (
    OpenCLIPArch,
    arch_from_model_cfg,
    arch_from_state_dict,
    clip_config,
    known_model_cfg,
    vision_config_dict,
)
from .open_clip_processor import build_image_processor, resolve_tokenizer
from .open_clip_sources import CONFIG_NAME, OpenCLIPSource, fetch_files, parse_source
from .open_clip_weights import has_text_tower, normalise_keys, read_checkpoint, to_transformers


def _empty_clip(config):
    """A `CLIPModel` without random initialisation (every parameter is overwritten and checked afterwards)."""
    from transformers import CLIPModel

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        return CLIPModel(config)
    with no_init_weights():
        return CLIPModel(config)


def _load_checked(model, weights: dict[str, torch.Tensor], where: str, arch_source: str) -> None:
    """Load `weights` into `model` after checking that every parameter is given once with the right shape."""
    expected = model.state_dict()
    buffers = {name for name, _ in model.named_buffers()}
    for key, tensor in weights.items():
        if key not in expected:
            raise ValueError(f"{where}: converted tensor `{key}` has no place in the CLIPModel (internal error).")
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{where}: `{key}` has shape {tuple(tensor.shape)} in the checkpoint but the architecture read from "
                f"{arch_source} needs {tuple(expected[key].shape)}: the config (or `ARCH@`) and the weights disagree."
            )
    missing = sorted(set(expected) - set(weights) - buffers)
    if missing:
        raise ValueError(f"{where}: the checkpoint gives no tensor for {missing[:8]}.")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()}, strict=False)


def _architecture(source: OpenCLIPSource, config: dict | None, state_dict: dict) -> OpenCLIPArch:
    if source.arch_name is not None:
        return arch_from_model_cfg(known_model_cfg(source.arch_name), source=f"`{source.arch_name}`")
    if config is not None:
        return arch_from_model_cfg(config["model_cfg"], source=f"{CONFIG_NAME} of `{source.spec}`")
    return arch_from_state_dict(state_dict, quick_gelu=True)


def _load_reference_clip(reference: str):
    """The reference CLIP of a vision-only file, loaded with transformers (`load_open_clip`'s default)."""
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(reference), CLIPProcessor.from_pretrained(reference)


def _graft_vision(arch, source, config, state_dict, weights_path, reference, load_reference):
    """A vision-only checkpoint on the text tower, projection, logit scale and processor of `reference`."""
    if reference is None:
        raise ValueError(
            f"`{source.spec}` holds only an image tower (`model.visual`'s weights, as RobustVLM's and TeCoA's files "
            "do): name the CLIP it was fine-tuned from as `processor_name_or_path` (`--*_processor`, "
            "`Teacher(processor=...)`), e.g. `openai/clip-vit-large-patch14` for a ViT-L/14; its text tower "
            "and processor complete the model."
        )
    if not isinstance(reference, str):
        raise TypeError(
            f"`{source.spec}` is vision-only: its reference must be the Hub id or path of a full CLIP (the one it was "
            f"fine-tuned from), not a {type(reference).__name__}."
        )
    # the activation is the reference's too: a vision-only file does not store it, and an architecture name would
    # mislead (RobustVLM loads its ViT-L/14 files onto `ViT-L-14` + `pretrained='openai'`, which open_clip runs with
    # QuickGELU whatever the name says)
    base, processor = load_reference(reference)
    vision = base.config.vision_config
    want = vision_config_dict(arch)
    differ = {
        k: (getattr(vision, k), want[k])
        for k in ("hidden_size", "num_hidden_layers", "patch_size", "image_size", "intermediate_size")
        if getattr(vision, k) != want[k]
    }
    if base.config.projection_dim != arch.embed_dim:
        differ["projection_dim"] = (base.config.projection_dim, arch.embed_dim)
    if differ:
        raise ValueError(
            f"`{source.spec}`: its image tower does not fit the reference `{reference}` (reference, checkpoint): "
            f"{differ}. Name the CLIP this tower was fine-tuned from."
        )
    weights = {k: v for k, v in base.state_dict().items() if k not in dict(base.named_buffers())}
    weights.update(to_transformers(state_dict, weights_path))
    _load_checked(base, weights, weights_path, arch.source)
    if config is not None and config.get("preprocess_cfg"):
        from transformers import CLIPProcessor

        processor = CLIPProcessor(
            image_processor=build_image_processor(arch, config["preprocess_cfg"]), tokenizer=processor.tokenizer
        )
    return base, processor


def load_open_clip(spec: str, reference=None, dtype: torch.dtype | None = None, load_reference=None):
    """Load an open_clip / OpenAI-CLIP checkpoint as a transformers `(CLIPModel, CLIPProcessor)`.

    Args:
        spec: `hf-hub:org/name`, a local folder or weights file, optionally `ARCH@` in front (see the module doc).
        reference: what the checkpoint lacks: a Hub id / folder whose tokenizer is used (default: OpenAI's CLIP
            tokenizer) or a processor / tokenizer object; for a vision-only file, the Hub id / path of the CLIP it
            was fine-tuned from (its text tower and processor complete the model).
        dtype: dtype of the returned model (default fp32).
        load_reference: `reference -> (CLIPModel, processor)` for a vision-only file's reference (default:
            transformers' `CLIPModel` / `CLIPProcessor.from_pretrained`; `mmt_ard.load_clip` passes its own loader).

    Returns:
        `(model, processor)`: a `CLIPModel` in eval mode whose `config._name_or_path` is `spec`, and a
        `CLIPProcessor` with the checkpoint's image size, mean/std, interpolation and text context length.
    """
    from transformers import CLIPProcessor

    source = parse_source(spec)
    if source is None:
        raise ValueError(
            f"`{spec}` is not an open_clip checkpoint: give `hf-hub:org/name`, a folder holding {CONFIG_NAME}, or a "
            "weights file (optionally `ViT-B-32@path`)."
        )
    weights_path, config, folder = fetch_files(source)
    state_dict = normalise_keys(read_checkpoint(weights_path), weights_path)
    arch = _architecture(source, config, state_dict)
    if has_text_tower(state_dict):
        model = _empty_clip(clip_config(arch, logit_scale=float(state_dict["logit_scale"].reshape(()))))
        _load_checked(model, to_transformers(state_dict, weights_path), weights_path, arch.source)
        tokenizer = resolve_tokenizer(arch, source.spec, config, folder, reference)
        processor = CLIPProcessor(
            image_processor=build_image_processor(arch, (config or {}).get("preprocess_cfg")), tokenizer=tokenizer
        )
    else:
        loader = load_reference or _load_reference_clip
        model, processor = _graft_vision(arch, source, config, state_dict, weights_path, reference, loader)
    model.config._name_or_path = spec
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    return model, processor
