"""SigLIP everywhere CLIP goes: as student (full and LoRA) and teacher, across families, under every preset; saving
(a `SiglipModel` + processor that `AutoModel` loads), exact resume, the model card."""

from __future__ import annotations

import pytest
import torch
from _families import build
from conftest import CLEAN_KW, PRESET_ROLES, ROBUST_KW, clone_state

from mmt_ard import MMTARDTrainer, Teacher
from mmt_ard.embedded.tiny import build_tiny_clip
from mmt_ard.models import family_of
from mmt_ard.training.lora import apply_lora


def _teachers(kind: str, roles) -> list[Teacher]:
    """Teachers of the roles, CLIP (conftest's: 20 px / 12 px, 40-d / 44-d) or SigLIP 2 (NaFlex, 24 px, 48 wide)."""
    out = []
    for i, role in enumerate(roles):
        if kind == "clip":
            model, processor = build_tiny_clip(**{"robust": ROBUST_KW, "clean": CLEAN_KW}[role])
        else:
            model, processor = build("siglip2-naflex" if role == "robust" else "siglip", seed=10 + i, hidden=48)
        out.append(Teacher(model, role=role, processor=processor))
    return out


def _trainer(make_config, digits_small, student, preset="mmt-ard", teachers="clip", **overrides):
    model, processor = student
    return MMTARDTrainer(
        model=model,
        args=make_config(preset=preset, **overrides),
        teachers=_teachers(teachers, PRESET_ROLES[preset]),
        processing_class=processor,
        train_dataset=digits_small,
    )


def _vision_changed(before: dict, model: torch.nn.Module) -> tuple[bool, bool]:
    """(any vision parameter changed, any text-side parameter changed)."""
    family, _ = family_of(model)
    vision = text = False
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p.detach())
        if family.is_vision_parameter(name):
            vision |= changed
        else:
            text |= changed
    return vision, text


@pytest.mark.parametrize("preset", list(PRESET_ROLES))
def test_every_preset_trains_a_siglip_student_from_clip_teachers(preset, make_config, digits_small):
    student = build("siglip")
    before = clone_state(student[0])
    trainer = _trainer(make_config, digits_small, student, preset=preset, feature_weight=0.5)
    trainer.train()
    vision, text = _vision_changed(before, student[0])
    assert vision and not text  # the vision tower trained; text tower, logit scale and bias stayed frozen
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def test_clip_student_from_siglip_teachers_with_feature_terms(make_config, digits_small):
    """Other image sizes (24 px NaFlex, 16 px), statistics and embedding sizes (48 vs 32): projection heads."""
    student = build_tiny_clip(hidden=32, image_size=16, seed=0)
    before = clone_state(student[0])
    trainer = _trainer(make_config, digits_small, student, teachers="siglip", feature_weight=0.5)
    bundle = trainer.model
    assert set(bundle.projections) == {"robust", "clean"}
    assert [m.family.name for m in trainer.teacher_modules] == ["siglip2", "siglip"]
    trainer.train()
    vision, text = _vision_changed(before, student[0])
    assert vision and not text
    logged = {k for h in trainer.state.log_history for k in h}
    assert {"feat_robust_loss", "feat_clean_loss"} <= logged


def test_siglip_student_with_siglip_teachers_and_lora(make_config, digits_small):
    model, processor = build("siglip2")
    lora = apply_lora(model, r=4, alpha=4, dropout=0.0)
    before = {n: p.detach().clone() for n, p in lora.named_parameters()}
    trainer = _trainer(make_config, digits_small, (lora, processor), teachers="siglip")
    trainer.train()
    changed = {n for n, p in lora.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all(".lora_" in n for n in changed)
    assert any("vision_model.encoder.layers" in n for n in changed)


def test_siglip_student_saves_as_siglip_and_resumes_exactly(make_config, digits_small, tmp_path):
    from transformers import AutoModel, AutoProcessor, SiglipModel, TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    def run(output_dir, resume=None, stop=False):
        student = build("siglip")
        trainer = _trainer(
            make_config,
            digits_small,
            student,
            preset="mmt-ard-sigmoid",
            output_dir=str(output_dir),
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
        )
        if stop:
            trainer.add_callback(StopAt())
        trainer.train(resume_from_checkpoint=resume)
        return trainer, student[0]

    reference, ref_model = run(tmp_path / "ref")
    _, interrupted = run(tmp_path / "cut", stop=True)
    resumed_trainer, resumed = run(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-2"))
    diff = max((a - b).abs().max().item() for a, b in zip(ref_model.parameters(), resumed.parameters()))
    assert diff == 0.0
    assert any((a - b).abs().max().item() > 0 for a, b in zip(ref_model.parameters(), interrupted.parameters()))

    out = tmp_path / "final"
    resumed_trainer.save_model(str(out))
    loaded = AutoModel.from_pretrained(out)
    assert type(loaded) is SiglipModel
    assert type(AutoProcessor.from_pretrained(out)).__name__ == "SiglipProcessor"
    for a, b in zip(loaded.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_model_card_names_the_family_and_base_checkpoint():
    from mmt_ard.training.model_card import render_model_card

    card = render_model_card(
        {
            "base_model": "google/siglip-base-patch16-224",
            "base_model_id": "google/siglip-base-patch16-224",
            "model_family": {"name": "siglip", "title": "SigLIP", "class": "SiglipModel"},
            "preset": "mmt-ard",
        }
    )
    assert "base_model: google/siglip-base-patch16-224" in card
    assert "**Model family:** SigLIP (`SiglipModel`)" in card
    assert "AutoModel.from_pretrained" in card and "CLIPModel" not in card
    assert "- siglip" in card.split("---")[1]  # a tag in the front-matter


@pytest.mark.slow
def test_siglip_student_under_fsdp_on_two_processes(tmp_path):
    """The shipped fsdp.yaml names no layer class: the trainer wraps the SigLIP student's own encoder layers."""
    import json
    import os

    from _launch import REPO, launch_two_processes
    from transformers import SiglipModel

    out = tmp_path / "fsdp"
    result = launch_two_processes(
        29671,
        os.path.join(REPO, "tests", "fsdp_family_helper.py"),
        str(out),
        config_file=os.path.join(REPO, "examples", "accelerate_configs", "fsdp.yaml"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["setup"] == "FSDP2, 2 processes"
    assert report["wrapped"] == ["SiglipEncoderLayer"]
    assert len(report["losses"]) == 2 and all(loss == loss for loss in report["losses"])
    saved = SiglipModel.from_pretrained(out / "final")
    initial = build("siglip")[0]
    assert any(
        not torch.equal(a, b) for a, b in zip(saved.vision_model.parameters(), initial.vision_model.parameters())
    )
    assert all(torch.equal(a, b) for a, b in zip(saved.text_model.parameters(), initial.text_model.parameters()))


def test_fsdp_layer_class_of_another_family_is_named():
    from accelerate.utils import FullyShardedDataParallelPlugin

    from mmt_ard.runtime.distributed import wrap_student_layers

    model = build("siglip")[0]
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["CLIPEncoderLayer"]
    )
    with pytest.raises(ValueError, match=r"CLIPEncoderLayer.*SigLIP student.*SiglipEncoderLayer"):
        wrap_student_layers(plugin, model, ("SiglipEncoderLayer",), "SigLIP")
    plugin.transformer_cls_names_to_wrap = None
    assert wrap_student_layers(plugin, model, ("SiglipEncoderLayer",), "SigLIP") == ["SiglipEncoderLayer"]
