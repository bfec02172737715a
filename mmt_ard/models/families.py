"""Model families: what differs between CLIP, SigLIP and SigLIP 2 when they are used as zero-shot classifiers.

A `ModelFamily` says, for one kind of dual-encoder model:

* which transformers classes hold it (full image + text models, vision-only towers) and which `model_type`s its
  configs carry, so that a checkpoint can be loaded with the right class (`mmt_ard.models.loading`);
* how prompts are tokenized: CLIP pads to the longest prompt (its text tower pools the end-of-text token, so padding
  does not change the features); SigLIP and SigLIP 2 pad to `max_length` (their text towers pool the *last
  position*, so the padding length is part of the features: the released checkpoints were trained with 64 tokens);
  lower-casing happens in SigLIP's and SigLIP 2's own tokenizers and is kept for SigLIP 2 prompts here as well;
* how images enter the vision tower (`PixelLayout`): a square of the tower's size, normalised with the processor's
  mean and std (CLIP: OpenAI's statistics, SigLIP: 0.5/0.5); the NaFlex `Siglip2Model` takes patchified images with
  a patch mask and the patch grid's shape;
* the logits: CLIP `scale * cos`; SigLIP `scale * cos + bias` (trained with a sigmoid per image-text pair);
* which parameters are the vision tower's (the rest is frozen while the student trains).

`family_of(model, processor)` identifies the family of a model object (peft wrappers stripped) and refuses models of
families it does not know, listing those it does. `check_processor` refuses a processor of another family.
Adding a family is one `ModelFamily(...)` and `register_family` (see docs/models.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


class UnsupportedModelError(ValueError):
    """A model (or a processor) of a family this library does not know, or a model paired with another's processor."""


def base_model(model: nn.Module) -> nn.Module:
    """Strip peft wrappers: the transformers model under a `PeftModel` (or a bare peft tuner), adapters still injected.

    A `PeftModel` forwards unknown attributes (`get_image_features`, `text_model`, ...) to the wrapped model, so the
    wrapper is recognised by its `peft_config`, not by what it seems to have.
    """
    from torch import nn  # here, so that listing the families (a command's --help) does not import torch

    for _ in range(4):
        if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):  # PeftModel
            model = model.get_base_model()
        elif hasattr(model, "peft_config") and isinstance(getattr(model, "model", None), nn.Module):  # LoraModel
            model = model.model
        else:
            break
    return model


def vision_config_of(model: nn.Module):
    """The vision config of a full model (`config.vision_config`) or of a vision-only tower (its own config)."""
    config = model.config
    return getattr(config, "vision_config", None) or config


@dataclass(frozen=True)
class PixelLayout:
    """How a batch of normalised square images becomes the vision tower's input.

    Args:
        size: side of the square the images are resized to.
        mean: per-channel mean of the normalisation.
        std: per-channel std of the normalisation.
        patch_size: NaFlex towers only: side of a patch; the images are handed over patchified.
        max_num_patches: NaFlex towers only: patches per image after padding.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int | None = None
    max_num_patches: int | None = None

    def model_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """`(B, 3, S, S)` normalised images -> the keyword arguments of the tower's forward / `get_image_features`."""
        if self.patch_size is None:
            return {"pixel_values": x}
        import torch  # here, so that listing the families (a command's --help) does not import torch

        b, c, h, w = x.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        # (B, C, gh, p, gw, p) -> (B, gh, gw, p, p, C) -> (B, gh*gw, p*p*C): the NaFlex processor's patch order
        patches = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, p * p * c)
        pad = self.max_num_patches - gh * gw
        mask = torch.ones(b, self.max_num_patches, dtype=torch.int32, device=x.device)
        if pad > 0:
            patches = torch.cat([patches, patches.new_zeros(b, pad, p * p * c)], dim=1)
            mask[:, gh * gw :] = 0
        shapes = torch.tensor([[gh, gw]], dtype=torch.long, device=x.device).expand(b, 2)
        return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}


@dataclass(frozen=True)
class ModelFamily:
    """One family of dual-encoder models (see the module docstring).

    Args:
        name: short name (`clip`, `siglip`, `siglip2`), recorded in results and model cards.
        title: display name.
        model_classes: transformers class names of full (image + text) models, checked along the class hierarchy.
        vision_classes: class names of vision-only towers of the family (zero-shot only with given class embeddings).
        model_types: `config.model_type` of full models -> the transformers class that loads them.
        vision_model_types: `config.model_type` of vision-only towers -> their class.
        processor_markers: class-name prefixes of the family's processors, tokenizers and image processors.
        image_mean: normalisation mean when the processor gives none.
        image_std: normalisation std when the processor gives none.
        text_padding: `longest` or `max_length` (see the module docstring).
        lowercase: lower-case prompts before tokenizing.
        logit_bias: whether the logits carry the model's `logit_bias`.
        vision_prefixes: parameter-name prefixes of the vision side of a full model (the rest is the text side).
        compatible: names of other families whose processors this family's models accept.
        naflex_classes: class names whose vision tower takes patchified NaFlex inputs.
        encoder_layer_classes: class names of the towers' transformer layers (the units FSDP shards).
        class_token: whether the vision tower's first position belongs to a class token (CLIP) or every position is
            a grid cell (SigLIP's attention-pooled towers).
        description: one line for docs and error messages.
    """

    name: str
    title: str
    model_classes: tuple[str, ...]
    vision_classes: tuple[str, ...]
    model_types: dict[str, str]
    vision_model_types: dict[str, str]
    processor_markers: tuple[str, ...]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    text_padding: str = "longest"
    lowercase: bool = False
    logit_bias: bool = False
    vision_prefixes: tuple[str, ...] = ("vision_model.",)
    compatible: tuple[str, ...] = ()
    naflex_classes: tuple[str, ...] = ()
    encoder_layer_classes: tuple[str, ...] = ()
    class_token: bool = True
    description: str = ""

    # ---- identification ----
    def holds(self, model: nn.Module) -> str | None:
        """`"full"` or `"vision"` when `model` (peft stripped) is one of this family's classes, else `None`."""
        names = {cls.__name__ for cls in type(model).__mro__}
        if names & set(self.model_classes):
            return "full"
        if names & set(self.vision_classes):
            return "vision"
        return None

    def is_naflex(self, model: nn.Module) -> bool:
        """Whether the model's vision tower takes patchified NaFlex inputs (SigLIP 2's `Siglip2Model`)."""
        names = {cls.__name__ for cls in type(model).__mro__}
        return bool(names & set(self.naflex_classes))

    # ---- text ----
    def text_length(self, tokenizer, model: nn.Module) -> int:
        """Padded prompt length for `max_length` padding: the tokenizer's, at most the text tower's positions."""
        positions = int(getattr(model.config.text_config, "max_position_embeddings", 64))
        length = getattr(tokenizer, "model_max_length", None)
        if not isinstance(length, int) or length <= 0 or length > positions:
            return positions
        return length

    def tokenize(self, tokenizer, texts: list[str], model: nn.Module) -> dict[str, torch.Tensor]:
        """Token ids (and attention mask, where the tokenizer makes one) of `texts`, as the family's processor does.

        Args:
            tokenizer: the model's tokenizer.
            texts: `T` prompts.
            model: the full model (its text config bounds the length and the vocabulary).

        Returns:
            `input_ids` `(T, L)` (and `attention_mask` `(T, L)`).
        """
        if self.lowercase:
            texts = [t.lower() for t in texts]
        if self.text_padding == "max_length":
            length = self.text_length(tokenizer, model)
            tokens = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        else:
            tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        tokens = {k: tokens[k] for k in ("input_ids", "attention_mask") if k in tokens}
        vocab = getattr(model.config.text_config, "vocab_size", None)
        top = int(tokens["input_ids"].max())
        if vocab is not None and top >= vocab:
            raise UnsupportedModelError(
                f"The tokenizer ({type(tokenizer).__name__}) gives token id {top} but the text tower of "
                f"{describe_model(model)} has {vocab} embeddings: the tokenizer belongs to another model. Pass the "
                "processor saved with the model (`load_clip(path)` loads both)."
            )
        return tokens

    # ---- image ----
    def pixel_layout(self, model: nn.Module, processor, image_size: int | None = None) -> PixelLayout:
        """The square size, normalisation and (NaFlex) patching of `model`'s vision tower.

        Args:
            model: the model (peft stripped).
            processor: its processor (gives the image mean/std; NaFlex: `max_num_patches`), or `None`.
            image_size: override of the square side (default: the tower's own).
        """
        image_processor = getattr(processor, "image_processor", None)
        mean = tuple(float(m) for m in (getattr(image_processor, "image_mean", None) or self.image_mean))
        std = tuple(float(s) for s in (getattr(image_processor, "image_std", None) or self.image_std))
        vision = vision_config_of(model)
        if not self.is_naflex(model):
            return PixelLayout(size=int(image_size or vision.image_size), mean=mean, std=std)
        patch = int(vision.patch_size)
        max_patches = int(getattr(image_processor, "max_num_patches", None) or vision.num_patches)
        side = image_size or math.isqrt(max_patches) * patch
        if side % patch or (side // patch) ** 2 > max_patches:
            raise ValueError(
                f"`image_size`={side} does not fit the NaFlex tower of {describe_model(model)}: use a multiple of its "
                f"patch size {patch} with at most {max_patches} patches ({math.isqrt(max_patches) * patch} px)."
            )
        return PixelLayout(size=int(side), mean=mean, std=std, patch_size=patch, max_num_patches=max_patches)

    def image_features(self, model: nn.Module, inputs: dict[str, torch.Tensor], kind: str) -> torch.Tensor:
        """`(B, D)` image embeddings (before L2 normalisation), in the model's dtype.

        Args:
            model: the model to call (a peft wrapper is called as it is, so adapters run).
            inputs: `PixelLayout.model_inputs`.
            kind: `full` or `vision` (a vision-only tower).
        """
        if kind == "full":
            out = model.get_image_features(**inputs)
            return out.pooler_output if hasattr(out, "pooler_output") else out
        out = model(**inputs)
        embeds = getattr(out, "image_embeds", None)  # CLIPVisionModelWithProjection
        return embeds if embeds is not None else out.pooler_output

    def embed_dim(self, model: nn.Module) -> int:
        """Size of the image embeddings the logits are computed from: the visual projection's output where the
        model has one (CLIP), else the vision tower's pooled width (SigLIP)."""
        projection = getattr(model, "visual_projection", None)
        if projection is not None:
            return int(projection.out_features)
        return int(vision_config_of(model).hidden_size)

    # ---- logits ----
    def logit_scale_and_bias(self, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | float]:
        """The model's own `logit_scale.exp()` and (SigLIP) `logit_bias`, fp32."""
        scale = model.logit_scale.exp().float().reshape(())
        if not self.logit_bias:
            return scale, 0.0
        return scale, model.logit_bias.float().reshape(())

    # ---- parameters ----
    def is_vision_parameter(self, name: str) -> bool:
        """Whether a parameter of a full model (name as in `named_parameters()`) belongs to the vision side."""
        return name.startswith(self.vision_prefixes)


def describe_model(model: nn.Module) -> str:
    """`SiglipModel ('google/siglip-base-patch16-224')`: the class and, where known, where it was loaded from."""
    source = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return f"{type(model).__name__}" + (f" ({source!r})" if source else "")


def describe_processor(processor) -> str:
    """`CLIPProcessor (tokenizer CLIPTokenizer, image processor CLIPImageProcessor)`."""
    parts = []
    for attr, label in (("tokenizer", "tokenizer"), ("image_processor", "image processor")):
        sub = getattr(processor, attr, None)
        if sub is not None:
            parts.append(f"{label} {type(sub).__name__}")
    return type(processor).__name__ + (f" ({', '.join(parts)})" if parts else "")


CLIP = ModelFamily(
    name="clip",
    title="CLIP",
    model_classes=("CLIPModel",),
    vision_classes=("CLIPVisionModelWithProjection", "CLIPVisionModel"),
    model_types={"clip": "CLIPModel"},
    vision_model_types={"clip_vision_model": "CLIPVisionModel"},
    processor_markers=("CLIP",),
    image_mean=OPENAI_CLIP_MEAN,
    image_std=OPENAI_CLIP_STD,
    vision_prefixes=("vision_model.", "visual_projection."),
    encoder_layer_classes=("CLIPEncoderLayer",),
    description="OpenAI CLIP and its fine-tunes (FARE, TeCoA, ...), open_clip ViT checkpoints converted on load",
)
SIGLIP = ModelFamily(
    name="siglip",
    title="SigLIP",
    model_classes=("SiglipModel",),
    vision_classes=("SiglipVisionModel",),
    model_types={"siglip": "SiglipModel"},
    vision_model_types={"siglip_vision_model": "SiglipVisionModel"},
    processor_markers=("Siglip",),
    image_mean=SIGLIP_MEAN,
    image_std=SIGLIP_STD,
    text_padding="max_length",
    logit_bias=True,
    compatible=("siglip2",),
    encoder_layer_classes=("SiglipEncoderLayer",),
    class_token=False,
    description="Google's SigLIP (sigmoid loss), the tower of PaliGemma and LLaVA-OneVision",
)
SIGLIP2 = ModelFamily(
    name="siglip2",
    title="SigLIP 2",
    model_classes=("Siglip2Model",),
    vision_classes=("Siglip2VisionModel",),
    model_types={"siglip2": "Siglip2Model"},
    vision_model_types={"siglip2_vision_model": "Siglip2VisionModel"},
    processor_markers=("Siglip2", "Gemma"),
    image_mean=SIGLIP_MEAN,
    image_std=SIGLIP_STD,
    text_padding="max_length",
    lowercase=True,
    logit_bias=True,
    compatible=("siglip",),
    naflex_classes=("Siglip2Model", "Siglip2VisionModel"),
    encoder_layer_classes=("SiglipEncoderLayer", "Siglip2EncoderLayer"),
    class_token=False,
    description=(
        "SigLIP 2: fixed-resolution checkpoints (a `SiglipModel` with SigLIP 2's Gemma tokenizer) and NaFlex "
        "`Siglip2Model`s (square images, patchified)"
    ),
)

FAMILIES: dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family to the registry (identification, loading, docs); a family of the same name is replaced."""
    FAMILIES[family.name] = family
    return family


for _family in (CLIP, SIGLIP, SIGLIP2):
    register_family(_family)


def supported() -> str:
    """One line listing the supported families and their classes, for error messages."""
    return "; ".join(f"{f.title} ({', '.join(f.model_classes + f.vision_classes)})" for f in FAMILIES.values())


def processor_family(processor) -> ModelFamily | None:
    """The family a processor (or bare tokenizer / image processor) belongs to by its classes, `None` if generic.

    The tokenizer decides where there is one (it decides the text features): a `SiglipProcessor` holding a Gemma
    tokenizer is a SigLIP 2 processor. A generic tokenizer (e.g. `PreTrainedTokenizerFast`) belongs to no family.
    """
    for part in (getattr(processor, "tokenizer", None), processor, getattr(processor, "image_processor", None)):
        if part is None:
            continue
        name = type(part).__name__
        # longest marker first: `Siglip2...` before `Siglip...`
        matches = [(len(m), f) for f in FAMILIES.values() for m in f.processor_markers if name.startswith(m)]
        if matches:
            return max(matches, key=lambda t: t[0])[1]
    return None


def family_of(model: nn.Module, processor=None) -> tuple[ModelFamily, str]:
    """The family of `model` and whether it is a `full` model or a `vision`-only tower.

    A `SiglipModel` whose tokenizer is SigLIP 2's (Gemma) is a fixed-resolution SigLIP 2 checkpoint.

    Raises:
        UnsupportedModelError: the model is of no known family (the message lists the supported ones).
    """
    base = base_model(model)
    for family in FAMILIES.values():
        kind = family.holds(base)
        if kind is not None:
            if family.name == "siglip" and processor is not None:
                by_processor = processor_family(processor)
                if by_processor is not None and by_processor.name == "siglip2":
                    return by_processor, kind
            return family, kind
    raise UnsupportedModelError(
        f"{describe_model(base)} is of no model family this library knows, so it is not run as a zero-shot "
        f"classifier. Supported: {supported()}. A new family is one `ModelFamily` entry (docs/models.md)."
    )


def check_processor(family: ModelFamily, model: nn.Module, processor) -> None:
    """Refuse a processor of another family than the model's (its tokenizer and statistics would be wrong).

    Raises:
        UnsupportedModelError: naming the model, the processor and the fix.
    """
    other = processor_family(processor)
    if other is None or other.name == family.name or other.name in family.compatible:
        return
    raise UnsupportedModelError(
        f"The model {describe_model(base_model(model))} is {family.title} but the processor "
        f"{describe_processor(processor)} is {other.title}'s: its tokenizer and image statistics do not fit the "
        "model. "
        "Pass the processor saved with the model (`mmt_ard.load_clip(path)` loads both, or "
        "`AutoProcessor.from_pretrained(path)`)."
    )


def family_for_config(config, where: str) -> tuple[ModelFamily, str, str]:
    """`(family, kind, transformers class name)` of a checkpoint from its config's `model_type`.

    Raises:
        UnsupportedModelError: a model type of no known family.
    """
    model_type = getattr(config, "model_type", None)
    architectures = ", ".join(getattr(config, "architectures", None) or []) or "no architectures"
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family, "full", family.model_types[model_type]
        if model_type in family.vision_model_types:
            return family, "vision", family.vision_model_types[model_type]
    raise UnsupportedModelError(
        f"`{where}` holds a `{model_type}` model ({architectures}): "
        f"no model family this library knows. Supported: {supported()}."
    )
