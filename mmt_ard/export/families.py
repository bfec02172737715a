"""Which LVLMs a robust tower can go into, and what kind of tower each holds.

An LVLM family is named by the `architectures[0]` of its `config.json`. Every supported family keeps its image
encoder in a `vision_tower` submodule that is a plain transformers vision model (`CLIPVisionModel` or
`SiglipVisionModel`); the tower's model family (`mmt_ard.models.families`) comes from
`config.vision_config.model_type`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.families import CLIP, SIGLIP, ModelFamily

# the towers an LVLM holds as a plain `CLIPVisionModel` / `SiglipVisionModel` (fixed-resolution SigLIP 2 checkpoints
# are `siglip` models): the model families of `mmt_ard.models` whose weights map onto them
EXPORTABLE_FAMILIES = (CLIP, SIGLIP)


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


def tower_family_of(model_type: str | None, what: str) -> ModelFamily:
    """The model family of a tower from a `model_type` (a full CLIP/SigLIP model or a vision-only one)."""
    for family in EXPORTABLE_FAMILIES:
        if model_type in family.model_types or model_type in family.vision_model_types:
            return family
    known = "; ".join(f"{f.title} ({', '.join([*f.model_types, *f.vision_model_types])})" for f in EXPORTABLE_FAMILIES)
    raise ValueError(f"{what} has model_type={model_type!r}: the exportable towers are {known}.")
