"""Zero-shot wrapper: pixels in [0,1] in, zero-shot logits and image embeddings out, for every model family.

Every model in MMT-ARD (the student and each teacher, CLIP, SigLIP or SigLIP 2) is seen through `ZeroShotCLIP`. It
owns three things, and asks the model's family (`families.py`) how each is done for that kind of model:

* the pixel pipeline: resize to the model's own input size and mean/std normalisation happen inside `forward`,
  differentiably, so attack budgets are always in [0,1] pixel units and teachers may use other sizes/statistics;
* the text head `W in R^(C, D)`: L2-normalised mean over prompt templates of the model's own text embeddings of the
  class names (tokenized as the family's processor does), built once per (class names, templates) and cached;
* zero-shot logits `z = s * normalize(f(x)) @ W^T` with a fixed scale `s` (default 100), or the model's own scale
  (and, for SigLIP, its bias: `z = exp(t) * cos + b`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .families import UnsupportedModelError, base_model, check_processor, describe_model, family_of


@dataclass
class ZeroShotOutput:
    """What a `ZeroShotCLIP` forward returns.

    Args:
        logits: `(B, C)` zero-shot logits (fp32).
        image_embeds: `(B, D)` image embeddings before L2 normalisation (fp32).
    """

    logits: torch.Tensor
    image_embeds: torch.Tensor


def logits_of(output) -> torch.Tensor:
    """`(B, C)` logits of a model output: a `ZeroShotOutput`-like object's `.logits`, or the tensor itself.

    The attacks (`attacks.projected_gradient`, `apgd`) accept models returning either, so a `ZeroShotCLIP` and a bare classifier
    `nn.Module` can be attacked the same way.
    """
    logits = getattr(output, "logits", output)
    if not torch.is_tensor(logits):
        raise TypeError(
            f"The attacked model returned a {type(output).__name__}: it must return `(B, C)` logits or an object "
            "with a `.logits` tensor (e.g. a `ZeroShotCLIP`)."
        )
    return logits


def _tokenizer_of(processor):
    tokenizer = getattr(processor, "tokenizer", None)
    return tokenizer if tokenizer is not None else processor


class ZeroShotCLIP(nn.Module):
    """A CLIP-like model (CLIP, SigLIP, SigLIP 2) used as a zero-shot classifier on pixels in [0,1].

    Args:
        clip: a transformers `CLIPModel`, `SiglipModel` or `Siglip2Model` (or a peft model wrapping one); or a
            vision-only tower of these families (`CLIPVisionModelWithProjection`, `SiglipVisionModel`,
            `Siglip2VisionModel`), which classifies only with class embeddings given by `set_class_embeddings`.
        processor: its processor (or a bare tokenizer); gives the tokenizer and the image mean/std. A processor of
            another family than the model's is refused.
        logit_scale: the fixed scale `s` of the logits; `None` uses the model's own scale (and SigLIP's bias).
        image_size: input size the images are resized to; defaults to the vision tower's own.

    Raises:
        UnsupportedModelError: a model of no known family, or a processor of another family.
    """

    def __init__(self, clip: nn.Module, processor, logit_scale: float | None = 100.0, image_size: int | None = None):
        super().__init__()
        base = base_model(clip)
        if processor is None:
            raise ValueError(
                f"`processor` is None for {describe_model(base)}: pass the model's processor (or its tokenizer); "
                "`mmt_ard.load_clip(path)` returns both."
            )
        self.family, self.kind = family_of(base, processor)
        check_processor(self.family, base, processor)
        if self.kind == "vision" and logit_scale is None:
            raise ValueError(
                f"{describe_model(base)} is a vision-only tower: it has no logit scale of its own. Give a fixed "
                "`logit_scale` (e.g. 100), or use the full model."
            )
        self.clip = clip
        self.processor = processor
        self.layout = self.family.pixel_layout(base, processor, image_size)
        self.image_size = self.layout.size
        self.register_buffer("mean", torch.tensor(self.layout.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.layout.std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("text_head", torch.zeros(0), persistent=False)
        self.fixed_logit_scale = logit_scale
        self._head_key: tuple | None = None
        self._head_cache: dict[tuple, torch.Tensor] = {}

    @property
    def base(self) -> nn.Module:
        """The plain transformers model under any peft wrapper."""
        return base_model(self.clip)

    @property
    def embed_dim(self) -> int:
        return self.family.embed_dim(self.base)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.clip.parameters()).dtype

    @property
    def logit_mode(self) -> str:
        """How the logits are scaled: `fixed 100` or `model scale` / `model scale + bias` (SigLIP)."""
        if self.fixed_logit_scale is not None:
            return f"fixed {self.fixed_logit_scale:g}"
        return "model scale + bias" if self.family.logit_bias else "model scale"

    # ---- text head ----
    def _require_text_tower(self) -> None:
        if self.kind == "vision":
            raise UnsupportedModelError(
                f"{describe_model(self.base)} is a vision-only tower (no text tower): it cannot embed class names. "
                f"Load the full {self.family.title} model it belongs to, or give the class embeddings of that model "
                "with `set_class_embeddings((C, D) tensor)`."
            )

    @torch.no_grad()
    def set_classes(self, class_names: list[str], templates: list[str]) -> torch.Tensor:
        """Build (or reuse) the text head for these classes and templates; returns it, `(C, D)` fp32."""
        if not class_names:
            raise ValueError("`class_names` is empty: pass the list of class names (or a dataset with a ClassLabel).")
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(
                f"`prompt_templates`={templates!r}: each template needs one '{{}}' where the class name goes, "
                "e.g. 'This is a photo of a {}'."
            )
        self._require_text_tower()
        key = (tuple(class_names), tuple(templates))
        if key not in self._head_cache:
            self._head_cache[key] = build_text_head(self.base, _tokenizer_of(self.processor), class_names, templates)
        head = self._head_cache[key]
        self.text_head = head.to(self.mean.device)
        self._head_key = key
        return self.text_head

    @torch.no_grad()
    def set_class_embeddings(self, class_embeddings: torch.Tensor) -> torch.Tensor:
        """Use given class embeddings `(C, D)` as the text head (L2-normalised here); returns the head, fp32.

        For vision-only towers, or for heads computed elsewhere (e.g. by the full model a tower came from).
        """
        if not torch.is_tensor(class_embeddings) or class_embeddings.dim() != 2:
            got = getattr(class_embeddings, "shape", class_embeddings)
            raise ValueError(f"`class_embeddings` must be a (C, D) tensor, got {got!r}.")
        if class_embeddings.shape[1] != self.embed_dim:
            raise ValueError(
                f"`class_embeddings` has D={class_embeddings.shape[1]} but {describe_model(self.base)} embeds images "
                f"in {self.embed_dim} dimensions: compute them with the model this tower belongs to."
            )
        self.text_head = F.normalize(class_embeddings.detach().float(), dim=-1).to(self.mean.device)
        self._head_key = None
        return self.text_head

    def refresh_text_head(self, grad: bool) -> torch.Tensor:
        """Recompute the text head from the current text tower (used only when the text tower trains).

        Args:
            grad: build it with gradient (the training forward) or detached (evaluation).
        """
        if self._head_key is None:
            raise RuntimeError("No classes set: call `set_classes(class_names, templates)` first.")
        names, templates = (list(part) for part in self._head_key)
        with torch.set_grad_enabled(grad):
            self.text_head = compute_text_head(self.base, _tokenizer_of(self.processor), names, templates)
        return self.text_head

    @property
    def num_classes(self) -> int:
        return int(self.text_head.shape[0])

    # ---- image side ----
    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` in [0,1] -> resized, normalised `(B, 3, S, S)` in the model's dtype (differentiable)."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(
                f"`pixel_values` has shape {tuple(pixels.shape)}: expected (B, 3, H, W) RGB images in [0, 1]."
            )
        if pixels.shape[-2:] != (self.image_size, self.image_size):
            pixels = F.interpolate(
                pixels, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        x = (pixels - self.mean.to(pixels.dtype)) / self.std.to(pixels.dtype)
        return x.to(self.dtype)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """`(B, 3, H, W)` in [0,1] -> unnormalised image embeddings `(B, D)` in fp32."""
        inputs = self.layout.model_inputs(self.preprocess(pixels))
        return self.family.image_features(self.clip, inputs, self.kind).float()

    def logit_scale(self) -> torch.Tensor | float:
        if self.fixed_logit_scale is not None:
            return float(self.fixed_logit_scale)
        return self.family.logit_scale_and_bias(self.base)[0]

    def logits_from_embeds(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """`(B, D)` embeddings -> `(B, C)` zero-shot logits."""
        if self.text_head.numel() == 0:
            raise RuntimeError("No text head: call `set_classes(class_names, templates)` before the forward pass.")
        cos = F.normalize(image_embeds, dim=-1) @ self.text_head.t()  # (B, C)
        if self.fixed_logit_scale is not None:
            return float(self.fixed_logit_scale) * cos
        scale, bias = self.family.logit_scale_and_bias(self.base)
        return scale * cos + bias

    def forward(self, pixel_values: torch.Tensor, **unused) -> ZeroShotOutput:
        embeds = self.encode_image(pixel_values)  # (B, D)
        return ZeroShotOutput(logits=self.logits_from_embeds(embeds), image_embeds=embeds)

    def confidence(self, image_embeds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Raw cosine similarity of each image to its ground-truth class text embedding, `(B,)`."""
        return (F.normalize(image_embeds, dim=-1) * self.text_head[labels]).sum(-1)


def build_text_head(clip: nn.Module, tokenizer, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """Zero-shot classifier weights from class names and prompt templates, without gradient.

    See `compute_text_head` for the arguments; this is the cached, frozen-text-tower path.
    """
    with torch.no_grad():
        return compute_text_head(clip, tokenizer, class_names, templates)


def compute_text_head(clip: nn.Module, tokenizer, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """Zero-shot classifier weights from class names and prompt templates (differentiable when grad is on).

    Args:
        clip: a full model of a known family (`CLIPModel`, `SiglipModel`, `Siglip2Model`); its text tower (and
            projection) are used, with the family's tokenization (`ModelFamily.tokenize`).
        tokenizer: the model's own tokenizer.
        class_names: `C` class names (`_` read as a space).
        templates: `T` templates with one `{}` each.

    Returns:
        `(C, D)` fp32: per class, the L2-normalised mean over templates of L2-normalised text embeddings.
    """
    family, _ = family_of(clip, tokenizer)
    device = next(clip.parameters()).device
    flags = {m: m.training for m in clip.modules()}
    clip.eval()
    heads = []
    for name in class_names:
        texts = [t.format(name.replace("_", " ")) for t in templates]
        tokens = {k: v.to(device) for k, v in family.tokenize(tokenizer, texts, clip).items()}
        out = clip.get_text_features(**tokens)
        emb = (out.pooler_output if hasattr(out, "pooler_output") else out).float()  # (T, D)
        heads.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1))
    for module, flag in flags.items():
        module.training = flag
    return torch.stack(heads)  # (C, D)
