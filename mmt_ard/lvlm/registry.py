"""One registry of the LVLM classes a robust CLIP / SigLIP tower can go into and be measured in.

An entry says what the export and the evaluation need to know about one transformers class: where its tower's
tensors are in a checkpoint, which tower families fit, which hidden layer feeds the projector, how prompts are built,
and which image pipeline its processor runs (`mmt_ard.lvlm.pipelines`). Adding a class means one entry here and its
tests (tests/test_lvlm_classes.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.families import CLIP, SIGLIP, ModelFamily

# vision-tower `model_type`s outside `mmt_ard.models.families` whose weights are a SigLIP vision transformer's
# (Idefics3 / SmolVLM keep the SigLIP encoder under their own class; its head is not there)
EXTRA_TOWER_TYPES = {"idefics3_vision": SIGLIP, "smolvlm_vision": SIGLIP}
EXPORTABLE_FAMILIES = (CLIP, SIGLIP)


@dataclass(frozen=True)
class LVLMClass:
    """A supported LVLM class.

    Args:
        architecture: the transformers class name, as in `config.json`'s `architectures`.
        description: what it is, for messages and docs.
        towers: tower families (`clip`, `siglip`) this class is known to hold.
        tower_keys: substrings that mark the tower's tensors in a checkpoint, in the 5.x and 4.x key layouts
            (`vision_tower.`, `vision_tower.vision_model.`, `model.vision_tower.`; Idefics3: `model.vision_model.`,
            4.x `model.vision_model.`); the tower is found from its patch embedding under one of them.
        feature_layer: which hidden state of the tower feeds the projector (a config field or a fixed description).
        prompt: `chat` (the processor's chat template with one image) or `prefix` (PaliGemma: a plain task prefix,
            the processor adds the image tokens and bos).
        pipeline: the image pipeline kind (`single`, `anyres`, `split`, `crop`; see `mmt_ard.lvlm.pipelines`).
        reply_token_type: the `token_type_ids` value of the reply's tokens when the processor returns
            `token_type_ids` (PaliGemma: 1, the suffix; Gemma 3 marks image tokens with 1, the reply is 0).
        example: a public checkpoint of the class, for docs.
    """

    architecture: str
    description: str
    towers: tuple[str, ...]
    tower_keys: tuple[str, ...]
    feature_layer: str
    prompt: str
    pipeline: str
    reply_token_type: int = 0
    example: str = ""


_TOWER = ("vision_tower.",)
LVLM_CLASSES: dict[str, LVLMClass] = {
    c.architecture: c
    for c in (
        LVLMClass(
            "LlavaForConditionalGeneration",
            "LLaVA-1.5 and other single-crop LLaVAs",
            ("clip", "siglip"),
            _TOWER,
            "config.vision_feature_layer (LLaVA-1.5: -2)",
            "chat",
            "single",
            example="llava-hf/llava-1.5-7b-hf",
        ),
        LVLMClass(
            "LlavaNextForConditionalGeneration",
            "LLaVA-NeXT (LLaVA-1.6, any-resolution)",
            ("clip", "siglip"),
            _TOWER,
            "config.vision_feature_layer (-2)",
            "chat",
            "anyres",
            example="llava-hf/llava-v1.6-mistral-7b-hf",
        ),
        LVLMClass(
            "LlavaNextVideoForConditionalGeneration",
            "LLaVA-NeXT-Video (images through LLaVA-NeXT's any-resolution pipeline)",
            ("clip", "siglip"),
            _TOWER,
            "config.vision_feature_layer (-2)",
            "chat",
            "anyres",
            example="llava-hf/LLaVA-NeXT-Video-7B-hf",
        ),
        LVLMClass(
            "VipLlavaForConditionalGeneration",
            "ViP-LLaVA (CLIP tower, several layers feed the projector)",
            ("clip", "siglip"),
            _TOWER,
            "config.vision_feature_layer (several: -2, -5, -8, -11, 6)",
            "chat",
            "single",
            example="llava-hf/vip-llava-7b-hf",
        ),
        LVLMClass(
            "LlavaOnevisionForConditionalGeneration",
            "LLaVA-OneVision (SigLIP tower, any-resolution)",
            ("siglip",),
            _TOWER,
            "config.vision_feature_layer (-1)",
            "chat",
            "anyres",
            example="llava-hf/llava-onevision-qwen2-0.5b-ov-hf",
        ),
        LVLMClass(
            "PaliGemmaForConditionalGeneration",
            "PaliGemma (SigLIP tower, one image)",
            ("siglip",),
            _TOWER,
            "the last hidden state (after post_layernorm)",
            "prefix",
            "single",
            reply_token_type=1,
            example="google/paligemma-3b-mix-224",
        ),
        LVLMClass(
            "Idefics3ForConditionalGeneration",
            "Idefics3 (SigLIP tower, image splitting plus the global image)",
            ("siglip",),
            ("model.vision_model.", "vision_model."),
            "the last hidden state (after post_layernorm)",
            "chat",
            "split",
            example="HuggingFaceM4/Idefics3-8B-Llama3",
        ),
        LVLMClass(
            "SmolVLMForConditionalGeneration",
            "SmolVLM (SigLIP tower at 384/512 px, image splitting plus the global image)",
            ("siglip",),
            ("model.vision_model.", "vision_model."),
            "the last hidden state (after post_layernorm)",
            "chat",
            "split",
            example="HuggingFaceTB/SmolVLM-256M-Instruct",
        ),
        LVLMClass(
            "AyaVisionForConditionalGeneration",
            "Aya Vision (SigLIP 2 tower at fixed resolution, tiles plus a thumbnail)",
            ("siglip",),
            _TOWER,
            "config.vision_feature_layer (-1)",
            "chat",
            "crop",
            example="CohereLabs/aya-vision-8b",
        ),
        LVLMClass(
            "Gemma3ForConditionalGeneration",
            "Gemma 3 (SigLIP so400m tower at 896 px, one image without pan-and-scan)",
            ("siglip",),
            _TOWER,
            "the last hidden state (after post_layernorm)",
            "chat",
            "single",
            example="google/gemma-3-4b-it",
        ),
    )
}


def supported_classes() -> str:
    """One line listing the supported LVLM classes, for error messages."""
    return ", ".join(LVLM_CLASSES)


def lvlm_class(config: dict, where: str, flag: str = "--into") -> LVLMClass:
    """The registry entry of an LVLM from its `config.json` content; one-line `ValueError` listing the supported
    classes otherwise."""
    architectures = config.get("architectures") or []
    for arch in architectures:
        if arch in LVLM_CLASSES:
            return LVLM_CLASSES[arch]
    found = architectures[0] if architectures else f"model_type={config.get('model_type')!r}"
    raise ValueError(
        f"`{flag}` {where!r} is a {found}: this LVLM class is not supported. Supported classes: {supported_classes()}."
    )


def tower_family_of(model_type: str | None, what: str) -> ModelFamily:
    """The model family of a tower from a `model_type` (a full CLIP/SigLIP model, a vision-only one, or a SigLIP
    encoder kept under an LVLM's own class)."""
    if model_type in EXTRA_TOWER_TYPES:
        return EXTRA_TOWER_TYPES[model_type]
    for family in EXPORTABLE_FAMILIES:
        if model_type in family.model_types or model_type in family.vision_model_types:
            return family
    known = "; ".join(f"{f.title} ({', '.join([*f.model_types, *f.vision_model_types])})" for f in EXPORTABLE_FAMILIES)
    raise ValueError(
        f"{what} has model_type={model_type!r}: the exportable towers are {known}; "
        f"{', '.join(EXTRA_TOWER_TYPES)} (SigLIP)."
    )
