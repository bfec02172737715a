"""Tiny, seeded LVLMs built in-process the way transformers users build them (config objects, `save_pretrained`,
a processor with a chat template), plus tiny CLIP / SigLIP students whose towers fit them. Nothing touches the network.
"""

from __future__ import annotations

import os

import numpy as np
import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() }}: {% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
WORDS = (
    "user assistant : a an the photo picture of red blue green square circle on white black background "
    "describe this image short caption for what color is shape answer question using single word or phrase yes no "
    "two one maybe . ?"
).split()
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def build_lvlm_tokenizer(words=WORDS):
    """A word-level fast tokenizer with `<image>` as a special token (bos/eos/pad inside the vocabulary)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "<s>", "</s>", "<image>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.normalizer = normalizers.Lowercase()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="[PAD]",
        unk_token="[UNK]",
        extra_special_tokens={"image_token": "<image>"},
    )


def _text_config(vocab_size: int, seed_kw=None):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        max_position_embeddings=256,
    )


def _vision_kw(image_size, patch_size, hidden, layers, heads):
    return dict(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )


def build_tiny_llava(
    image_size=16, patch_size=4, hidden=32, layers=3, heads=2, mean=CLIP_MEAN, std=CLIP_STD, seed=0, next_=False
):
    """`(LlavaForConditionalGeneration or LlavaNextForConditionalGeneration, processor)` with a CLIP tower."""
    import transformers as T

    tokenizer = build_lvlm_tokenizer()
    vision = T.CLIPVisionConfig(**_vision_kw(image_size, patch_size, hidden, layers, heads))
    text = _text_config(len(tokenizer))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if next_:
            pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
            config = T.LlavaNextConfig(
                vision_config=vision, text_config=text, image_token_id=image_token_id, image_grid_pinpoints=pinpoints
            )
            model = T.LlavaNextForConditionalGeneration(config).eval()
            image_processor = T.LlavaNextImageProcessorPil(
                size={"shortest_edge": image_size},
                crop_size={"height": image_size, "width": image_size},
                image_grid_pinpoints=pinpoints,
                image_mean=list(mean),
                image_std=list(std),
            )
            processor = T.LlavaNextProcessor(
                image_processor=image_processor,
                tokenizer=tokenizer,
                patch_size=patch_size,
                vision_feature_select_strategy="default",
                num_additional_image_tokens=1,
                chat_template=CHAT_TEMPLATE,
            )
        else:
            config = T.LlavaConfig(
                vision_config=vision,
                text_config=text,
                image_token_id=image_token_id,
                image_seq_length=(image_size // patch_size) ** 2,
            )
            model = T.LlavaForConditionalGeneration(config).eval()
            image_processor = T.CLIPImageProcessorPil(
                size={"shortest_edge": image_size},
                crop_size={"height": image_size, "width": image_size},
                image_mean=list(mean),
                image_std=list(std),
            )
            processor = T.LlavaProcessor(
                image_processor=image_processor,
                tokenizer=tokenizer,
                patch_size=patch_size,
                vision_feature_select_strategy="default",
                num_additional_image_tokens=1,
                chat_template=CHAT_TEMPLATE,
            )
    model.generation_config.pad_token_id = 0
    return model, processor


def build_tiny_siglip_lvlm(kind="paligemma", image_size=16, patch_size=4, hidden=32, layers=2, heads=2, seed=0):
    """A PaliGemma or LLaVA-OneVision with a tiny `SiglipVisionModel` tower, and its image processor."""
    import transformers as T

    tokenizer = build_lvlm_tokenizer()
    vision = T.SiglipVisionConfig(**_vision_kw(image_size, patch_size, hidden, layers, heads))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "paligemma":
            text = T.GemmaConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
            )
            config = T.PaliGemmaConfig(
                vision_config=vision, text_config=text, image_token_id=image_token_id, projection_dim=32
            )
            model = T.PaliGemmaForConditionalGeneration(config).eval()
        else:
            text = T.Qwen2Config(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
            )
            pinpoints = [[image_size, image_size], [image_size, 2 * image_size]]
            config = T.LlavaOnevisionConfig(
                vision_config=vision,
                text_config=text,
                image_token_id=image_token_id,
                video_token_id=1,
                image_grid_pinpoints=pinpoints,
            )
            model = T.LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = T.SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return model, image_processor, tokenizer


def build_tiny_siglip_student(image_size=16, patch_size=4, hidden=32, layers=2, heads=2, seed=1):
    """A tiny `SiglipModel` and its image processor (mean = std = 0.5)."""
    import transformers as T

    text = dict(vocab_size=64, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=1,
                num_attention_heads=heads, max_position_embeddings=16, bos_token_id=2, eos_token_id=3, pad_token_id=0)
    config = T.SiglipConfig(vision_config=_vision_kw(image_size, patch_size, hidden, layers, heads), text_config=text)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T.SiglipModel(config).eval()
    image_processor = T.SiglipImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return model, image_processor


def save(folder: str, model, *processors) -> str:
    """`save_pretrained` of a model and its processor(s) into `folder`; returns it."""
    model.save_pretrained(folder)
    for p in processors:
        p.save_pretrained(folder)
    return folder


def synthetic_images(folder: str, n: int, size: int = 20, seed: int = 0) -> list[str]:
    """`n` JPEG-free PNG images of coloured squares on a white background; returns their file names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    names = []
    for i in range(n):
        img = np.full((size, size, 3), 255, dtype=np.uint8)
        color = rng.integers(0, 256, size=3)
        a, b = sorted(rng.integers(2, size - 2, size=2))
        img[a : b + 2, a : b + 2] = color
        name = f"{i:012d}.png"
        Image.fromarray(img).save(os.path.join(folder, name))
        names.append(name)
    return names
