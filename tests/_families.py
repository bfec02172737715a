"""Tiny models of every family, built offline the way transformers users build them (config -> model, processor
from an image processor and a tokenizer), for the family tests.

Variants: `clip` (`CLIPModel` + `CLIPProcessor`), `siglip` (`SiglipModel` + `SiglipProcessor` with a word-level
tokenizer), `siglip-sentencepiece` (`SiglipModel` with SigLIP's own `SiglipTokenizer` on a sentencepiece model
trained here), `siglip2` (a fixed-resolution SigLIP 2 checkpoint: `SiglipModel` with `Siglip2Tokenizer`),
`siglip2-naflex` (`Siglip2Model` + `Siglip2Processor`).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from mmt_ard.embedded.tiny import DIGIT_NAMES, build_tiny_clip, build_tiny_siglip

VARIANTS = ("clip", "siglip", "siglip-sentencepiece", "siglip2", "siglip2-naflex")
FAMILY_OF_VARIANT = {
    "clip": "clip",
    "siglip": "siglip",
    "siglip-sentencepiece": "siglip",
    "siglip2": "siglip2",
    "siglip2-naflex": "siglip2",
}
IMAGE_SIZE = 16
PATCH = 4


def sentencepiece_siglip_tokenizer(folder: str, max_length: int = 16):
    """SigLIP's `SiglipTokenizer` on a small sentencepiece model trained in-process (no download)."""
    import sentencepiece as spm
    from transformers import SiglipTokenizer

    words = "this is a photo of the an image picture digit number handwritten".split() + DIGIT_NAMES
    lines = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4
    prefix = os.path.join(folder, "spiece")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=prefix,
        vocab_size=48,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return SiglipTokenizer(vocab_file=prefix + ".model", model_max_length=max_length)


def build(variant: str, folder: str | None = None, seed: int = 0, hidden: int = 32, image_size: int = IMAGE_SIZE):
    """`(model, processor)` of a tiny model of `variant` (see the module docstring)."""
    if variant == "clip":
        return build_tiny_clip(hidden=hidden, image_size=image_size, patch_size=PATCH, seed=seed)
    tokenizer = sentencepiece_siglip_tokenizer(folder) if variant == "siglip-sentencepiece" else None
    return build_tiny_siglip(
        hidden=hidden,
        image_size=image_size,
        patch_size=PATCH,
        seed=seed,
        words=DIGIT_NAMES,
        variant="siglip" if tokenizer is not None else variant,
        tokenizer=tokenizer,
    )


def processor_call_kwargs(variant: str) -> dict:
    """How a user calls the processor of `variant` for text and images (the model cards' recipes)."""
    if variant == "clip":
        return {"padding": True}
    kwargs = {"padding": "max_length"}
    if variant == "siglip2-naflex":  # Siglip2Processor's call defaults (patch 16, 256 patches) are the real model's
        kwargs.update(patch_size=PATCH, max_num_patches=(IMAGE_SIZE // PATCH) ** 2)
    return kwargs


def random_images(n: int, size: int = IMAGE_SIZE, seed: int = 0) -> tuple[list, torch.Tensor]:
    """`n` random RGB PIL images and the same pixels as a `(n, 3, size, size)` tensor in [0, 1]."""
    from PIL import Image

    arrays = np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    images = [Image.fromarray(a) for a in arrays]
    pixels = torch.tensor(arrays).permute(0, 3, 1, 2).float() / 255.0
    return images, pixels
