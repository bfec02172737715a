"""Memory options: bf16/fp16 teachers, activation checkpointing of the student with the attack in the loop, and the
per-sample cache of clean-teacher outputs. Each leaves the loss unchanged (or within bf16/fp16 tolerance)."""

import os

import pytest
import torch
from conftest import STUDENT_KW

from mmt_ard import MMTARDTrainer
from mmt_ard.embedded.tiny import build_tiny_clip
from mmt_ard.training.teacher_cache import TeacherOutputCache, add_sample_ids

ATOL_CACHE = 1e-5  # cached embeddings are bit-identical; only the batch composition of later epochs differs


def step_loss_and_grads(trainer, batch, seed=0):
    """One training-mode loss (attack included) and the student's gradients, from a fixed RNG state."""
    model = trainer.model
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.detach(), grads


# ---- teachers in bf16 / fp16 ----
@pytest.mark.parametrize("dtype,rtol", [("bf16", 3e-2), ("fp16", 5e-3)])
def test_low_precision_teachers_match_fp32(fresh_trainer, batch, dtype, rtol):
    reference, _ = step_loss_and_grads(fresh_trainer("mmt-ard", feature_weight=0.5), batch)
    trainer = fresh_trainer("mmt-ard", feature_weight=0.5, teacher_dtype=dtype)
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    assert all(next(m.clip.parameters()).dtype == expected for m in trainer.teacher_modules)
    loss, _ = step_loss_and_grads(trainer, batch)
    print(f"{dtype} teachers: loss {loss:.6f} vs fp32 {reference:.6f}")
    assert torch.isfinite(loss) and torch.allclose(loss, reference, rtol=rtol)


# ---- activation checkpointing ----
def test_activation_checkpointing_same_loss_and_gradients(fresh_trainer, batch):
    plain = fresh_trainer("mmt-ard-sigmoid", feature_weight=0.5)
    loss_ref, grads_ref = step_loss_and_grads(plain, batch)

    trainer = fresh_trainer("mmt-ard-sigmoid", feature_weight=0.5)
    trainer.model.activation_checkpointing_enable()
    layer = trainer.model.student.base.vision_model.encoder.layers[0]
    assert layer.gradient_checkpointing
    calls = []
    # a module inside the checkpointed region: its hooks also fire when the backward pass recomputes the layer
    hook = layer.self_attn.register_forward_pre_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    loss, grads = step_loss_and_grads(trainer, batch)
    hook.remove()
    # 2 attack steps + 1 training forward + 1 recomputation in the backward pass (so checkpointing really ran)
    assert len(calls) == trainer.args.attack_steps + 2
    assert torch.allclose(loss, loss_ref, atol=1e-6)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        assert torch.allclose(grads[name], grads_ref[name], atol=1e-6, rtol=1e-5), name


def test_gradient_checkpointing_flag_reaches_the_student_in_train(fresh_trainer):
    trainer = fresh_trainer("mmt-ard", gradient_checkpointing=True, max_steps=1)
    trainer.train()
    assert trainer.args.activation_checkpointing
    assert all(layer.gradient_checkpointing for layer in trainer.model.student.base.vision_model.encoder.layers)


def test_activation_checkpointing_with_lora_student(make_config, teacher_specs, digits_small, batch):
    from mmt_ard.training.lora import apply_lora

    def lora_trainer():
        clip, processor = build_tiny_clip(**STUDENT_KW)
        model = apply_lora(clip, r=4, alpha=8, dropout=0.0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if ".lora_B." in name:
                    p.fill_(0.01)  # non-zero, so that lora_A gets a gradient too
        return MMTARDTrainer(
            model=model, args=make_config(preset="fare"), processing_class=processor, train_dataset=digits_small
        )

    loss_ref, grads_ref = step_loss_and_grads(lora_trainer(), batch)
    trainer = lora_trainer()
    trainer.model.activation_checkpointing_enable()
    loss, grads = step_loss_and_grads(trainer, batch)
    assert grads and all(".lora_" in n for n in grads)
    assert grads.keys() == grads_ref.keys()  # frozen patch embeddings do not cut the adapters off (non-reentrant)
    assert torch.allclose(loss, loss_ref, atol=1e-6)
    for name in grads:
        assert torch.allclose(grads[name], grads_ref[name], atol=1e-6, rtol=1e-5), name


# ---- cached clean-teacher outputs ----
@pytest.fixture(scope="module")
def rows_with_ids(digits_train):
    return add_sample_ids(digits_train.select(range(16)))


def final_params(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_teacher_cache_same_training(fresh_trainer, rows_with_ids, accumulation):
    """Two epochs (the second one served from the cache) end where the uncached run ends."""
    kw = dict(
        max_steps=4,
        learning_rate=1e-3,
        gradient_accumulation_steps=accumulation,
        per_device_train_batch_size=8 // accumulation,
        train_dataset=rows_with_ids,
        feature_weight=0.5,
    )
    plain = fresh_trainer("mmt-ard", **kw)
    plain.train()
    cached = fresh_trainer("mmt-ard", cache_teacher_outputs=True, **kw)
    cached.train()
    diff = max_diff(final_params(cached), final_params(plain))
    print(f"teacher cache, accumulation {accumulation}: max |w_cached - w_plain| = {diff:.3g}")
    assert diff <= ATOL_CACHE
    cache = cached._teacher_cache
    assert len(cache) == 16  # the clean teacher only: the robust one sees adversarial images
    assert cache.misses == 16 and cache.hits == 16  # epoch 1 fills it, epoch 2 reads it


def test_teacher_cache_survives_resume(fresh_trainer, rows_with_ids, output_dir, tmp_path):
    kw = dict(max_steps=4, learning_rate=1e-3, train_dataset=rows_with_ids, cache_teacher_outputs=True)
    full = fresh_trainer("fare", save_strategy="steps", save_steps=3, **kw)  # `original` teacher: clean input
    full.train()
    resumed = fresh_trainer("fare", output_dir=str(tmp_path / "resumed"), **kw)
    resumed.train(resume_from_checkpoint=os.path.join(output_dir, "checkpoint-3"))  # cache empty, refilled
    assert resumed._teacher_cache.misses == 8
    diff = max_diff(final_params(resumed), final_params(full))
    print(f"teacher cache across a resume: max |w_resumed - w_full| = {diff:.3g}")
    assert diff <= ATOL_CACHE


def test_teacher_cache_needs_sample_ids(fresh_trainer, batch):
    trainer = fresh_trainer("mmt-ard", cache_teacher_outputs=True)
    trainer.model.train()
    with pytest.raises(ValueError, match="sample_id"):
        trainer.compute_loss(trainer.model, dict(batch))
    with pytest.raises(ValueError, match="`sample_id` has 3 entries for 8 images"):
        trainer.compute_loss(trainer.model, {**batch, "sample_id": torch.arange(3)})
    with pytest.raises(TypeError, match="sample_id"):
        trainer.compute_loss(trainer.model, {**batch, "sample_id": torch.rand(8)})


def test_teacher_cache_rejects_changed_pixels(fresh_trainer, batch):
    """Random augmentation (or two images sharing an id) is caught, not silently distilled from stale outputs."""
    trainer = fresh_trainer("mmt-ard", cache_teacher_outputs=True)
    trainer.model.train()
    ids = torch.arange(8)
    trainer.compute_loss(trainer.model, {**batch, "sample_id": ids})
    trainer.compute_loss(trainer.model, {**batch, "sample_id": ids})  # same pixels: fine
    flipped = {**batch, "pixel_values": batch["pixel_values"].flip(-1), "sample_id": ids}
    with pytest.raises(ValueError, match="other pixels than when its teacher outputs were cached"):
        trainer.compute_loss(trainer.model, flipped)


def test_cache_stores_low_precision_teachers_losslessly(fresh_trainer, batch):
    trainer = fresh_trainer("mmt-ard", teacher_dtype="bf16")
    index = [s.role for s in trainer.teacher_specs].index("clean")
    module = trainer.teacher_modules[index]
    cache, ids = TeacherOutputCache(), list(range(8))

    def forward(px):
        return trainer._teacher_forward(index, px)

    first = cache.outputs("clean", module, batch["pixel_values"], ids, forward)
    again = cache.outputs("clean", module, batch["pixel_values"], ids, forward)
    assert cache.nbytes == 8 * module.embed_dim * 2  # stored in bf16
    assert torch.equal(first.image_embeds, again.image_embeds)
    assert torch.allclose(first.logits, again.logits, atol=1e-5)


def test_cache_lives_on_the_device_of_the_images(fresh_trainer, batch):
    """`device=None` (what the trainer uses) keeps embeddings where the teacher's images are; "cpu" in host memory."""
    trainer = fresh_trainer("mmt-ard")
    module = trainer.teacher_modules[1]
    forward = trainer._teacher_forward
    for device, expected in ((None, batch["pixel_values"].device), ("cpu", torch.device("cpu"))):
        cache = TeacherOutputCache(device=device)
        cache.outputs("clean", module, batch["pixel_values"], list(range(8)), lambda px: forward(1, px))
        assert {t.device for t in cache._embeds["clean"].values()} == {expected}
    assert trainer._teacher_cache is None
    assert fresh_trainer("mmt-ard", cache_teacher_outputs=True)._teacher_cache.device is None
