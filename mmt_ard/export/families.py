"""Which LVLMs a robust tower can go into, and what kind of tower each holds.

An LVLM family is named by the `architectures[0]` of its `config.json`. Every supported family keeps its image
encoder in a `vision_tower` submodule that is a plain transformers vision model (`CLIPVisionModel` or
`SiglipVisionModel`); the tower's kind comes from `config.vision_config.model_type`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TowerKind:
    """A kind of ViT image tower.

    Args:
        name: `clip` or `siglip`.
        model_type: `model_type` of its vision config.
        has_class_token: whether the first row of the position embedding belongs to a class token (CLIP) or every
            row is a grid position (SigLIP).
        default_mean: image mean when a processor says nothing.
        default_std: image std when a processor says nothing.
    """

    name: str
    model_type: str
    has_class_token: bool
    default_mean: tuple[float, float, float]
    default_std: tuple[float, float, float]


TOWER_KINDS = {
    "clip": TowerKind(
        "clip",
        "clip_vision_model",
        True,
        (0.48145466, 0.4578275, 0.40821073),
        (0.26862954, 0.26130258, 0.27577711),
    ),
    "siglip": TowerKind("siglip", "siglip_vision_model", False, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}

# model_type of a full model or a vision-only model -> tower kind
MODEL_TYPE_TO_KIND = {
    "clip": "clip",
    "clip_vision_model": "clip",
    "siglip": "siglip",
    "siglip_vision_model": "siglip",
}


@dataclass(frozen=True)
class LVLMFamily:
    """A supported LVLM class.

    Args:
        architecture: the transformers class name, as in `config.json`'s `architectures`.
        towers: tower kinds this class is known to hold.
        description: what it is, for messages and docs.
    """

    architecture: str
    towers: tuple[str, ...]
    description: str


LVLM_FAMILIES: dict[str, LVLMFamily] = {
    f.architecture: f
    for f in (
        LVLMFamily("LlavaForConditionalGeneration", ("clip", "siglip"), "LLaVA-1.5 and other single-crop LLaVAs"),
        LVLMFamily("LlavaNextForConditionalGeneration", ("clip", "siglip"), "LLaVA-NeXT (LLaVA-1.6, any-resolution)"),
        LVLMFamily("LlavaOnevisionForConditionalGeneration", ("siglip",), "LLaVA-OneVision (SigLIP tower)"),
        LVLMFamily("PaliGemmaForConditionalGeneration", ("siglip",), "PaliGemma (SigLIP tower)"),
    )
}


def supported_families() -> str:
    """One line listing the supported LVLM classes, for error messages."""
    return ", ".join(f"{name} ({f.description})" for name, f in LVLM_FAMILIES.items())


def lvlm_family(config: dict, where: str) -> LVLMFamily:
    """The family of an LVLM from its `config.json` content; a `ValueError` listing the supported ones otherwise."""
    architectures = config.get("architectures") or []
    for arch in architectures:
        if arch in LVLM_FAMILIES:
            return LVLM_FAMILIES[arch]
    found = architectures[0] if architectures else f"model_type={config.get('model_type')!r}"
    raise ValueError(
        f"`--into` {where!r} is a {found}: this LVLM class is not supported. Supported classes: {supported_families()}."
    )


def tower_kind_of(model_type: str | None, what: str) -> TowerKind:
    """The tower kind of a `model_type` (a full CLIP/SigLIP model or a vision-only one)."""
    kind = MODEL_TYPE_TO_KIND.get(model_type or "")
    if kind is None:
        raise ValueError(
            f"{what} has model_type={model_type!r}: the exportable towers are CLIP ({', '.join(_types('clip'))}) and "
            f"SigLIP ({', '.join(_types('siglip'))})."
        )
    return TOWER_KINDS[kind]


def _types(kind: str) -> list[str]:
    return [t for t, k in MODEL_TYPE_TO_KIND.items() if k == kind]
