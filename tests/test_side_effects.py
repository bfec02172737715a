"""Objects handed to `MMTARDTrainer` stay as they were: teacher models keep their dtype, device, weights, mode and
flags (the trainer runs a structural copy that shares unconverted storage); the student is the model being trained.
The one documented exception (a teacher already on the accelerator in another dtype is converted in place, with a
warning) is checked on the `meta` device, which stands in for an accelerator on a CPU machine."""

import logging

import pytest
import torch
from conftest import CLEAN_KW, ROBUST_KW, STUDENT_KW

from mmt_ard import MMTARDTrainer, Teacher
from mmt_ard.embedded.tiny import build_tiny_clip
from mmt_ard.training.teachers import build_teacher_module, placed_model


def snapshot(model: torch.nn.Module) -> dict:
    """Everything about a model the trainer could change: tensors (values, dtype, device), flags, modes."""
    return {
        "tensors": {n: t.detach().clone() for n, t in model.state_dict(keep_vars=True).items()},
        "dtypes": {n: t.dtype for n, t in model.state_dict().items()},
        "devices": {n: t.device for n, t in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
    }


def assert_unchanged(model: torch.nn.Module, before: dict) -> None:
    after = snapshot(model)
    for key in ("dtypes", "devices", "requires_grad", "training"):
        assert after[key] == before[key], key
    assert all(torch.equal(after["tensors"][n], t) for n, t in before["tensors"].items())


@pytest.fixture
def models():
    student, processor = build_tiny_clip(**STUDENT_KW)
    robust, robust_proc = build_tiny_clip(**ROBUST_KW)
    clean, clean_proc = build_tiny_clip(**CLEAN_KW)
    robust.train()  # the caller's mode, which the trainer must not switch
    return student, processor, (robust, robust_proc), (clean, clean_proc)


def build(models, make_config, digits_small, **overrides):
    student, processor, robust, clean = models
    teachers = [
        Teacher(robust[0], role="robust", processor=robust[1]),
        Teacher(clean[0], role="clean", processor=clean[1]),
    ]
    return MMTARDTrainer(
        model=student,
        args=make_config(preset="mmt-ard", **overrides),
        teachers=teachers,
        processing_class=processor,
        train_dataset=digits_small,
    )


def test_bf16_teacher_dtype_leaves_the_callers_fp32_teachers_alone(models, make_config, digits_small):
    robust, clean = models[2][0], models[3][0]
    before = [snapshot(robust), snapshot(clean)]
    trainer = build(models, make_config, digits_small, teacher_dtype="bf16", max_steps=2)
    for module, caller in zip(trainer.teacher_modules, (robust, clean)):
        assert module.clip is not caller
        assert {p.dtype for p in module.clip.parameters()} == {torch.bfloat16}
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    trainer.train()
    assert_unchanged(robust, before[0])
    assert_unchanged(clean, before[1])
    assert robust.training and all(p.requires_grad for p in robust.parameters())  # still as the caller left it


def test_same_dtype_teachers_share_storage_and_keep_their_flags(models, make_config, digits_small):
    """No conversion needed: no copy of the weights either; only the trainer's module objects and flags are new."""
    robust = models[2][0]
    before = snapshot(robust)
    trainer = build(models, make_config, digits_small, max_steps=1)
    view = trainer.teacher_modules[0].clip
    for (name, p), q in zip(robust.named_parameters(), view.parameters()):
        assert p.data_ptr() == q.data_ptr(), name  # the same memory
        assert p is not q and p.requires_grad and not q.requires_grad
    trainer.train()
    assert_unchanged(robust, before)


def test_student_is_trained_in_place(models, make_config, digits_small):
    """The student is the one object the trainer changes (as any `Trainer` does): it is the model being trained."""
    student = models[0]
    before = {n: p.detach().clone() for n, p in student.vision_model.named_parameters()}
    trainer = build(models, make_config, digits_small, max_steps=2, learning_rate=1e-3)
    assert trainer.model.student.clip is student
    trainer.train()
    assert any(not torch.equal(p, before[n]) for n, p in student.vision_model.named_parameters())
    assert not any(p.requires_grad for p in student.text_model.parameters())  # frozen text tower (documented)


def test_device_move_is_a_copy(models, make_config):
    """A teacher placed on another device (here `meta`) runs there; the caller's model stays on the CPU."""
    robust, robust_proc = models[2]
    before = snapshot(robust)
    spec = Teacher(robust, role="robust", processor=robust_proc).resolved(make_config(teacher_dtype="bf16"))
    module = build_teacher_module(spec, 100.0, device="meta")
    assert {p.device.type for p in module.parameters()} == {"meta"} and module.mean.device.type == "meta"
    assert {p.dtype for p in module.clip.parameters()} == {torch.bfloat16}
    assert_unchanged(robust, before)


def test_in_place_conversion_on_the_accelerator_warns(models, caplog):
    """Already on the target accelerator in another dtype: converted in place (a copy would double it there)."""
    robust = models[2][0].to("meta")
    with caplog.at_level(logging.WARNING, logger="mmt_ard.training.teachers"):
        placed = placed_model(robust, torch.bfloat16, torch.device("meta"), "robust")
    assert "converted to torch.bfloat16 in place" in caplog.text
    assert {p.dtype for p in robust.parameters()} == {torch.bfloat16}  # the caller's object changed, as warned
    assert placed is not robust and {p.dtype for p in placed.parameters()} == {torch.bfloat16}


def test_no_warning_when_nothing_is_converted(models, caplog):
    robust = models[2][0]
    with caplog.at_level(logging.WARNING, logger="mmt_ard.training.teachers"):
        placed_model(robust, torch.float32, torch.device("cpu"), "robust")
        placed_model(robust, torch.bfloat16, torch.device("cpu"), "robust")  # host memory: a copy, no warning
    assert caplog.text == ""
