"""Out-of-memory errors: `auto_find_batch_size` halves the batch and retries as a run started at the half batch would
have trained; otherwise the error names what helps and the checkpoints on disk stay intact.

The error is simulated: a forward pre-hook on the student raises `torch.OutOfMemoryError` (with CUDA's wording) when
the training forward sees more images than a limit. The training forward comes after the attack, whose random start
has already drawn from the RNG, so a retry that did not restore the RNG would train differently.
"""

import os

import pytest
import torch
from accelerate.utils.memory import should_reduce_batch_size
from conftest import clone_state

from mmt_ard import memory
from mmt_ard.training.checkpointing import is_complete_checkpoint
from mmt_ard.training.memory import TrainingOutOfMemoryError, format_memory_report, out_of_memory_message

OOM_TEXT = "CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"


def fail_above(trainer, max_images: int | None = None, from_step: int = 0):
    """Make the student's training forward raise an out-of-memory error above `max_images` images (None: always),
    from optimizer step `from_step + 1` on."""

    def hook(module, args, kwargs):
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        too_big = max_images is None or pixels.shape[0] > max_images
        if module.training and too_big and trainer.state.global_step >= from_step:
            raise torch.OutOfMemoryError(OOM_TEXT)

    return trainer.model.register_forward_pre_hook(hook, with_kwargs=True)


def record_items(trainer) -> list:
    """Record `num_items_in_batch` (the gradient normaliser) of every training micro-batch."""
    seen, inner = [], trainer.compute_loss

    def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            seen.append(int(num_items_in_batch))
        return inner(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    trainer.compute_loss = compute_loss
    return seen


# mmt-ard: the student's training forward sees clean + adversarial images, 2 x the batch
RUN = {"max_steps": 3, "learning_rate": 1e-3, "gradient_accumulation_steps": 2}


def test_auto_find_batch_size_retries_at_half_with_the_same_update(fresh_trainer, output_dir):
    """Batch 8 runs out of memory; the retry at 4 ends exactly where a run started at 4 ends."""
    reference = fresh_trainer("mmt-ard", per_device_train_batch_size=4, **RUN)
    reference_items = record_items(reference)
    reference.train()

    trainer = fresh_trainer("mmt-ard", per_device_train_batch_size=8, auto_find_batch_size=True, **RUN)
    hook = fail_above(trainer, max_images=2 * 4)
    items = record_items(trainer)
    trainer.train()
    hook.remove()

    assert trainer._batch_search.tried == [8, 4]
    assert trainer._train_batch_size == 4 and trainer.state.train_batch_size == 4
    assert items[1:] == reference_items == [8] * 6  # 4 images x 2 accumulation steps normalise every micro-batch
    assert items[0] == 16  # the failed attempt's first micro-batch (8 x 2)
    a, b = clone_state(trainer.model), clone_state(reference.model)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff == 0.0, diff
    assert trainer.weighting.state_dict() == reference.weighting.state_dict()
    assert trainer.model.student.clip is not reference.model.student.clip
    assert [r.get("loss") for r in trainer.state.log_history] == [r.get("loss") for r in reference.state.log_history]


def test_the_retry_depends_on_restoring_the_rng(fresh_trainer, monkeypatch):
    """Control: without putting the RNG back, the retry trains differently (the exactness above is not vacuous)."""
    reference = fresh_trainer("mmt-ard", per_device_train_batch_size=4, **RUN)
    reference.train()
    monkeypatch.setattr(memory, "_set_rng_state", lambda state: None)
    trainer = fresh_trainer("mmt-ard", per_device_train_batch_size=8, auto_find_batch_size=True, **RUN)
    fail_above(trainer, max_images=2 * 4)
    trainer.train()
    a, b = clone_state(trainer.model), clone_state(reference.model)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 1e-6


def test_out_of_memory_names_the_fixes_and_keeps_the_checkpoint(fresh_trainer, output_dir):
    trainer = fresh_trainer("tecoa", max_steps=4, save_strategy="steps", save_steps=2, learning_rate=1e-3)
    fail_above(trainer, from_step=2)  # step 3 runs out of memory
    with pytest.raises(TrainingOutOfMemoryError) as info:
        trainer.train()
    err = info.value
    message = str(err)
    assert isinstance(err, torch.OutOfMemoryError) and isinstance(err.__cause__, torch.OutOfMemoryError)
    assert not should_reduce_batch_size(err)  # never mistaken for a retryable error by accelerate's search
    for option in (
        "`teacher_dtype='bf16'`",
        "`activation_checkpointing=True`",
        "`per_device_train_batch_size=4`",
        "`gradient_accumulation_steps=2`",
        "`auto_find_batch_size=True`",
    ):
        assert option in message, option
    ckpt = os.path.join(output_dir, "checkpoint-2")
    assert "per-device train batch 8 in step 3" in message and repr(ckpt) in message
    assert sorted(os.listdir(output_dir)) == ["checkpoint-2"] and is_complete_checkpoint(ckpt)

    resumed = fresh_trainer("tecoa", max_steps=4, save_strategy="steps", save_steps=2, learning_rate=1e-3)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4


def test_auto_find_batch_size_does_not_restart_after_an_update(fresh_trainer, output_dir):
    trainer = fresh_trainer("tecoa", max_steps=4, auto_find_batch_size=True, save_strategy="steps", save_steps=2)
    fail_above(trainer, from_step=2)
    with pytest.raises(TrainingOutOfMemoryError, match="retries only before the first update") as info:
        trainer.train()
    assert trainer._batch_search.tried == [8]
    assert "checkpoint-2" in str(info.value) and is_complete_checkpoint(os.path.join(output_dir, "checkpoint-2"))


def test_auto_find_batch_size_gives_up_at_batch_one(fresh_trainer):
    trainer = fresh_trainer("tecoa", auto_find_batch_size=True)
    fail_above(trainer)  # every batch size runs out of memory
    with pytest.raises(TrainingOutOfMemoryError, match=r"tried per-device batches \[8, 4, 2, 1\]") as info:
        trainer.train()
    assert "No checkpoint had been written yet" in str(info.value)
    assert "`auto_find_batch_size=True`" not in str(info.value)  # already on: not suggested again


def test_other_errors_pass_through(fresh_trainer):
    trainer = fresh_trainer("tecoa", auto_find_batch_size=True)

    def hook(module, args):
        raise RuntimeError("something else")

    trainer.model.register_forward_pre_hook(hook)
    with pytest.raises(RuntimeError, match="something else") as info:
        trainer.train()
    assert not isinstance(info.value, TrainingOutOfMemoryError)
    assert trainer._batch_search.tried == [8]


def test_out_of_memory_message_suggests_concrete_numbers(make_config):
    args = make_config(gradient_accumulation_steps=3, teacher_dtype="bf16")
    message = out_of_memory_message(args, batch_size=64, step=1, last_checkpoint=None)
    assert "`per_device_train_batch_size=32`, `gradient_accumulation_steps=6` keeps 192 images" in message
    assert "(now 'bf16')" in message and " out of memory." not in message


def test_format_memory_report():
    line = format_memory_report(32, 2, 4, int(31.5 * 2**30), 80 * 2**30, "cuda:0")
    assert line == (
        "MMT-ARD: per-device train batch 32 (x 2 accumulation steps x 4 processes = 256 images per update); peak "
        "memory of the first step 31.50 GiB of 80.00 GiB (39 %) on cuda:0."
    )


def test_memory_report_only_on_cuda(fresh_trainer, capsys):
    trainer = fresh_trainer("tecoa", max_steps=1)
    trainer.train()
    assert "peak memory" not in capsys.readouterr().out  # CPU: nothing to report
