"""Zero-shot CLIP wrapper: pixels in [0,1] in, zero-shot logits and image embeddings out.

Every model in MMT-ARD (the student and each teacher) is seen through `ZeroShotCLIP`. It owns three things:

* the pixel pipeline: resize to the model's own input size and mean/std normalisation happen inside `forward`,
  differentiably, so attack budgets are always in [0,1] pixel units and teachers may use other sizes/statistics;
* the text head `W in R^(C, D)`: L2-normalised mean over prompt templates of the model's own text embeddings of the
  class names, built once per (class names, templates) and cached;
* zero-shot logits `z = s * normalize(f(x)) @ W^T` with a fixed scale `s` (default 100) or the model's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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

    The attacks (`attacks.pgd`, `apgd`) accept models returning either, so a `ZeroShotCLIP` and a bare classifier
    `nn.Module` can be attacked the same way.
    """
    logits = getattr(output, "logits", output)
    if not torch.is_tensor(logits):
        raise TypeError(
            f"The attacked model returned a {type(output).__name__}: it must return `(B, C)` logits or an object "
            "with a `.logits` tensor (e.g. a `ZeroShotCLIP`)."
        )
    return logits


def _image_settings(clip: nn.Module, processor) -> tuple[int, tuple, tuple]:
    """Input size, mean and std of a CLIP model, from its processor when there is one."""
    size = clip.config.vision_config.image_size
    mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        mean = tuple(image_processor.image_mean or mean)
        std = tuple(image_processor.image_std or std)
    return int(size), tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _tokenizer_of(processor):
    tokenizer = getattr(processor, "tokenizer", None)
    return tokenizer if tokenizer is not None else processor


class ZeroShotCLIP(nn.Module):
    """A CLIP model used as a zero-shot classifier on pixels in [0,1].

    Args:
        clip: a transformers `CLIPModel` (or a peft model wrapping one).
        processor: its `CLIPProcessor` (or a bare tokenizer); gives the tokenizer and the image mean/std.
        logit_scale: the fixed scale `s` of the logits; `None` uses the model's own `logit_scale.exp()`.
        image_size: input size the images are resized to; defaults to the vision config's `image_size`.
    """

    def __init__(self, clip: nn.Module, processor, logit_scale: float | None = 100.0, image_size: int | None = None):
        super().__init__()
        base = _base_clip(clip)
        if not hasattr(base, "get_text_features") or getattr(base, "text_model", None) is None:
            raise ValueError(
                f"`model` of type {type(base).__name__} has no text tower: MMT-ARD needs a full CLIP-like model "
                "(image and text towers) so that zero-shot text heads can be built. Pass a `CLIPModel`."
            )
        if processor is None:
            raise ValueError("`processor` is None: pass the model's `CLIPProcessor` (or its tokenizer).")
        self.clip = clip
        self.processor = processor
        size, mean, std = _image_settings(base, processor)
        self.image_size = int(image_size or size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("text_head", torch.zeros(0), persistent=False)
        self.fixed_logit_scale = logit_scale
        self._head_key: tuple | None = None
        self._head_cache: dict[tuple, torch.Tensor] = {}

    @property
    def base(self) -> nn.Module:
        """The plain `CLIPModel` under any peft wrapper."""
        return _base_clip(self.clip)

    @property
    def embed_dim(self) -> int:
        return int(self.base.config.projection_dim)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.clip.parameters()).dtype

    # ---- text head ----
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
        key = (tuple(class_names), tuple(templates))
        if key not in self._head_cache:
            self._head_cache[key] = build_text_head(self.base, _tokenizer_of(self.processor), class_names, templates)
        head = self._head_cache[key]
        self.text_head = head.to(self.mean.device)
        self._head_key = key
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
        out = self.clip.get_image_features(pixel_values=self.preprocess(pixels))
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return feats.float()

    def logit_scale(self) -> torch.Tensor | float:
        if self.fixed_logit_scale is not None:
            return float(self.fixed_logit_scale)
        return self.base.logit_scale.exp().float()

    def logits_from_embeds(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """`(B, D)` embeddings -> `(B, C)` zero-shot logits."""
        if self.text_head.numel() == 0:
            raise RuntimeError("No text head: call `set_classes(class_names, templates)` before the forward pass.")
        return self.logit_scale() * F.normalize(image_embeds, dim=-1) @ self.text_head.t()

    def forward(self, pixel_values: torch.Tensor, **unused) -> ZeroShotOutput:
        embeds = self.encode_image(pixel_values)  # (B, D)
        return ZeroShotOutput(logits=self.logits_from_embeds(embeds), image_embeds=embeds)

    def confidence(self, image_embeds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Raw cosine similarity of each image to its ground-truth class text embedding, `(B,)`."""
        return (F.normalize(image_embeds, dim=-1) * self.text_head[labels]).sum(-1)


def _base_clip(model: nn.Module) -> nn.Module:
    """Strip peft wrappers: the `CLIPModel` under a `PeftModel` (or a bare peft tuner), adapters still injected.

    A `PeftModel` forwards unknown attributes (`get_image_features`, `text_model`, ...) to the wrapped model, so the
    wrapper is recognised by its `peft_config`, not by what it seems to have.
    """
    for _ in range(4):
        if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):  # PeftModel
            model = model.get_base_model()
        elif hasattr(model, "peft_config") and isinstance(getattr(model, "model", None), nn.Module):  # LoraModel
            model = model.model
        else:
            break
    return model


def build_text_head(clip: nn.Module, tokenizer, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """Zero-shot classifier weights from class names and prompt templates, without gradient.

    See `compute_text_head` for the arguments; this is the cached, frozen-text-tower path.
    """
    with torch.no_grad():
        return compute_text_head(clip, tokenizer, class_names, templates)


def compute_text_head(clip: nn.Module, tokenizer, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """Zero-shot classifier weights from class names and prompt templates (differentiable when grad is on).

    Args:
        clip: a `CLIPModel` (its text tower and text projection are used).
        tokenizer: the model's own tokenizer.
        class_names: `C` class names.
        templates: `T` templates with one `{}` each.

    Returns:
        `(C, D)` fp32: per class, the L2-normalised mean over templates of L2-normalised text embeddings.
    """
    device = next(clip.parameters()).device
    flags = {m: m.training for m in clip.modules()}
    clip.eval()
    heads = []
    for name in class_names:
        texts = [t.format(name.replace("_", " ")) for t in templates]
        tokens = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        tokens = {k: v.to(device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        out = clip.get_text_features(**tokens)
        emb = (out.pooler_output if hasattr(out, "pooler_output") else out).float()  # (T, D)
        heads.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1))
    for module, flag in flags.items():
        module.training = flag
    return torch.stack(heads)  # (C, D)


def load_clip(name_or_path: str, processor_name_or_path=None, dtype: torch.dtype | None = None):
    """Load a `CLIPModel` and its processor: a transformers model, or an open_clip / OpenAI-CLIP checkpoint.

    Args:
        name_or_path: Hub id (e.g. `openai/clip-vit-base-patch32`) or local path of a transformers CLIP; or an
            open_clip checkpoint, converted without open_clip (`mmt_ard.convert.load_open_clip`): `hf-hub:org/name`,
            a Hub repository or local folder holding `open_clip_config.json`, a weights file (`.pt`, `.bin`,
            `.safetensors`, ...), optionally `ViT-B-32@path` to name the architecture of a file without config.
        processor_name_or_path: where the processor lives when the model repository has none
            (e.g. `LEAF-CLIP/CLIP-ViT-L-FARE2` takes `openai/clip-vit-large-patch14`'s), or a processor object, returned
            as given. For an open_clip checkpoint: where its tokenizer comes from (default: OpenAI's CLIP tokenizer),
            and for a vision-only file the CLIP it was fine-tuned from, whose text tower completes it.
        dtype: optional dtype to load the weights in.
    """
    from transformers import CLIPModel, CLIPProcessor

    from .convert import hub_repo_has_open_clip_config, is_open_clip_source, load_open_clip

    if is_open_clip_source(name_or_path):
        return load_open_clip(name_or_path, processor_name_or_path, dtype=dtype)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        model = CLIPModel.from_pretrained(name_or_path, **kwargs)
    except OSError as err:
        if not os.path.exists(name_or_path) and hub_repo_has_open_clip_config(name_or_path):
            return load_open_clip(f"hf-hub:{name_or_path}", processor_name_or_path, dtype=dtype)
        raise OSError(
            f"Could not load a CLIPModel from `{name_or_path}`: give a Hub id reachable from this machine, a local "
            "directory holding config.json and model.safetensors, or an open_clip checkpoint (`hf-hub:org/name`, a "
            f"folder with open_clip_config.json, a weights file). ({err})"
        ) from err
    if processor_name_or_path is not None and not isinstance(processor_name_or_path, str):
        return model, processor_name_or_path
    try:
        processor = CLIPProcessor.from_pretrained(processor_name_or_path or name_or_path)
    except OSError as err:
        raise OSError(
            f"Could not load a processor from `{processor_name_or_path or name_or_path}`: this model repository has no "
            "tokenizer/image-processor files; pass `processor=` (a Teacher field) or `--*_processor` naming the "
            f"repository the model was fine-tuned from. ({err})"
        ) from err
    return model, processor
