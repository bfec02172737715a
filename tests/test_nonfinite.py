"""Non-finite losses: the update is skipped (parameters, optimizer and weighting state untouched), counted and
logged; after `max_bad_steps` consecutive bad steps the run stops and the last checkpoint stays loadable."""

import os

import pytest
import torch
from transformers import TrainerCallback

from mmt_ard.embedded.tiny import build_tiny_clip
from mmt_ard.models import ZeroShotOutput
from mmt_ard.training.nonfinite import NonFiniteLossError
from mmt_ard.training.trainer import load_student_weights

NAN = float("nan")


def poison_teachers(trainer, bad_steps):
    """Make every teacher output NaN during the given (1-based) optimizer steps of training."""
    forward = trainer._teacher_forward

    def poisoned(index, pixels):
        out = forward(index, pixels)
        if trainer.model.training and trainer.state.global_step + 1 in bad_steps:
            return ZeroShotOutput(logits=out.logits * NAN, image_embeds=out.image_embeds * NAN)
        return out

    trainer._teacher_forward = poisoned


class Snapshots(TrainerCallback):
    """Parameters, AdamW state and weighting state after each optimizer step."""

    def __init__(self, trainer):
        self.trainer, self.after = trainer, {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        opt_state = {
            i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
            for i, s in enumerate(optimizer.state.values())
        }
        params = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
        self.after[state.global_step] = (params, opt_state, self.trainer.weighting.state_dict())


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same(a[key], b[key])
        elif torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("accumulation", [1, 2])
def test_nan_step_is_skipped_without_side_effects(make_trainer, accumulation):
    trainer = make_trainer(
        "mmt-ard-sigmoid",
        max_steps=3,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-3,
        per_device_train_batch_size=4 if accumulation == 2 else 8,
    )
    snaps = Snapshots(trainer)
    trainer.add_callback(snaps)
    if accumulation == 1:
        poison_teachers(trainer, {2})
    else:  # only the second micro-batch of step 2 is bad: the whole window (both micro-batches) is dropped
        calls = {"n": 0}
        forward = trainer._teacher_forward

        def second_micro_batch_bad(index, pixels):
            out = forward(index, pixels)
            if trainer.model.training and trainer.state.global_step + 1 == 2:
                calls["n"] += 1
                if calls["n"] > len(trainer.teacher_specs):  # past the first micro-batch's teacher calls
                    return ZeroShotOutput(logits=out.logits * NAN, image_embeds=out.image_embeds * NAN)
            return out

        trainer._teacher_forward = second_micro_batch_bad
    trainer.train()

    params1, opt1, weighting1 = snaps.after[1]
    params2, opt2, weighting2 = snaps.after[2]
    assert_same(params1, params2)  # no parameter moved: not even AdamW's weight decay
    assert_same(opt1, opt2)  # moments and step counts untouched
    assert weighting1 == weighting2  # the NaN confidences did not reach the sigmoid EMA
    assert all(torch.isfinite(torch.tensor(v)).all() for v in weighting2["mean"])
    params3 = snaps.after[3][0]
    assert any(not torch.equal(params2[k], params3[k]) for k in params2)  # training went on
    assert trainer._nonfinite_steps == 1 and trainer._bad_steps == 0
    logged = [h["nonfinite_steps"] for h in trainer.state.log_history if "nonfinite_steps" in h]
    assert logged == [0, 1, 1]


def test_nonfinite_gradient_with_finite_loss_is_skipped(make_trainer):
    trainer = make_trainer("tecoa", max_steps=2, learning_rate=1e-3)
    snaps = Snapshots(trainer)
    trainer.add_callback(snaps)
    param = trainer.model.student.base.vision_model.post_layernorm.weight

    def nan_grad_at_step_2(grad):
        return grad * NAN if trainer.state.global_step + 1 == 2 else grad

    param.register_hook(nan_grad_at_step_2)
    trainer.train()
    assert_same(snaps.after[1][0], snaps.after[2][0])
    assert trainer._nonfinite_steps == 1


def test_consecutive_nan_steps_stop_the_run_with_a_loadable_checkpoint(make_trainer, output_dir, student):
    trainer = make_trainer(
        "mmt-ard-sigmoid", max_steps=8, max_bad_steps=2, save_strategy="steps", save_steps=2, learning_rate=1e-3
    )
    poison_teachers(trainer, set(range(3, 9)))
    with pytest.raises(NonFiniteLossError, match=r"2 consecutive optimizer steps \(up to step 4\).*checkpoint-2"):
        trainer.train()
    assert sorted(os.listdir(output_dir)) == ["checkpoint-2"]

    checkpoint = os.path.join(output_dir, "checkpoint-2")
    fresh, _ = build_tiny_clip(hidden=32, image_size=16, seed=5)
    load_student_weights(fresh, checkpoint)
    current = trainer.model.student.base.state_dict()
    for key, value in fresh.state_dict().items():  # the checkpoint is finite and equals the (unchanged) model
        assert torch.isfinite(value).all() and torch.equal(value, current[key]), key

    resumed = make_trainer("mmt-ard-sigmoid", max_steps=3, learning_rate=1e-3)
    resumed.train(resume_from_checkpoint=checkpoint)  # the run can go on from it
    assert resumed.state.global_step == 3 and resumed._nonfinite_steps == 0
