"""The architecture of an open_clip / OpenAI-CLIP checkpoint, read from its config, a known name or its tensors.

open_clip describes a model by a `model_cfg` dict (`embed_dim`, `vision_cfg`, `text_cfg`, `quick_gelu`, ...): the
`model_cfg` of an `open_clip_config.json`, or one of its built-in architecture names (`ViT-B-32`, ...). OpenAI-CLIP
state dicts carry no config: the architecture follows from the tensor shapes. All three become one `OpenCLIPArch`,
which maps onto a transformers `CLIPConfig`. Only what `CLIPModel` can compute exactly is accepted; anything else
raises a `ValueError` that names the feature.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

# open_clip's built-in ViT architectures (open_clip/model_configs/*.json), the layouts this module promises. The
# `-quickgelu` names are the same with `quick_gelu: true` (OpenAI's activation).
_VIT_B = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}
_VIT_L_TEXT = {"context_length": 77, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12}
KNOWN_ARCHS: dict[str, dict] = {
    "ViT-B-32": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": _VIT_B,
    },
    "ViT-B-16": {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
        "text_cfg": _VIT_B,
    },
    "ViT-L-14": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 14},
        "text_cfg": _VIT_L_TEXT,
    },
    "ViT-L-14-336": {
        "embed_dim": 768,
        "vision_cfg": {"image_size": 336, "layers": 24, "width": 1024, "patch_size": 14},
        "text_cfg": _VIT_L_TEXT,
    },
}


@dataclass(frozen=True)
class OpenCLIPArch:
    """A ViT CLIP that transformers' `CLIPModel` computes exactly.

    Args:
        embed_dim: joint embedding size (`projection_dim`).
        image_size: square input size of the vision tower.
        patch_size: square ViT patch size.
        vision_width, vision_layers, vision_heads: the vision transformer.
        vision_mlp_ratio: MLP width / model width of the vision blocks.
        quick_gelu: OpenAI's `x * sigmoid(1.702 x)` (`True`) or exact GELU (`False`), both towers.
        context_length, vocab_size, text_width, text_layers, text_heads, text_mlp_ratio: the text transformer;
            `None` for a vision-only checkpoint.
        text_pool: `argmax` (the highest token id, OpenAI's end-of-text) or `eos` (the first `text_eos_id`).
        text_eos_id: the end-of-text id of `eos` pooling.
        source: where the architecture was read from, for messages.
    """

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp_ratio: float = 4.0
    quick_gelu: bool = False
    context_length: int | None = None
    vocab_size: int | None = None
    text_width: int | None = None
    text_layers: int | None = None
    text_heads: int | None = None
    text_mlp_ratio: float = 4.0
    text_pool: str = "argmax"
    text_eos_id: int | None = None
    source: str = "checkpoint"

    @property
    def has_text(self) -> bool:
        return self.text_width is not None


def _unsupported(where: str, feature: str, value, what: str = "") -> ValueError:
    what = f" ({what})" if what else ""
    return ValueError(
        f"{where}: `{feature}`={value!r}{what} is not supported. Only plain ViT CLIPs (OpenAI CLIP and open_clip's "
        "ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14-336 families, QuickGELU or GELU) convert exactly to a transformers "
        "CLIPModel; load this checkpoint with open_clip itself."
    )


# (key, default) of open_clip tower options that change the computation; a non-default value is refused
_VISION_REFUSED = {
    "timm_model_name": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "ls_init_value": None,
    "act_kwargs": None,
    "norm_kwargs": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "input_patchnorm": False,
    "global_average_pool": False,
}
_TEXT_REFUSED = {
    "hf_model_name": None,
    "embed_cls": False,
    "no_causal_mask": False,
    "proj_bias": False,
    "ls_init_value": None,
    "act_kwargs": None,
    "norm_kwargs": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
_MODEL_REFUSED = {"multimodal_cfg": None, "init_logit_bias": None}
_WHAT = {
    "timm_model_name": "a timm image tower",
    "hf_model_name": "a Hugging Face text tower",
    "attentional_pool": "attentional pooling",
    "ls_init_value": "layer scale",
    "multimodal_cfg": "a CoCa captioning model",
    "init_logit_bias": "a SigLIP-style logit bias",
    "embed_cls": "a CLS-token text tower",
}


def _is_default(value, default) -> bool:
    # open_clip tests these options for truth (`if vision_cfg.timm_model_name:`), so "", None and False are all off
    return value == default or (not default and not value)


def _square(where: str, name: str, value) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise _unsupported(where, name, value)
        value = value[0]
    return int(value)


def arch_from_model_cfg(model_cfg: dict, source: str = "open_clip_config.json") -> OpenCLIPArch:
    """An `OpenCLIPArch` from an open_clip `model_cfg` dict.

    Args:
        model_cfg: `{"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"?, ...}` as in `open_clip_config.json`.
        source: named in error messages.

    Raises:
        ValueError: naming the option when the config describes something `CLIPModel` cannot compute (ResNet, timm
            or Hugging Face towers, attentional pooling, layer scale, custom attention blocks, CoCa, SigLIP bias).
    """
    if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg"} <= set(model_cfg):
        raise ValueError(
            f"{source}: expected an open_clip `model_cfg` with `embed_dim`, `vision_cfg` and `text_cfg`; got keys "
            f"{sorted(model_cfg) if isinstance(model_cfg, dict) else type(model_cfg).__name__}."
        )
    for key, default in _MODEL_REFUSED.items():
        if not _is_default(model_cfg.get(key, default), default):
            raise _unsupported(source, key, model_cfg[key], _WHAT.get(key, ""))
    vision = dict(model_cfg["vision_cfg"])
    text = dict(model_cfg.get("text_cfg") or {})
    if isinstance(vision.get("layers"), (list, tuple)):
        raise _unsupported(source, "vision_cfg.layers", vision["layers"], "a ResNet image tower")
    for key, default in _VISION_REFUSED.items():
        if not _is_default(vision.get(key, default), default):
            raise _unsupported(source, f"vision_cfg.{key}", vision[key], _WHAT.get(key, ""))
    for key, default in _TEXT_REFUSED.items():
        if not _is_default(text.get(key, default), default):
            raise _unsupported(source, f"text_cfg.{key}", text[key], _WHAT.get(key, ""))
    for cfg, prefix in ((vision, "vision_cfg"), (text, "text_cfg")):
        if cfg.get("block_type") not in (None, "default"):
            raise _unsupported(source, f"{prefix}.block_type", cfg["block_type"])
    # a LayerNorm after pooling one token equals pooling the normalised tokens: only a pool over tokens differs
    if vision.get("pool_type", "tok") != "tok":
        raise _unsupported(source, "vision_cfg.pool_type", vision["pool_type"])
    pool = text.get("pool_type", "argmax")
    if pool not in ("argmax", "eos"):
        raise _unsupported(source, "text_cfg.pool_type", pool)
    if text.get("proj_type", "linear") != "linear":
        raise _unsupported(source, "text_cfg.proj_type", text["proj_type"])
    width = int(vision.get("width", 768))
    head_width = int(vision.get("head_width", 64))
    if width % head_width:
        raise _unsupported(source, "vision_cfg.head_width", head_width)
    eos_id = int(text.get("eos_id", 2)) if pool == "eos" else None
    if eos_id == 2:
        # transformers reads `eos_token_id == 2` as "pool at the argmax" (its legacy CLIP configs)
        raise _unsupported(source, "text_cfg.eos_id (with pool_type 'eos')", eos_id)
    return OpenCLIPArch(
        embed_dim=int(model_cfg["embed_dim"]),
        image_size=_square(source, "vision_cfg.image_size", vision.get("image_size", 224)),
        patch_size=_square(source, "vision_cfg.patch_size", vision.get("patch_size", 16)),
        vision_width=width,
        vision_layers=int(vision.get("layers", 12)),
        vision_heads=width // head_width,
        vision_mlp_ratio=float(vision.get("mlp_ratio", 4.0)),
        quick_gelu=bool(model_cfg.get("quick_gelu", False)),
        context_length=int(text.get("context_length", 77)),
        vocab_size=int(text.get("vocab_size", 49408)),
        text_width=int(text.get("width", 512)),
        text_layers=int(text.get("layers", 12)),
        text_heads=int(text.get("heads", 8)),
        text_mlp_ratio=float(text.get("mlp_ratio", 4.0)),
        text_pool=pool,
        text_eos_id=eos_id,
        source=source,
    )


def known_model_cfg(name: str) -> dict | None:
    """open_clip's `model_cfg` of a built-in name (`ViT-B-32`, `ViT-L-14-336-quickgelu`, ...), else `None`."""
    quick = name.endswith("-quickgelu")
    cfg = KNOWN_ARCHS.get(name[: -len("-quickgelu")] if quick else name)
    if cfg is None:
        return None
    return {**cfg, "quick_gelu": quick}


def _count_blocks(state_dict: dict, prefix: str) -> int:
    found = {int(m.group(1)) for k in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    if found != set(range(len(found))):
        raise ValueError(f"The checkpoint's blocks under `{prefix}` are not numbered 0..N-1: {sorted(found)}.")
    return len(found)


def arch_from_state_dict(state_dict: dict[str, torch.Tensor], quick_gelu: bool = True) -> OpenCLIPArch:
    """Infer the architecture from an OpenAI-layout state dict (`visual.*`, and `token_embedding` etc. for text).

    Heads are `width // 64` (OpenAI's and open_clip's ViT-B/L convention); the activation is not stored in a state
    dict, so it is `quick_gelu` (OpenAI CLIP and every fine-tune of its weights use QuickGELU).

    Args:
        state_dict: normalised keys (see `open_clip_weights.normalise_keys`).
        quick_gelu: the activation to assume.
    """
    conv = state_dict["visual.conv1.weight"]  # (width, 3, patch, patch)
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    positions = int(state_dict["visual.positional_embedding"].shape[0])  # grid**2 + 1
    grid = round((positions - 1) ** 0.5)
    if grid * grid + 1 != positions:
        raise ValueError(f"`visual.positional_embedding` has {positions} rows: not a square grid plus a class token.")
    proj = state_dict["visual.proj"]  # (width, embed_dim)
    fc = state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"]  # (mlp_width, width)
    fields = {
        "embed_dim": int(proj.shape[1]),
        "image_size": grid * patch,
        "patch_size": patch,
        "vision_width": width,
        "vision_layers": _count_blocks(state_dict, "visual.transformer.resblocks."),
        "vision_heads": max(width // 64, 1),
        "vision_mlp_ratio": fc.shape[0] / width,
        "quick_gelu": quick_gelu,
        "source": "tensor shapes",
    }
    if "token_embedding.weight" in state_dict:
        text_width = int(state_dict["ln_final.weight"].shape[0])
        text_fc = state_dict["transformer.resblocks.0.mlp.c_fc.weight"]
        fields.update(
            context_length=int(state_dict["positional_embedding"].shape[0]),
            vocab_size=int(state_dict["token_embedding.weight"].shape[0]),
            text_width=text_width,
            text_layers=_count_blocks(state_dict, "transformer.resblocks."),
            text_heads=max(text_width // 64, 1),
            text_mlp_ratio=text_fc.shape[0] / text_width,
        )
    return OpenCLIPArch(**fields)


def clip_config(arch: OpenCLIPArch, logit_scale: float = 2.6592):
    """The transformers `CLIPConfig` of a (full) architecture.

    Text pooling: open_clip's `argmax` pools at the highest token id; transformers does exactly that when
    `eos_token_id == 2` (the value of OpenAI's own transformers configs), so that is what `argmax` maps to.
    """
    from transformers import CLIPConfig

    if not arch.has_text:
        raise ValueError("A vision-only architecture has no CLIPConfig of its own: it needs a reference CLIP model.")
    act = "quick_gelu" if arch.quick_gelu else "gelu"
    eos = 2 if arch.text_pool == "argmax" else arch.text_eos_id
    text_config = {
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.text_width,
        "intermediate_size": int(arch.text_width * arch.text_mlp_ratio),
        "num_hidden_layers": arch.text_layers,
        "num_attention_heads": arch.text_heads,
        "max_position_embeddings": arch.context_length,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        "eos_token_id": eos,
    }
    return CLIPConfig(
        text_config=text_config,
        vision_config=vision_config_dict(arch),
        projection_dim=arch.embed_dim,
        logit_scale_init_value=float(logit_scale),
    )


def vision_config_dict(arch: OpenCLIPArch) -> dict:
    """The `CLIPVisionConfig` fields of an architecture."""
    return {
        "hidden_size": arch.vision_width,
        "intermediate_size": int(arch.vision_width * arch.vision_mlp_ratio),
        "num_hidden_layers": arch.vision_layers,
        "num_attention_heads": arch.vision_heads,
        "image_size": arch.image_size,
        "patch_size": arch.patch_size,
        "hidden_act": "quick_gelu" if arch.quick_gelu else "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": arch.embed_dim,
    }
