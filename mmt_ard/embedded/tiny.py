"""Tiny, seeded CLIP and SigLIP models and real offline data, built in-process.

Used by the embedded default of `examples/run_mmt_ard.py`, the test suite and the CPU benchmarks: nothing here touches
the network. The tokenizer is a word-level vocabulary built with the `tokenizers` library; the data is scikit-learn's
bundled `load_digits` (1797 real 8x8 handwritten digits).
"""

from __future__ import annotations

import numpy as np
import torch

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_BASE_WORDS = ["this", "is", "a", "photo", "of", "the", "an", "image", "picture", "digit", "number", "handwritten"]


def build_tokenizer(words: list[str] | None = None, max_length: int = 16):
    """A word-level `PreTrainedTokenizerFast` with bos/eos/pad ids inside its small vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab_words = sorted(set(_BASE_WORDS + DIGIT_NAMES + [w.lower() for w in (words or [])]))
    vocab = {tok: i for i, tok in enumerate(specials + vocab_words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.normalizer = normalizers.Lowercase()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="[BOS]",
        eos_token="[EOS]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_max_length=max_length,
        do_lower_case=True,
    )


def tiny_text_config(tokenizer, hidden: int, layers: int, heads: int) -> dict:
    """Text-tower config keywords of a tiny model: `tokenizer`'s vocabulary, length and bos/eos/pad ids (inside the
    vocabulary), MLP width twice the width."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_vision_config(hidden: int, layers: int, heads: int, **extra) -> dict:
    """Vision-tower config keywords of a tiny ViT (MLP width twice the width), plus `extra` (image and patch size)."""
    return dict(
        hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers, num_attention_heads=heads, **extra
    )


def build_tiny_clip(
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    image_size: int = 16,
    patch_size: int = 4,
    projection_dim: int | None = None,
    seed: int = 0,
    words: list[str] | None = None,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
):
    """A seeded tiny `CLIPModel` and a matching `CLIPProcessor`.

    Args:
        hidden: width of both towers.
        layers: depth of both towers.
        heads: attention heads.
        image_size: the vision tower's input size.
        patch_size: ViT patch size.
        projection_dim: joint embedding dimension (defaults to `hidden`).
        seed: initialisation seed (the global RNG is left as it was).
        words: extra vocabulary (class names).
        image_mean: per-channel mean of the processor.
        image_std: per-channel std of the processor.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    try:  # the PIL backend needs no torchvision
        from transformers import CLIPImageProcessorPil as CLIPImageProcessor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import CLIPImageProcessor

    tokenizer = build_tokenizer(words)
    text_cfg = tiny_text_config(tokenizer, hidden, layers, heads)
    vision_cfg = tiny_vision_config(hidden, layers, heads, image_size=image_size, patch_size=patch_size)
    config = CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=projection_dim or hidden)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    model.eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=list(image_mean),
        image_std=list(image_std),
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor


SIGLIP_VARIANTS = ("siglip", "siglip2", "siglip2-naflex")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,'-"


def build_siglip2_tokenizer(max_length: int = 64):
    """SigLIP 2's own tokenizer class (`Siglip2Tokenizer`: Gemma-style BPE, lower-casing) on a character vocabulary."""
    from transformers import Siglip2Tokenizer

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    vocab = {tok: i for i, tok in enumerate(specials + ["\u2581"] + list(_CHARS))}
    return Siglip2Tokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_tiny_siglip(
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    image_size: int = 16,
    patch_size: int = 4,
    seed: int = 0,
    words: list[str] | None = None,
    variant: str = "siglip",
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    tokenizer=None,
):
    """A seeded tiny SigLIP-family model and its processor, built as transformers users build them.

    Args:
        hidden: width of both towers (SigLIP's image and text embeddings are the towers' pooled outputs).
        layers: depth of both towers.
        heads: attention heads.
        image_size: the vision tower's input size (NaFlex: the square whose patches fill `max_num_patches`).
        patch_size: ViT patch size.
        seed: initialisation seed (the global RNG is left as it was).
        words: extra vocabulary (class names) of the word-level tokenizer (`siglip`).
        variant: `siglip` (`SiglipModel`, word-level tokenizer padded to 16), `siglip2` (a fixed-resolution SigLIP 2
            checkpoint: `SiglipModel` with `Siglip2Tokenizer`, 64 tokens), `siglip2-naflex` (`Siglip2Model`,
            `Siglip2Processor`).
        image_mean: per-channel mean of the processor.
        image_std: per-channel std of the processor.
        tokenizer: a tokenizer to use instead of the variant's (e.g. SigLIP's own `SiglipTokenizer`).

    The logit scale and bias start where SigLIP's training starts (`log 10`, `-10`), not at zero.
    """
    import math

    import transformers

    if variant not in SIGLIP_VARIANTS:
        raise ValueError(f"`variant`={variant!r}: use one of {list(SIGLIP_VARIANTS)}.")
    if tokenizer is None:
        tokenizer = build_tokenizer(words) if variant == "siglip" else build_siglip2_tokenizer()
    text_cfg = tiny_text_config(tokenizer, hidden, layers, heads)
    vision_cfg = tiny_vision_config(hidden, layers, heads)
    image_kw = dict(image_mean=list(image_mean), image_std=list(image_std))
    if variant == "siglip2-naflex":
        num_patches = (image_size // patch_size) ** 2
        config = transformers.Siglip2Config(
            text_config=text_cfg, vision_config=dict(vision_cfg, patch_size=patch_size, num_patches=num_patches)
        )
        model_class = transformers.Siglip2Model
        image_processor = transformers.Siglip2ImageProcessorPil(
            patch_size=patch_size, max_num_patches=num_patches, **image_kw
        )
        processor = transformers.Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer)
    else:
        config = transformers.SiglipConfig(
            text_config=text_cfg, vision_config=dict(vision_cfg, image_size=image_size, patch_size=patch_size)
        )
        model_class = transformers.SiglipModel
        image_processor = transformers.SiglipImageProcessorPil(
            size={"height": image_size, "width": image_size}, **image_kw
        )
        processor = transformers.SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    model.eval()
    return model, processor


def load_digits_arrays(image_size: int = 16, seed: int = 0, test_fraction: float = 0.2):
    """scikit-learn's digits as RGB float images in [0,1], split deterministically.

    Returns:
        `(x_train, y_train, x_test, y_test)`: images `(N, 3, S, S)` float32 tensors, labels `(N,)` int64.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0,1]
    if image_size != 8:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).repeat(1, 3, 1, 1)  # (N, 3, S, S)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def digits_dataset(image_size: int = 16, split: str = "train", seed: int = 0):
    """The digits split as a `datasets.Dataset` with `pixel_values`, `labels` (a `ClassLabel`)."""
    import datasets

    x_tr, y_tr, x_te, y_te = load_digits_arrays(image_size, seed)
    x, y = (x_tr, y_tr) if split == "train" else (x_te, y_te)
    features = datasets.Features(
        {
            "pixel_values": datasets.Array3D(shape=(3, image_size, image_size), dtype="float32"),
            "labels": datasets.ClassLabel(names=DIGIT_NAMES),
        }
    )
    ds = datasets.Dataset.from_dict({"pixel_values": x.numpy(), "labels": y.tolist()}, features=features)
    return ds.with_format("torch")
