"""Tiny, seeded LVLMs built in-process the way transformers users build them (config objects, `save_pretrained`,
a processor with a chat template), plus tiny CLIP / SigLIP students whose towers fit them. Nothing touches the network.
"""

from __future__ import annotations

import functools
import json
import os

import numpy as np
import torch

from mmt_ard.embedded.tiny import tiny_vision_config

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


def build_lvlm_tokenizer(words=WORDS, named_specials=None):
    """A word-level fast tokenizer with `<image>` as a special token (bos/eos/pad inside the vocabulary);
    `named_specials` (`{"boi_token": "<start_of_image>", ...}`) adds more, kept by `save_pretrained`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    named = {"image_token": "<image>", **(named_specials or {})}
    specials = ["[PAD]", "[UNK]", "<s>", "</s>", "<image>"] + [t for t in named.values() if t != "<image>"]
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
        extra_special_tokens=named,
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
    return tiny_vision_config(hidden, layers, heads, image_size=image_size, patch_size=patch_size)


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

    text = dict(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=1,
        num_attention_heads=heads,
        max_position_embeddings=16,
        bos_token_id=2,
        eos_token_id=3,
        pad_token_id=0,
    )
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


# ---- a tiny LLaVA that really captions and answers (coloured squares), for the evaluation tests ----
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
CAPTION_INSTRUCTION = "Provide a short caption for this image."
VQA_INSTRUCTION = "{question}\nAnswer the question using a single word or phrase."
QUESTION = "what color is the square ?"


def square_images(n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """`n` 16 px images of a red, green or blue square at a random place on white, `(n, 3, 16, 16)` in [0, 1], and
    the colour names."""
    g = torch.Generator().manual_seed(seed)
    colors = torch.randint(0, len(COLORS), (n,), generator=g)
    x = torch.ones(n, 3, 16, 16)
    for i in range(n):
        rgb = torch.tensor(list(COLORS.values())[colors[i]]) / 255.0
        a = int(torch.randint(1, 6, (1,), generator=g))
        s = int(torch.randint(6, 10, (1,), generator=g))
        x[i, :, a : a + s, a : a + s] = rgb[:, None, None]
    return x, [list(COLORS)[c] for c in colors]


def caption_of(color: str) -> str:
    return f"a {color} square on a white background"


@functools.cache
def trained_tiny_llava(steps: int = 150, seed: int = 0):
    """A tiny LLaVA trained for ~5 s on CPU to caption the squares (`a red square on a white background`) and to
    answer `what color is the square ?`; do not mutate (shared)."""
    from mmt_ard.evaluation.lvlm import LVLMAdapter

    model, processor = build_tiny_llava(image_size=16, seed=seed)
    adapter = LVLMAdapter(model, processor)
    caption_prompt = adapter.prompt(CAPTION_INSTRUCTION)
    vqa_prompt = adapter.prompt(VQA_INSTRUCTION.format(question=QUESTION))
    model.requires_grad_(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for step in range(steps):
            x, names = square_images(16, seed=1000 + step)
            texts = [caption_of(c) for c in names[:8]] + names[8:]
            loss = adapter.loss(x, [caption_prompt] * 8 + [vqa_prompt] * 8, texts).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval().requires_grad_(False)
    return model, processor


def save_square_datasets(root: str, n: int = 6, seed: int = 0) -> tuple[str, str]:
    """A captioning folder (COCO layout, 3 references per image) and a VQA folder (VQAv2 layout, 10 answers per
    question, COCO-style file names) of square images; returns their paths."""
    from PIL import Image

    x, names = square_images(n, seed)
    cap_dir, vqa_dir = os.path.join(root, "squares_captions"), os.path.join(root, "squares_vqa")
    for d in (cap_dir, vqa_dir):
        os.makedirs(os.path.join(d, "images"), exist_ok=True)
    images, annotations, questions, answers = [], [], [], []
    for i in range(n):
        img = Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        img.save(os.path.join(cap_dir, "images", f"{i}.png"))
        img.save(os.path.join(vqa_dir, "images", f"COCO_val2014_{i:012d}.png"))
        images.append({"id": i, "file_name": f"{i}.png"})
        refs = [caption_of(names[i]), f"a {names[i]} square", f"a photo of a {names[i]} square on white"]
        annotations += [{"image_id": i, "caption": r} for r in refs]
        questions.append({"question_id": 100 + i, "image_id": i, "question": QUESTION})
        answers.append({"question_id": 100 + i, "answers": [{"answer": names[i]}] * 9 + [{"answer": "red"}]})
    with open(os.path.join(cap_dir, "captions.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations}, f)
    with open(os.path.join(vqa_dir, "questions.json"), "w") as f:
        json.dump({"questions": questions}, f)
    with open(os.path.join(vqa_dir, "annotations.json"), "w") as f:
        json.dump({"annotations": answers}, f)
    return cap_dir, vqa_dir


# ---- tiny LVLMs of the classes with tiling or other image pipelines (issue 23) ----
IDEFICS3_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]


def _tokenizer_with(extra_specials, **named):
    """`build_lvlm_tokenizer` plus more special tokens (named ones become tokenizer attributes)."""
    tokenizer = build_lvlm_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(extra_specials)})
    for name, value in named.items():
        setattr(tokenizer, name, value)
    return tokenizer


def _llama_text(vocab_size: int):
    return _text_config(vocab_size)


def build_tiny_idefics3(
    image_size=16, patch_size=4, hidden=32, layers=2, heads=2, seed=0, smolvlm=False, scale_factor=2, longest_edge=None
):
    """`(Idefics3ForConditionalGeneration, Idefics3Processor)` or, with `smolvlm=True`,
    `(SmolVLMForConditionalGeneration, SmolVLMProcessor without its video processor)`: a tiny SigLIP-like tower at
    `image_size` px, images split into `image_size` crops plus the global image, `image_seq_len` image tokens per crop
    (pixel-shuffled by `scale_factor`). SmolVLMProcessor needs the `num2words` package and, for its video processor,
    torchvision (not installed here: images never go through it)."""
    import transformers as T

    tokenizer = _tokenizer_with(IDEFICS3_TOKENS)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision_kw = _vision_kw(image_size, patch_size, hidden, layers, heads)
    scale = scale_factor
    seq_len = (image_size // patch_size) ** 2 // scale**2
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if smolvlm:
            config = T.SmolVLMConfig(
                vision_config=T.SmolVLMVisionConfig(**vision_kw),
                text_config=_llama_text(len(tokenizer)),
                image_token_id=image_token_id,
                scale_factor=scale,
            )
            model = T.SmolVLMForConditionalGeneration(config).eval()
        else:
            config = T.Idefics3Config(
                vision_config=T.Idefics3VisionConfig(**vision_kw),
                text_config=_llama_text(len(tokenizer)),
                image_token_id=image_token_id,
                scale_factor=scale,
            )
            model = T.Idefics3ForConditionalGeneration(config).eval()
    cls = T.SmolVLMImageProcessorPil if smolvlm else T.Idefics3ImageProcessorPil
    image_processor = cls(
        size={"longest_edge": longest_edge or 2 * image_size},
        max_image_size={"longest_edge": image_size},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    model.generation_config.pad_token_id = 0
    if smolvlm:
        from mmt_ard.evaluation.lvlm.model import image_only_processor_class

        processor = image_only_processor_class(T.SmolVLMProcessor)(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            image_seq_len=seq_len,
            chat_template=CHAT_TEMPLATE,
        )
        return model, processor
    processor = T.Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len, chat_template=CHAT_TEMPLATE
    )
    return model, processor


def build_tiny_gemma3(image_size=16, patch_size=4, hidden=32, layers=2, heads=2, seed=0, tokens_per_image=None):
    """`(Gemma3ForConditionalGeneration, Gemma3Processor)` with a tiny `SiglipVisionModel` tower; the image becomes
    `mm_tokens_per_image` soft tokens (pooled 2x2)."""
    import transformers as T

    tokenizer = build_lvlm_tokenizer(
        named_specials={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
        }
    )
    boi = tokenizer.convert_tokens_to_ids("<start_of_image>")
    tokens_per_image = tokens_per_image or (image_size // patch_size) ** 2 // 4
    text = T.Gemma3TextConfig(
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
        sliding_window=64,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = T.Gemma3Config(
            vision_config=T.SiglipVisionConfig(**_vision_kw(image_size, patch_size, hidden, layers, heads)),
            text_config=text,
            mm_tokens_per_image=tokens_per_image,
            boi_token_index=boi,
            eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
            image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        )
        model = T.Gemma3ForConditionalGeneration(config).eval()
        # transformers initialises Gemma 3's image projection to zeros (the image would not reach the LM)
        with torch.no_grad():
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.5)
    image_processor = T.Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    template = CHAT_TEMPLATE.replace("<image>", "<start_of_image>")
    processor = T.Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens_per_image, chat_template=template
    )
    model.generation_config.pad_token_id = 0
    return model, processor


def _ImageOnlyOnevisionProcessor(**kwargs):
    """LlavaOnevisionProcessor without its video processor (which needs torchvision, not installed here)."""
    import transformers as T

    from mmt_ard.evaluation.lvlm.model import image_only_processor_class

    return image_only_processor_class(T.LlavaOnevisionProcessor)(**kwargs)


def save_image_only_processor(folder: str, processor, **processor_config) -> str:
    """Save an image-only processor's parts (its `save_pretrained` needs the video processor): the image processor,
    the tokenizer with the chat template, and `processor_config.json` with `processor_config`."""
    processor.image_processor.save_pretrained(folder)
    processor.tokenizer.chat_template = processor.chat_template
    processor.tokenizer.save_pretrained(folder)
    with open(os.path.join(folder, "processor_config.json"), "w") as f:
        json.dump({"processor_class": type(processor).__name__.removeprefix("ImageOnly"), **processor_config}, f)
    return folder


def build_tiny_onevision(image_size=16, patch_size=4, seed=0, pinpoints=None):
    """`(LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor)`: tiny SigLIP tower, any-resolution grid
    pinpoints up to 2x2 crops."""
    import transformers as T

    pinpoints = pinpoints or [
        [image_size, image_size],
        [image_size, 2 * image_size],
        [2 * image_size, image_size],
        [2 * image_size, 2 * image_size],
    ]
    tokenizer = _tokenizer_with(["<video>"])  # its own video token: [UNK] would count as one
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = T.SiglipVisionConfig(**_vision_kw(image_size, patch_size, 32, 2, 2))
    text = T.Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = T.LlavaOnevisionConfig(
            vision_config=vision,
            text_config=text,
            image_token_id=image_token_id,
            video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=pinpoints,
            vision_feature_layer=-1,
        )
        model = T.LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = T.LlavaOnevisionImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    processor = _ImageOnlyOnevisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        num_image_tokens=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
    )
    model.generation_config.pad_token_id = 0
    return model, processor


def build_tiny_paligemma(image_size=16, patch_size=4, seed=0):
    """`(PaliGemmaForConditionalGeneration, PaliGemmaProcessor)` with a tiny SigLIP tower."""
    import transformers as T

    model, image_processor, tokenizer = build_tiny_siglip_lvlm("paligemma", image_size, patch_size, seed=seed)
    image_processor.image_seq_length = (image_size // patch_size) ** 2
    processor = T.PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.generation_config.pad_token_id = 0
    return model, processor


AYA_TOKENS = ["<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", "TILE", "TILE_GLOBAL"]


def build_tiny_aya_vision(image_size=16, patch_size=4, seed=0, max_patches=4):
    """`(AyaVisionForConditionalGeneration, AyaVisionProcessor)`: a tiny SigLIP tower, images cut into up to
    `max_patches` tiles plus a thumbnail (GotOcr2ImageProcessor's `crop_to_patches`), pixel-shuffled 2x2."""
    import transformers as T

    tokenizer = _tokenizer_with(AYA_TOKENS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = T.AyaVisionConfig(
            vision_config=T.SiglipVisionConfig(**_vision_kw(image_size, patch_size, 32, 2, 2)),
            text_config=T.Cohere2Config(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
                sliding_window=64,
            ),
            downsample_factor=2,
            image_token_id=tokenizer.convert_tokens_to_ids("<|IMG_PATCH|>"),
            vision_feature_layer=-1,
        )
        model = T.AyaVisionForConditionalGeneration(config).eval()
    image_processor = T.GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_patches,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    processor = T.AyaVisionProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        img_size=image_size,
        downsample_factor=2,
        chat_template=CHAT_TEMPLATE,
    )
    model.generation_config.pad_token_id = 0
    return model, processor


def build_tiny_vipllava(image_size=16, patch_size=4, seed=0):
    """`(VipLlavaForConditionalGeneration, LlavaProcessor)`: a tiny CLIP tower whose layers -2 and 1 feed the
    projector (VipLLaVA reads several layers)."""
    import transformers as T

    _, processor = build_tiny_llava(image_size=image_size, patch_size=patch_size, seed=seed)
    tokenizer = processor.tokenizer
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = T.VipLlavaConfig(
            vision_config=T.CLIPVisionConfig(**_vision_kw(image_size, patch_size, 32, 3, 2)),
            text_config=_text_config(len(tokenizer)),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_layer=[-2, 1],
        )
        model = T.VipLlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    return model, processor


def build_tiny_llava_next_video(image_size=16, patch_size=4, seed=0):
    """`(LlavaNextVideoForConditionalGeneration, LlavaNextVideoProcessor without its video processor)`: images go
    through LLaVA-NeXT's any-resolution pipeline."""
    import transformers as T

    from mmt_ard.evaluation.lvlm.model import image_only_processor_class

    tokenizer = _tokenizer_with(["<video>"])
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        config = T.LlavaNextVideoConfig(
            vision_config=T.CLIPVisionConfig(**_vision_kw(image_size, patch_size, 32, 3, 2)),
            text_config=_text_config(len(tokenizer)),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=pinpoints,
        )
        model = T.LlavaNextVideoForConditionalGeneration(config).eval()
    image_processor = T.LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
    )
    processor = image_only_processor_class(T.LlavaNextVideoProcessor)(
        video_processor=None,
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    model.generation_config.pad_token_id = 0
    return model, processor


def build_tiny_class(name: str, seed: int = 0):
    """`(model, processor)` of a tiny LVLM of a registered class, by short name."""
    if name == "llava":
        return build_tiny_llava(image_size=16, seed=seed)
    if name == "llava_next":
        return build_tiny_llava(image_size=16, seed=seed, next_=True)
    if name == "llava_onevision":
        return build_tiny_onevision(seed=seed)
    if name == "paligemma":
        return build_tiny_paligemma(seed=seed)
    if name == "idefics3":
        return build_tiny_idefics3(seed=seed)
    if name == "smolvlm":
        return build_tiny_idefics3(seed=seed, smolvlm=True)
    if name == "gemma3":
        return build_tiny_gemma3(seed=seed)
    if name == "aya_vision":
        return build_tiny_aya_vision(seed=seed)
    if name == "vipllava":
        return build_tiny_vipllava(seed=seed)
    if name == "llava_next_video":
        return build_tiny_llava_next_video(seed=seed)
    raise KeyError(name)
