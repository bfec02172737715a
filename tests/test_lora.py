"""LoRA students: only adapters train under every preset, the attack sees the adapted model, resume is exact, and
the result merges into a plain `CLIPModel`."""

import os

import pytest
import torch
from conftest import PRESET_ROLES, STUDENT_KW
from transformers import CLIPModel

from mmt_ard import MMTARDTrainer, ZeroShotCLIP
from mmt_ard.attacks import ce_inner_loss, pgd
from mmt_ard.embedded.tiny import build_tiny_clip
from mmt_ard.models import base_model
from mmt_ard.training.lora import adapter_parameter_names, apply_lora, merge_and_save, merge_checkpoint, unadapted_copy
from mmt_ard.training.trainer import load_student_weights

LORA_KW = dict(r=4, alpha=8, dropout=0.1)


def lora_student(seed=0):
    clip, processor = build_tiny_clip(**STUDENT_KW)
    return apply_lora(clip, seed=seed, **LORA_KW), processor


def randomize_adapters(model, seed=1):
    """Non-zero adapters (a fresh LoRA is the identity: lora_B starts at 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


@pytest.fixture
def make_lora_trainer(make_config, teacher_specs, digits_small):
    def make(preset="mmt-ard", **overrides):
        model, processor = lora_student()
        return MMTARDTrainer(
            model=model,
            args=make_config(preset=preset, **overrides),
            teachers=[teacher_specs[r] for r in PRESET_ROLES[preset]],
            processing_class=processor,
            train_dataset=digits_small,
        )

    return make


@pytest.mark.parametrize("preset", sorted(PRESET_ROLES))
def test_only_adapters_train(make_lora_trainer, preset):
    trainer = make_lora_trainer(preset, max_steps=1, attack_steps=1, learning_rate=1e-2, warmup_steps=0)
    student = trainer.model.student
    adapters = {f"student.clip.{n}" for n in adapter_parameter_names(student.clip)}
    assert adapters and {n for n, p in trainer.model.named_parameters() if p.requires_grad} == adapters
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= adapters
    assert any(".lora_B." in n for n in changed)
    if preset in ("fare", "pmg-aft"):  # the frozen original is the model without adapters
        original = trainer.teacher_modules[[s.role for s in trainer.teacher_specs].index("original")].clip
        assert type(original) is CLIPModel
        assert not [n for n, _ in original.named_modules() if "lora" in n]


def test_attack_sees_the_adapted_model(batch, class_names):
    model, processor = lora_student()
    randomize_adapters(model)
    merged, _ = build_tiny_clip(**STUDENT_KW)
    merged.load_state_dict(merge_and_save(model).state_dict())
    plain, _ = build_tiny_clip(**STUDENT_KW)  # the same weights without the adapters

    views = {}
    for key, clip in (("lora", model), ("merged", merged), ("plain", plain)):
        zs = ZeroShotCLIP(clip, processor).eval()
        zs.set_classes(class_names, ["a photo of a {}"])
        x_adv = pgd(
            zs,
            batch["pixel_values"],
            ce_inner_loss(batch["labels"]),
            eps=8 / 255,
            step_size=2 / 255,
            steps=3,
            generator=torch.Generator().manual_seed(0),
        )
        views[key] = (zs(batch["pixel_values"]).logits, x_adv)
    assert torch.allclose(views["lora"][0], views["merged"][0], atol=1e-4)
    assert torch.allclose(views["lora"][1], views["merged"][1], atol=1e-6)  # same attack as on the merged model
    assert not torch.allclose(views["lora"][0], views["plain"][0], atol=1e-3)
    assert not torch.equal(views["lora"][1], views["plain"][1])


def test_base_clip_and_unadapted_copy():
    model, _ = lora_student()
    randomize_adapters(model)
    base = base_model(model)
    assert type(base) is CLIPModel and base is model.get_base_model()
    copy = unadapted_copy(model)
    assert type(copy) is CLIPModel and not [n for n, _ in copy.named_modules() if "lora" in n]
    plain, _ = build_tiny_clip(**STUDENT_KW)
    for key, value in plain.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value), key
    assert [n for n, _ in model.named_modules() if "lora" in n]  # the student itself keeps its adapters


def test_save_resume_and_merge(make_lora_trainer, output_dir, tmp_path, batch):
    full = make_lora_trainer(max_steps=4, learning_rate=1e-2, save_strategy="steps", save_steps=2)
    full.train()
    checkpoint = os.path.join(output_dir, "checkpoint-2")
    files = set(os.listdir(checkpoint))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert "model.safetensors" not in files and not [f for f in files if f.endswith(".bin")]

    # exact resume of a LoRA student (adapter dropout draws from the restored RNG)
    resumed = make_lora_trainer(max_steps=4, learning_rate=1e-2, output_dir=str(tmp_path / "resumed"))
    resumed.train(resume_from_checkpoint=checkpoint)
    diff = max(
        float((a.detach() - b.detach()).abs().max())
        for (_, a), (_, b) in zip(full.model.named_parameters(), resumed.model.named_parameters())
    )
    assert diff <= 1e-6

    # load_student_weights restores the adapter into a fresh LoRA student
    fresh, _ = lora_student()
    load_student_weights(fresh, checkpoint)
    saved = {n: p for n, p in fresh.named_parameters() if ".lora_" in n}
    assert saved and all(torch.isfinite(p).all() for p in saved.values())

    # the final adapter merges into a plain CLIPModel with the same image features
    full.save_model(str(tmp_path / "final"))
    base, processor = build_tiny_clip(**STUDENT_KW)
    merge_checkpoint(base, str(tmp_path / "final"), str(tmp_path / "merged"), processor=processor)
    merged = CLIPModel.from_pretrained(str(tmp_path / "merged")).eval()
    assert os.path.isfile(tmp_path / "merged" / "model.safetensors")
    student = full.model.student.eval()
    pixels = student.preprocess(batch["pixel_values"])
    with torch.no_grad():
        expected = student.clip.get_image_features(pixel_values=pixels)
        got = merged.get_image_features(pixel_values=pixels)
    expected = getattr(expected, "pooler_output", expected)
    got = getattr(got, "pooler_output", got)
    assert torch.allclose(expected, got, atol=1e-5)
    assert adapter_parameter_names(full.model.student.clip)  # merging did not strip the live student


def test_lora_argument_errors():
    clip, _ = build_tiny_clip(**STUDENT_KW)
    for kwargs, field in (
        (dict(r=0), "`r`"),
        (dict(alpha=-1), "`alpha`"),
        (dict(dropout=1.5), "`dropout`"),
        (dict(tower="audio"), "`tower`"),
        (dict(target_modules=[3]), "`target_modules`"),
    ):
        with pytest.raises(ValueError, match=field):
            apply_lora(clip, **kwargs)
    with pytest.raises(TypeError, match="not a peft model"):
        merge_and_save(clip)


def test_adapter_checkpoint_into_plain_model_is_a_clear_error(tmp_path):
    model, _ = lora_student()
    model.save_pretrained(str(tmp_path))
    plain, _ = build_tiny_clip(**STUDENT_KW)
    with pytest.raises(ValueError, match="LoRA adapter.*apply_lora"):
        load_student_weights(plain, str(tmp_path))
