"""open_clip / OpenAI-CLIP checkpoints as transformers CLIPModels (mmt_ard/convert), checked against open_clip itself.

open_clip is installed with `pip install --no-deps open_clip_torch ftfy regex` (README, .ci/run): its module-level
imports name torchvision, which cannot be installed beside transformers here, so `open_clip_module` imports it with
minimal stand-ins for those names in `sys.modules` and removes them (and open_clip) afterwards. Nothing of open_clip
that needs torchvision is called: models are built, saved and loaded with open_clip's own code
(`CLIP`/`CustomTextCLIP`, `save_config_for_hf`, `create_model("local-dir:...")`, `build_model_from_openai_state_dict`,
`build_zero_shot_classifier`, its bundled OpenAI BPE tokenizer). The models are tiny (widths 32-128, 1-2 layers) but
keep each layout's image size, patch size, context length and vocabulary.
"""

from __future__ import annotations

import enum
import json
import os
import shutil
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from _eval_tiny import TEMPLATES as DIGIT_TEMPLATES
from _eval_tiny import trained_tiny_clip

from mmt_ard import Teacher, ZeroShotCLIP, load_clip
from mmt_ard.convert import KNOWN_ARCHS, arch_from_model_cfg, clip_config, describe_source
from mmt_ard.embedded.tiny import DIGIT_NAMES

TOL = {"atol": 1e-5, "rtol": 0.0}  # fp32, absolute (measured differences: up to 2e-6)
CLASSES = ["cat", "dog", "airplane", "traffic light", "seven"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}", "itap of a {}."]


# ---- open_clip, imported with torchvision stand-ins ----
def _torchvision_stand_ins() -> dict[str, types.ModuleType]:
    """The torchvision names open_clip imports at module level; none of them is used by what the tests call."""

    class _Transform:
        def __init__(self, *args, **kwargs):
            pass

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    root, transforms = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops, misc = types.ModuleType("torchvision.ops"), types.ModuleType("torchvision.ops.misc")
    names = (
        "Normalize",
        "Compose",
        "RandomResizedCrop",
        "ToTensor",
        "Resize",
        "CenterCrop",
        "ColorJitter",
        "Grayscale",
    )
    for name in names:
        setattr(transforms, name, type(name, (_Transform,), {}))
    transforms.InterpolationMode, transforms.functional = InterpolationMode, functional
    misc.FrozenBatchNorm2d = type("FrozenBatchNorm2d", (_Transform,), {})
    root.transforms, root.ops, ops.misc = transforms, ops, misc
    return {m.__name__: m for m in (root, transforms, functional, ops, misc)}


@pytest.fixture(scope="module")
def open_clip():
    """The `open_clip` package, imported with torchvision stand-ins that are removed right after the import."""
    before = set(sys.modules)
    stand_ins = _torchvision_stand_ins()
    clash = [name for name in stand_ins if name in sys.modules]
    if clash:
        pytest.skip(f"a real torchvision is imported ({clash}); these tests use stand-ins")
    sys.modules.update(stand_ins)
    try:
        import open_clip as module
    except ImportError as err:
        pytest.skip(f"open_clip cannot be imported ({err}); install it with `pip install --no-deps open_clip_torch`")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)  # nothing else may see them (datasets and transformers probe torchvision)
    yield module
    for name in set(sys.modules) - before:
        if name == "open_clip" or name.startswith("open_clip."):
            del sys.modules[name]


@pytest.fixture(scope="module")
def openai_tokenizer(open_clip):
    """A transformers `CLIPTokenizer` made from open_clip's bundled OpenAI BPE (offline stand-in for
    `openai/clip-vit-base-patch32`'s tokenizer, which is the same vocabulary and merges)."""
    from transformers import CLIPTokenizer

    simple = open_clip.SimpleTokenizer()
    merges = [tuple(pair) for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda item: item[1])]
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}  # same ids, OpenAI's spelling
    tokenizer = CLIPTokenizer(vocab={names.get(k, k): i for k, i in simple.encoder.items()}, merges=merges)
    assert len(tokenizer) == 49408 and tokenizer.eos_token_id == simple.eot_token_id
    tokenizer.model_max_length = 77
    return tokenizer


def tiny_cfg(open_clip, name: str, quick_gelu: bool, width: int = 64, head_width: int = 16, text_width: int = 32):
    """open_clip's built-in `model_cfg` of `name`, shrunk: its image/patch size, context and vocabulary, tiny widths."""
    cfg = open_clip.get_model_config(name)
    cfg["embed_dim"] = 24
    cfg["quick_gelu"] = quick_gelu
    cfg["vision_cfg"].update(width=width, layers=2, head_width=head_width)
    cfg["text_cfg"].update(width=text_width, heads=text_width // 16, layers=2)
    return cfg


def perturbed(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Noise on every parameter: layer norms (1/0 at init) and zero-initialised biases must be mapped too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
    return model.eval()


def write_open_clip_folder(open_clip, cfg: dict, folder, seed: int, mean, std, weights="safetensors"):
    """A random-init open_clip model saved the way open_clip publishes one: weights + `open_clip_config.json`
    (written by open_clip's own `save_config_for_hf`)."""
    from pathlib import Path

    import safetensors.torch
    from open_clip.push_to_hf_hub import save_config_for_hf

    torch.manual_seed(seed)
    cls = open_clip.CustomTextCLIP if cfg.get("custom_text") else open_clip.CLIP
    model = perturbed(cls(**{k: v for k, v in cfg.items() if k != "custom_text"}), seed)
    model.visual.image_mean, model.visual.image_std = tuple(mean), tuple(std)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if weights == "safetensors":
        safetensors.torch.save_file(model.state_dict(), str(folder / "open_clip_model.safetensors"))
    else:
        torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    save_config_for_hf(model, folder / "open_clip_config.json", model_config=cfg)
    return str(folder)


def normalised(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


# ---- equivalence with open_clip ----
LAYOUTS = {  # the layouts of the issue, each with one of the variants open_clip writes
    "ViT-B-32": {"quick_gelu": True},  # OpenAI's activation
    "ViT-B-16": {"quick_gelu": False, "custom_text": True},  # text tower nested under `text.` (CustomTextCLIP)
    "ViT-L-14": {"quick_gelu": True, "weights": "bin"},  # open_clip_pytorch_model.bin
    "ViT-L-14-336": {"quick_gelu": False},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_equal_to_open_clip(open_clip, openai_tokenizer, tmp_path, layout):
    """Image features, text features and zero-shot logits of the converted model equal open_clip's (fp32, 1e-5)."""
    spec = dict(LAYOUTS[layout])
    cfg = tiny_cfg(open_clip, layout, spec.pop("quick_gelu"))
    if spec.pop("custom_text", False):
        cfg["custom_text"] = True
    mean, std = (0.40, 0.45, 0.50), (0.30, 0.25, 0.20)
    folder = write_open_clip_folder(open_clip, cfg, tmp_path / layout, seed=1, mean=mean, std=std, **spec)

    reference = open_clip.create_model(f"local-dir:{folder}").eval()  # open_clip reads the folder itself
    oc_tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    model, processor = load_clip(folder, openai_tokenizer)
    size = cfg["vision_cfg"]["image_size"]
    assert (
        model.config.vision_config.image_size == size
        and model.config.vision_config.patch_size == (cfg["vision_cfg"]["patch_size"])
    )
    assert model.config.vision_config.hidden_act == ("quick_gelu" if cfg["quick_gelu"] else "gelu")
    assert list(processor.image_processor.image_mean) == list(reference.visual.image_mean)
    assert list(processor.image_processor.image_std) == list(reference.visual.image_std)
    assert processor.image_processor.crop_size == {"height": size, "width": size}
    assert processor.tokenizer.model_max_length == 77

    pixels = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))  # [0, 1]
    x = normalised(pixels, reference.visual.image_mean, reference.visual.image_std)
    texts = [t.format(c) for c in CLASSES for t in TEMPLATES]
    oc_ids = oc_tokenizer(texts)  # (N, 77), zero-padded
    hf = processor.tokenizer(texts, padding=True, return_tensors="pt")
    length = hf.input_ids.shape[1]
    assert torch.equal(hf.input_ids * hf.attention_mask, oc_ids[:, :length])  # the same OpenAI BPE ids
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_image_features(pixel_values=x).pooler_output, reference.encode_image(x), **TOL
        )
        text_features = model.get_text_features(**hf).pooler_output
        torch.testing.assert_close(text_features, reference.encode_text(oc_ids), **TOL)

        classifier = open_clip.build_zero_shot_classifier(reference, oc_tokenizer, CLASSES, TEMPLATES)  # (D, C)
        expected = reference.logit_scale.exp() * F.normalize(reference.encode_image(x), dim=-1) @ classifier
    zero_shot = ZeroShotCLIP(model, processor, logit_scale=None).eval()
    zero_shot.set_classes(CLASSES, TEMPLATES)
    with torch.no_grad():
        logits = zero_shot(pixels).logits  # our pipeline: normalisation inside, text head from our tokenizer
    torch.testing.assert_close(logits, expected, **TOL)
    assert logits.std() > 0.01  # not a degenerate comparison


def _openai_state_dict(open_clip, seed: int):
    """A tiny OpenAI-layout ViT-B/32-shaped CLIP (heads = width / 64, QuickGELU), fp16 like OpenAI's files."""
    cfg = tiny_cfg(open_clip, "ViT-B-32", quick_gelu=True, width=128, head_width=64, text_width=64)
    torch.manual_seed(seed)
    model = perturbed(open_clip.CLIP(**cfg), seed)
    return {k: v.half() for k, v in model.state_dict().items()}


def test_openai_state_dict_file_with_inferred_architecture(open_clip, openai_tokenizer, tmp_path):
    """A bare OpenAI-layout state dict (nested, `module.`-prefixed, fp16) equals open_clip's own shape inference."""
    state_dict = _openai_state_dict(open_clip, seed=2)
    path = tmp_path / "finetuned.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state_dict.items()}}, path)
    reference = open_clip.model.build_model_from_openai_state_dict(dict(state_dict), cast_dtype=None).float().eval()

    model, processor = load_clip(str(path), openai_tokenizer)
    assert model.dtype == torch.float32 and model.config.vision_config.hidden_act == "quick_gelu"
    assert list(processor.image_processor.image_mean) == pytest.approx(list(open_clip.OPENAI_DATASET_MEAN))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ids = open_clip.tokenize(["a photo of a dog", "itap of a cat"])
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_image_features(pixel_values=x).pooler_output, reference.encode_image(x), **TOL
        )
        hf_ids = ids[:, : int((ids > 0).sum(1).max())]
        got = model.get_text_features(input_ids=hf_ids, attention_mask=(hf_ids > 0).long()).pooler_output
        torch.testing.assert_close(got, reference.encode_text(ids), **TOL)
        assert model.logit_scale.item() == pytest.approx(reference.logit_scale.item())


def test_vision_only_checkpoint_takes_the_reference_text_tower(open_clip, openai_tokenizer, tmp_path):
    """A TeCoA-style `.pth.tar` (`vision_encoder_state_dict` beside a prompter's `state_dict`) on its base CLIP,
    equal to open_clip with `model.visual.load_state_dict(...)` (how RobustVLM/TeCoA load theirs)."""
    cfg = tiny_cfg(open_clip, "ViT-B-32", quick_gelu=True)
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    base = write_open_clip_folder(open_clip, cfg, tmp_path / "base", seed=3, mean=mean, std=std)
    openai_tokenizer.save_pretrained(base)  # the base folder carries its tokenizer, as open_clip's save_for_hf does
    finetuned = perturbed(open_clip.create_model(f"local-dir:{base}"), seed=4)
    path = tmp_path / "vitb32_eps1.pth.tar"
    prompter = {"pad_up": torch.zeros(3, 3)}
    vision = finetuned.visual.state_dict()
    torch.save({"epoch": 10, "state_dict": prompter, "vision_encoder_state_dict": vision, "best_acc1": 0.3}, path)

    with pytest.raises(ValueError, match="only an image tower"):
        load_clip(str(path))
    model, processor = load_clip(str(path), base)
    reference = open_clip.create_model(f"local-dir:{base}").eval()
    reference.visual.load_state_dict(vision)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ids = open_clip.tokenize(["a photo of a dog"])
    with torch.no_grad():
        torch.testing.assert_close(
            model.get_image_features(pixel_values=x).pooler_output, reference.encode_image(x), **TOL
        )
        text = model.get_text_features(**processor.tokenizer(["a photo of a dog"], return_tensors="pt")).pooler_output
        torch.testing.assert_close(text, reference.encode_text(ids), **TOL)


def test_known_architectures_match_open_clip_configs(open_clip):
    """The built-in names `ARCH@file` accepts have open_clip's own configs; ViT-L/14 maps to OpenAI's transformers
    config (openai/clip-vit-large-patch14: 1024 x 24 vision with 16 heads, 768 x 12 text with 12 heads)."""
    for name, cfg in KNOWN_ARCHS.items():
        theirs = open_clip.get_model_config(name)
        assert theirs["embed_dim"] == cfg["embed_dim"]
        assert {k: theirs["vision_cfg"].get(k) for k in cfg["vision_cfg"]} == cfg["vision_cfg"], name
        assert {k: theirs["text_cfg"].get(k) for k in cfg["text_cfg"]} == cfg["text_cfg"], name
        assert arch_from_model_cfg(theirs) == arch_from_model_cfg(dict(cfg)), name
    config = clip_config(arch_from_model_cfg(open_clip.get_model_config("ViT-L-14-quickgelu")))
    v, t = config.vision_config, config.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads, v.intermediate_size) == (1024, 24, 16, 4096)
    assert (v.image_size, v.patch_size, v.hidden_act, config.projection_dim) == (224, 14, "quick_gelu", 768)
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.intermediate_size) == (768, 12, 12, 3072)
    assert (t.vocab_size, t.max_position_embeddings, t.eos_token_id) == (49408, 77, 2)


def test_arch_prefix_is_checked_against_the_weights(open_clip, tmp_path):
    """`ViT-B-32@file` uses the named architecture; weights of another shape are refused with both shapes named."""
    path = tmp_path / "tiny.pt"
    torch.save(_openai_state_dict(open_clip, seed=5), path)
    with pytest.raises(ValueError, match=r"`ViT-B-32`.*disagree"):
        load_clip(f"ViT-B-32@{path}")


def test_round_trip_through_save_pretrained(open_clip, openai_tokenizer, tmp_path):
    """The converted model and processor saved with `save_pretrained` load back as plain transformers objects with
    the same zero-shot logits."""
    from transformers import CLIPModel, CLIPProcessor

    cfg = tiny_cfg(open_clip, "ViT-B-16", quick_gelu=False)
    folder = write_open_clip_folder(open_clip, cfg, tmp_path / "oc", seed=6, mean=(0.5,) * 3, std=(0.25,) * 3)
    model, processor = load_clip(folder, openai_tokenizer)
    model.save_pretrained(tmp_path / "hf")
    processor.save_pretrained(tmp_path / "hf")
    again = CLIPModel.from_pretrained(tmp_path / "hf").eval()
    again_processor = CLIPProcessor.from_pretrained(tmp_path / "hf")
    assert again.config.text_config.eos_token_id == 2 and again.config.vision_config.hidden_act == "gelu"
    assert list(again_processor.image_processor.image_std) == [0.25] * 3
    pixels = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    logits = []
    for m, p in ((model, processor), (again, again_processor)):
        zero_shot = ZeroShotCLIP(m, p, logit_scale=None).eval()
        zero_shot.set_classes(CLASSES, TEMPLATES)
        with torch.no_grad():
            logits.append(zero_shot(pixels).logits)
    torch.testing.assert_close(logits[1], logits[0], atol=0, rtol=0)


# ---- a trained tiny CLIP in open_clip's layout: teachers and mmt-ard-eval ----
def write_as_open_clip(clip, processor, folder, tokenizer_files: bool) -> str:
    """A transformers CLIP written in open_clip's file layout (test-only inverse of the converter's renaming; that
    open_clip reads it as the same model is checked in `test_open_clip_reads_the_written_folder`)."""
    import safetensors.torch

    sd = {k: v for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
    out = {}
    for tower, prefix in (("vision_model", "visual.transformer.resblocks"), ("text_model", "transformer.resblocks")):
        for i in range(getattr(clip.config, f"{tower.split('_')[0]}_config").num_hidden_layers):
            src, dst = f"{tower}.encoder.layers.{i}", f"{prefix}.{i}"
            for kind in ("weight", "bias"):
                qkv = [sd[f"{src}.self_attn.{n}_proj.{kind}"] for n in "qkv"]
                out[f"{dst}.attn.in_proj_{kind}"] = torch.cat(qkv)
                for a, b in (
                    ("self_attn.out_proj", "attn.out_proj"),
                    ("layer_norm1", "ln_1"),
                    ("layer_norm2", "ln_2"),
                ):
                    out[f"{dst}.{b}.{kind}"] = sd[f"{src}.{a}.{kind}"]
                out[f"{dst}.mlp.c_fc.{kind}"] = sd[f"{src}.mlp.fc1.{kind}"]
                out[f"{dst}.mlp.c_proj.{kind}"] = sd[f"{src}.mlp.fc2.{kind}"]
    e, t = "vision_model.embeddings", "text_model.embeddings"
    out.update(
        {
            "visual.conv1.weight": sd[f"{e}.patch_embedding.weight"],
            "visual.class_embedding": sd[f"{e}.class_embedding"],
            "visual.positional_embedding": sd[f"{e}.position_embedding.weight"],
            "visual.proj": sd["visual_projection.weight"].t().contiguous(),
            "token_embedding.weight": sd[f"{t}.token_embedding.weight"],
            "positional_embedding": sd[f"{t}.position_embedding.weight"],
            "text_projection": sd["text_projection.weight"].t().contiguous(),
            "logit_scale": sd["logit_scale"],
        }
    )
    for a, b in (("visual.ln_pre", "vision_model.pre_layrnorm"), ("visual.ln_post", "vision_model.post_layernorm")):
        out.update({f"{a}.weight": sd[f"{b}.weight"], f"{a}.bias": sd[f"{b}.bias"]})
    out.update({"ln_final.weight": sd["text_model.final_layer_norm.weight"]})
    out.update({"ln_final.bias": sd["text_model.final_layer_norm.bias"]})
    v, tc = clip.config.vision_config, clip.config.text_config
    model_cfg = {
        "embed_dim": clip.config.projection_dim,
        "quick_gelu": v.hidden_act == "quick_gelu",
        "vision_cfg": {
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "width": v.hidden_size,
            "layers": v.num_hidden_layers,
            "head_width": v.hidden_size // v.num_attention_heads,
            "mlp_ratio": v.intermediate_size / v.hidden_size,
        },
        "text_cfg": {
            "context_length": tc.max_position_embeddings,
            "vocab_size": tc.vocab_size,
            "width": tc.hidden_size,
            "heads": tc.num_attention_heads,
            "layers": tc.num_hidden_layers,
            "mlp_ratio": tc.intermediate_size / tc.hidden_size,
            "pool_type": "eos",  # the tiny word-level tokenizer's end-of-text is not its highest id
            "eos_id": tc.eos_token_id,
        },
    }
    image = processor.image_processor
    preprocess = {"mean": list(image.image_mean), "std": list(image.image_std), "interpolation": "bicubic"}
    os.makedirs(folder, exist_ok=True)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in out.items()}, os.path.join(folder, "open_clip_model.safetensors")
    )
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, f)
    if tokenizer_files:
        processor.tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def trained_open_clip_dir(tmp_path_factory):
    """The shared trained tiny digits CLIP (about 85 % clean accuracy) as an open_clip folder with its tokenizer."""
    clip, processor = trained_tiny_clip()
    return write_as_open_clip(clip, processor, tmp_path_factory.mktemp("oc") / "digits-open-clip", True)


def copy_without_tokenizer(folder: str, dst) -> str:
    """The weights and `open_clip_config.json` of an open_clip folder, without its tokenizer files."""
    os.makedirs(dst)
    for name in ("open_clip_model.safetensors", "open_clip_config.json"):
        shutil.copy(os.path.join(folder, name), os.path.join(dst, name))
    return str(dst)


def test_open_clip_reads_the_written_folder(open_clip, trained_open_clip_dir):
    """The test's writer produces what open_clip itself reads as the same model (so the tests below use a real
    open_clip folder), and the converter gives that model back."""
    clip, processor = trained_tiny_clip()
    reference = open_clip.create_model(f"local-dir:{trained_open_clip_dir}").eval()
    converted, _ = load_clip(trained_open_clip_dir)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    ids = processor.tokenizer(["a photo of the digit seven", "a photo of the digit one"], return_tensors="pt")
    with torch.no_grad():
        original = clip.get_image_features(pixel_values=x).pooler_output
        torch.testing.assert_close(reference.encode_image(x), original, **TOL)
        torch.testing.assert_close(converted.get_image_features(pixel_values=x).pooler_output, original, **TOL)
        text = clip.get_text_features(**ids).pooler_output
        padded = F.pad(ids.input_ids, (0, 16 - ids.input_ids.shape[1]))  # open_clip takes the full context, 0-padded
        torch.testing.assert_close(reference.encode_text(padded), text, **TOL)
        torch.testing.assert_close(converted.get_text_features(**ids).pooler_output, text, **TOL)


def test_teacher_from_an_open_clip_folder(
    trained_open_clip_dir, make_config, make_trainer, teacher_specs, digits_arrays, tmp_path
):
    """`Teacher("<open_clip folder>")` loads the converted model with the folder's own tokenizer and preprocessing;
    it classifies the digits as the original does, and teaches a student in the mmt-ard preset."""
    from mmt_ard.training.teachers import build_teacher_module

    teacher = Teacher(trained_open_clip_dir, role="robust")
    args = make_config(preset="mmt-ard")
    module = build_teacher_module(teacher.resolved(args), logit_scale=100.0)
    assert module.base.config._name_or_path == trained_open_clip_dir
    module.set_classes(DIGIT_NAMES, DIGIT_TEMPLATES)
    original = ZeroShotCLIP(*trained_tiny_clip()).eval()
    original.set_classes(DIGIT_NAMES, DIGIT_TEMPLATES)
    x, y = digits_arrays[2][:200], digits_arrays[3][:200]
    with torch.no_grad():
        logits = module(x).logits
        torch.testing.assert_close(logits, original(x).logits, atol=1e-4, rtol=1e-5)
    assert (logits.argmax(-1) == y).float().mean() > 0.6

    # a folder without tokenizer files, with the processor given as an object: nothing is fetched
    bare = copy_without_tokenizer(trained_open_clip_dir, tmp_path / "bare")
    given = trained_tiny_clip()[1]
    module = build_teacher_module(Teacher(bare, role="robust", processor=given).resolved(args), logit_scale=100.0)
    assert module.processor is given

    trainer = make_trainer("mmt-ard", teachers=[teacher, teacher_specs["clean"]])
    trainer.train()
    assert trainer.state.global_step == 2
    assert 0 <= trainer.state.log_history[0]["teacher_accuracy/robust"] <= 1


def test_mmt_ard_eval_on_an_open_clip_folder(trained_open_clip_dir, tmp_path):
    """`mmt-ard-eval --models <open_clip folder> --processor <folder>` evaluates the converted model."""
    from mmt_ard.cli.evaluate import main

    data = tmp_path / "digits"
    _write_image_folder(data, 40)
    bare = copy_without_tokenizer(trained_open_clip_dir, tmp_path / "no-tokenizer")
    processor_dir = tmp_path / "processor"
    trained_tiny_clip()[1].save_pretrained(processor_dir)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"digits": {"templates": DIGIT_TEMPLATES}}))
    out = tmp_path / "eval"
    args = ["--models", str(bare), "--processor", str(processor_dir), "--datasets", str(data)]
    args += ["--class-names-json", str(prompts), "--output-dir", str(out), "--no-progress", "--eps", "1/255"]
    args += ["--attacks", "pgd", "--pgd-steps", "2", "--num-samples", "40", "--no-checks"]
    assert main(args) == 0
    (result,) = json.loads((out / "results.json").read_text())["results"]
    assert (result["model"], result["model_source"]) == ("no-tokenizer", str(bare))
    assert result["num_samples"] == 40 and result["clean_accuracy"] > 0.6
    assert 0 <= result["robust_accuracy"]["1/255"]["worst_case"] <= result["clean_accuracy"]


def _write_image_folder(root, n: int) -> None:
    import numpy as np
    from PIL import Image

    from mmt_ard.embedded.tiny import load_digits_arrays

    _, _, x, y = load_digits_arrays(16)
    for i in range(n):
        folder = root / DIGIT_NAMES[int(y[i])]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (x[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")


# ---- Hub sources, offline: hf_hub_download served from a local folder ----
def test_hub_sources_download_config_and_weights(trained_open_clip_dir, monkeypatch):
    """`hf-hub:org/name` and a plain Hub id whose repository holds `open_clip_config.json` (after transformers finds
    no config.json there) fetch the config and the weights with `huggingface_hub.hf_hub_download`."""
    import huggingface_hub

    fetched = []

    def fake_download(repo_id, filename, **kwargs):
        fetched.append((repo_id, filename))
        path = os.path.join(trained_open_clip_dir, filename)
        if repo_id != "someone/digits-clip" or not os.path.isfile(path):
            raise huggingface_hub.errors.EntryNotFoundError(f"{repo_id}/{filename}")
        return path

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model, processor = load_clip("hf-hub:someone/digits-clip")
    names = [name for _, name in fetched]
    assert names[:2] == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert "tokenizer.json" in names  # the repository's own tokenizer files are fetched beside the weights
    assert model.config._name_or_path == "hf-hub:someone/digits-clip"
    assert processor.tokenizer.get_vocab() == trained_tiny_clip()[1].tokenizer.get_vocab()
    fetched.clear()
    model, _ = load_clip("someone/digits-clip")  # no config.json: transformers fails, the open_clip config is found
    assert ("someone/digits-clip", "open_clip_config.json") in fetched
    assert model.config._name_or_path == "hf-hub:someone/digits-clip"
    with pytest.raises(OSError, match="Could not load a model from `someone/not-there`"):
        load_clip("someone/not-there")


# ---- errors ----
def _model_cfg(**changes) -> dict:
    cfg = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }
    for key, value in changes.items():
        tower, _, field = key.partition("__")
        if field:
            cfg[tower][field] = value
        else:
            cfg[tower] = value
    return cfg


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"vision_cfg__layers": [3, 4, 6, 3]}, "ResNet"),
        ({"vision_cfg__timm_model_name": "convnext_base"}, "timm"),
        ({"text_cfg__hf_model_name": "xlm-roberta-base"}, "Hugging Face text tower"),
        ({"vision_cfg__attentional_pool": True}, "attentional pooling"),
        ({"vision_cfg__ls_init_value": 1e-5}, "layer scale"),
        ({"multimodal_cfg": {"width": 32}}, "CoCa"),
        ({"init_logit_bias": -10}, "SigLIP"),
        ({"text_cfg__pool_type": "last"}, "pool_type"),
        ({"vision_cfg__image_size": [32, 48]}, "image_size"),
    ],
)
def test_unsupported_configs_are_named(changes, named):
    with pytest.raises(ValueError, match=named):
        arch_from_model_cfg(_model_cfg(**changes))


def test_options_that_are_off_are_accepted():
    """open_clip tests its options for truth: empty names and `False` flags are the plain ViT."""
    cfg = _model_cfg(
        vision_cfg__timm_model_name="", text_cfg__hf_model_name=None, vision_cfg__final_ln_after_pool=True
    )
    arch = arch_from_model_cfg({**cfg, "init_logit_bias": None, "quick_gelu": True, "custom_text": True})
    assert (arch.image_size, arch.patch_size, arch.vision_heads, arch.text_heads, arch.quick_gelu) == (
        32,
        8,
        2,
        2,
        True,
    )


class PickledArgs:
    """An object pickled beside the tensors (as some training scripts save `args`): refused by weights_only=True."""


def test_unsupported_weights_and_files_are_named(tmp_path):
    resnet = {"visual.conv1.weight": torch.zeros(8, 3, 3, 3), "visual.layer1.0.conv1.weight": torch.zeros(8, 8, 1, 1)}
    torch.save(resnet, tmp_path / "rn50.pt")
    with pytest.raises(ValueError, match="ResNet image tower"):
        load_clip(str(tmp_path / "rn50.pt"))
    torch.save({"epoch": 1, "optimizer": {}}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="no CLIP state dict"):
        load_clip(str(tmp_path / "empty.pt"))
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "ViT-B-32.pt"))
    with pytest.raises(ValueError, match="TorchScript"):
        load_clip(str(tmp_path / "ViT-B-32.pt"))

    torch.save({"args": PickledArgs(), "state_dict": {}}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_clip(str(tmp_path / "pickled.pt"))
    with pytest.raises(FileNotFoundError, match="ViT-B-32@"):
        load_clip("ViT-B-32@no/such/file.pt")


def test_missing_tokenizer_says_what_to_pass(open_clip, trained_open_clip_dir, tmp_path, monkeypatch):
    """Without tokenizer files, `processor_name_or_path` or the Hub, the error names OpenAI's tokenizer and the flag;
    a vocabulary that is not OpenAI's needs its tokenizer named."""
    from mmt_ard.convert import open_clip_processor

    monkeypatch.setattr(open_clip_processor, "OPENAI_TOKENIZER", str(tmp_path / "not-downloaded"))
    cfg = tiny_cfg(open_clip, "ViT-B-32", quick_gelu=True)
    folder = write_open_clip_folder(open_clip, cfg, tmp_path / "oc", seed=7, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(OSError, match=r"could not load its tokenizer.*OpenAI.s CLIP tokenizer.*--\*_processor"):
        load_clip(folder)
    bare = copy_without_tokenizer(trained_open_clip_dir, tmp_path / "bare")
    with pytest.raises(ValueError, match=r"has \d+ tokens, not the 49408"):
        load_clip(bare)


def test_model_card_names_open_clip_checkpoints():
    """The card names a converted checkpoint as such; `hf-hub:` never lands in the Hub front-matter as a base id."""
    from mmt_ard.training.model_card import render_model_card

    assert describe_source("hf-hub:chs20/fare2-clip") == "open_clip checkpoint `hf-hub:chs20/fare2-clip`, converted"
    assert describe_source("ViT-B-32@tecoa_eps1.pth.tar").startswith("open_clip checkpoint")
    assert describe_source("openai/clip-vit-base-patch32") == "openai/clip-vit-base-patch32"
    card = render_model_card(
        {
            "base_model": "hf-hub:chs20/tecoa2-clip",
            "teachers": [{"name": "robust", "role": "robust", "model": "hf-hub:chs20/fare2-clip", "processor": None}],
        }
    )
    assert "open_clip checkpoint `hf-hub:chs20/fare2-clip`, converted" in card
    assert "open_clip checkpoint `hf-hub:chs20/tecoa2-clip`, converted" in card
    assert "base_model: chs20/tecoa2-clip" in card
