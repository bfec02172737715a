"""Model families (CLIP, SigLIP, SigLIP 2): zero-shot heads and rankings equal to the models' own outputs,
identification, loading, and the refusals (unknown families, processors of another family, vision-only towers)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _families import FAMILY_OF_VARIANT, VARIANTS, build, processor_call_kwargs, random_images

from mmt_ard import ZeroShotCLIP, load_clip
from mmt_ard.models import FAMILIES, UnsupportedModelError, family_of

CLASSES = ["zero", "one", "two", "seven", "nine"]
PROMPT = "a photo of a {}."
TOL = 1e-5


def _own_outputs(variant, model, processor, images):
    """The model's own normalised text features and `logits_per_image`, through its processor as users call it."""
    prompts = [PROMPT.format(c) for c in CLASSES]
    kwargs = processor_call_kwargs(variant)
    with torch.no_grad():
        text = processor(text=prompts, return_tensors="pt", **kwargs)
        text = {k: v for k, v in text.items() if k in ("input_ids", "attention_mask")}
        features = F.normalize(model.get_text_features(**text).pooler_output, dim=-1)
        logits = model(**processor(text=prompts, images=images, return_tensors="pt", **kwargs)).logits_per_image
    return features, logits


@pytest.mark.parametrize("variant", VARIANTS)
def test_text_head_and_ranking_equal_the_models_own(variant, tmp_path):
    model, processor = build(variant, str(tmp_path))
    images, pixels = random_images(6)
    own_features, own_logits = _own_outputs(variant, model, processor, images)

    zero_shot = ZeroShotCLIP(model, processor, logit_scale=None)  # the model's own scale (and SigLIP's bias)
    assert zero_shot.family.name == FAMILY_OF_VARIANT[variant]
    head = zero_shot.set_classes(CLASSES, [PROMPT])
    assert (head - own_features).abs().max().item() < TOL
    with torch.no_grad():
        logits = zero_shot(pixels).logits
    assert (logits - own_logits).abs().max().item() < 1e-4
    assert torch.equal(logits.argmax(-1), own_logits.argmax(-1))
    # the protocol's fixed scale ranks the same way
    fixed = ZeroShotCLIP(model, processor, logit_scale=100.0)
    fixed.set_classes(CLASSES, [PROMPT])
    with torch.no_grad():
        assert torch.equal(fixed(pixels).logits.argmax(-1), own_logits.argmax(-1))
    assert fixed.logit_mode == "fixed 100"
    assert zero_shot.logit_mode == ("model scale" if variant == "clip" else "model scale + bias")


@pytest.mark.parametrize("variant", ["siglip", "siglip-sentencepiece", "siglip2", "siglip2-naflex"])
def test_longest_padding_would_give_other_siglip_features(variant, tmp_path):
    """Control: SigLIP's text tower pools the last position, so CLIP-style padding changes the features (the
    equality test above can fail)."""
    model, processor = build(variant, str(tmp_path))
    own_features, _ = _own_outputs(variant, model, processor, random_images(1)[0])
    tokens = processor.tokenizer([PROMPT.format(c) for c in CLASSES], padding=True, return_tensors="pt")
    tokens = {k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        longest = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    assert (longest - own_features).abs().max().item() > 1e-3


def test_template_ensemble_is_the_mean_of_normalised_prompts(tmp_path):
    model, processor = build("siglip2")
    templates = ["a photo of a {}.", "itap of the {}", "A Blurry Photo Of A {}"]
    zero_shot = ZeroShotCLIP(model, processor)
    head = zero_shot.set_classes(CLASSES, templates)
    for c, name in enumerate(CLASSES):
        # SigLIP 2 prompts are lower-cased (its tokenizer does it too); max_length padding to 64 tokens
        texts = [t.format(name) for t in templates]
        tokens = processor.tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt")
        with torch.no_grad():
            feats = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        torch.testing.assert_close(head[c], F.normalize(feats.mean(0), dim=-1), atol=TOL, rtol=0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_saved_models_load_with_their_family(variant, tmp_path):
    model, processor = build(variant, str(tmp_path))
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    loaded, loaded_processor = load_clip(str(folder))
    assert type(loaded) is type(model)
    family, kind = family_of(loaded, loaded_processor)
    assert (family.name, kind) == (FAMILY_OF_VARIANT[variant], "full")
    images, pixels = random_images(4)
    heads = []
    for m, p in ((model, processor), (loaded, loaded_processor)):
        zs = ZeroShotCLIP(m, p, logit_scale=None)
        heads.append((zs.set_classes(CLASSES, [PROMPT]), zs(pixels).logits.detach()))
    torch.testing.assert_close(heads[0][0], heads[1][0], atol=TOL, rtol=0)
    torch.testing.assert_close(heads[0][1], heads[1][1], atol=1e-4, rtol=0)


# ---- refusals ----
def test_a_model_of_an_unknown_family_is_refused_with_the_supported_ones():
    from transformers import ViTConfig, ViTModel

    vit = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    _, processor = build("clip")
    with pytest.raises(UnsupportedModelError) as err:
        ZeroShotCLIP(vit, processor)
    message = str(err.value)
    assert "ViTModel" in message
    for family in FAMILIES.values():
        assert family.title in message


def test_a_saved_model_of_an_unknown_family_is_refused_by_load_clip(tmp_path):
    from transformers import ViTConfig, ViTModel

    folder = tmp_path / "vit"
    ViTModel(
        ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(folder)
    with pytest.raises(UnsupportedModelError) as err:
        load_clip(str(folder))
    assert "`vit`" in str(err.value) and str(folder) in str(err.value) and "SigLIP" in str(err.value)


@pytest.mark.parametrize(
    ("model_variant", "processor_variant"), [("clip", "siglip"), ("siglip", "clip"), ("clip", "siglip2")]
)
def test_a_processor_of_another_family_is_refused(model_variant, processor_variant, tmp_path):
    model, _ = build(model_variant, str(tmp_path))
    _, other = build(processor_variant, str(tmp_path))
    with pytest.raises(UnsupportedModelError) as err:
        ZeroShotCLIP(model, other)
    message = str(err.value)
    assert type(model).__name__ in message and type(other).__name__ in message
    assert "processor saved with the model" in message


def test_a_processor_of_another_family_is_refused_by_load_clip(tmp_path):
    model, _ = build("siglip")
    _, clip_processor = build("clip")
    folder = tmp_path / "siglip"
    model.save_pretrained(folder)
    clip_processor.save_pretrained(tmp_path / "clip_processor")
    with pytest.raises(UnsupportedModelError, match="SiglipModel.*CLIPProcessor"):
        load_clip(str(folder), str(tmp_path / "clip_processor"))


def test_a_tokenizer_too_large_for_the_text_tower_is_named(tmp_path):
    """A generic tokenizer (no family by its class) whose ids exceed the model's vocabulary."""
    from mmt_ard.embedded.tiny import build_siglip2_tokenizer, build_tokenizer

    model, processor = build("siglip2")  # vocabulary of the character tokenizer
    bigger = build_tokenizer(["x" * i for i in range(1, 60)])  # word-level, more ids than the character vocabulary
    processor.tokenizer = bigger
    zero_shot = ZeroShotCLIP(model, processor)
    with pytest.raises(UnsupportedModelError, match="token id .* embeddings"):
        zero_shot.set_classes(["x" * 50], ["{}"])
    assert len(build_siglip2_tokenizer()) < len(bigger)


@pytest.mark.parametrize("variant", ["clip", "siglip", "siglip2-naflex"])
def test_vision_only_tower_needs_class_embeddings(variant, tmp_path):
    import transformers

    model, processor = build(variant, str(tmp_path))
    tower_class = {
        "clip": transformers.CLIPVisionModelWithProjection,
        "siglip": transformers.SiglipVisionModel,
        "siglip2-naflex": transformers.Siglip2VisionModel,
    }[variant]
    vision_config = model.config.vision_config
    if variant == "clip":
        vision_config.projection_dim = model.config.projection_dim
    tower = tower_class(vision_config).eval()
    state = model.state_dict()
    if not any(k.startswith("vision_model.") for k in tower.state_dict()):  # towers that hold their layers directly
        state = {k[len("vision_model.") :]: v for k, v in state.items() if k.startswith("vision_model.")}
    missing, _ = tower.load_state_dict(state, strict=False)
    assert not [k for k in missing if "position_ids" not in k]

    zero_shot = ZeroShotCLIP(tower, processor, logit_scale=100.0)
    assert zero_shot.kind == "vision"
    with pytest.raises(UnsupportedModelError) as err:
        zero_shot.set_classes(CLASSES, [PROMPT])
    assert tower_class.__name__ in str(err.value) and "set_class_embeddings" in str(err.value)
    with pytest.raises(ValueError, match="vision-only tower"):
        ZeroShotCLIP(tower, processor, logit_scale=None)

    full = ZeroShotCLIP(model, processor, logit_scale=100.0)
    head = full.set_classes(CLASSES, [PROMPT])
    zero_shot.set_class_embeddings(head)
    _, pixels = random_images(4)
    with torch.no_grad():
        torch.testing.assert_close(zero_shot(pixels).logits, full(pixels).logits, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="D=7"):
        zero_shot.set_class_embeddings(torch.ones(3, 7))


def test_a_saved_vision_only_tower_is_refused_by_load_clip(tmp_path):
    import transformers

    model, processor = build("siglip")
    transformers.SiglipVisionModel(model.config.vision_config).save_pretrained(tmp_path / "tower")
    with pytest.raises(UnsupportedModelError, match="vision-only SigLIP tower"):
        load_clip(str(tmp_path / "tower"))


def test_missing_folder_or_unreachable_id_says_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="offline mode is on"):
        load_clip("nobody/no-such-model")
