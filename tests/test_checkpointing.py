"""Safe checkpoints: staged writes published by an atomic rename, rotation that keeps the last good checkpoint, and
no unpickling of anything but the Trainer's own torch files (with `weights_only=True`)."""

import os

import pytest
import torch
from transformers.trainer_utils import get_last_checkpoint

from mmt_ard.training.checkpointing import last_good_checkpoint, remove_stale_staging, rotate_checkpoints_safely


class CrashDuringSave(RuntimeError):
    pass


def _crashing(fn, step_of, crash_step):
    def wrapped(*args, **kwargs):
        if step_of() == crash_step:
            raise CrashDuringSave(f"simulated crash while saving step {crash_step}")
        return fn(*args, **kwargs)

    return wrapped


@pytest.fixture
def ckpt_trainer(make_trainer):
    def make(**overrides):
        kwargs = dict(max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=1, attack_steps=1)
        kwargs.update(overrides)
        return make_trainer("tecoa", **kwargs)

    return make


def test_crash_during_save_leaves_previous_checkpoint_for_resume(ckpt_trainer, output_dir):
    trainer = ckpt_trainer()
    # the model is written, then the optimizer, then the RNG state fails: a half-written checkpoint-4
    trainer._save_rng_state = _crashing(trainer._save_rng_state, lambda: trainer.state.global_step, 4)
    with pytest.raises(CrashDuringSave):
        trainer.train()

    names = sorted(os.listdir(output_dir))
    assert names == ["checkpoint-2", "tmp-checkpoint-4"]  # save_total_limit=1 did not delete the good one
    staged = os.path.join(output_dir, "tmp-checkpoint-4", "checkpoint-4")
    assert os.path.isfile(os.path.join(staged, "model.safetensors"))  # it really was half written
    assert not os.path.isfile(os.path.join(staged, "trainer_state.json"))
    good = os.path.join(output_dir, "checkpoint-2")
    assert get_last_checkpoint(output_dir) == good  # transformers' own lookup ignores the staging folder
    assert last_good_checkpoint(output_dir) == good

    resumed = ckpt_trainer()
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    assert sorted(os.listdir(output_dir)) == ["checkpoint-4"]  # staging cleared, rotation after publishing


def test_crash_writing_the_optimizer_keeps_checkpoints(ckpt_trainer, output_dir):
    trainer = ckpt_trainer(save_total_limit=2)
    trainer._save_optimizer_and_scheduler = _crashing(
        trainer._save_optimizer_and_scheduler, lambda: trainer.state.global_step, 4
    )
    with pytest.raises(CrashDuringSave):
        trainer.train()
    assert last_good_checkpoint(output_dir) == os.path.join(output_dir, "checkpoint-2")
    assert remove_stale_staging(output_dir) == [os.path.join(output_dir, "tmp-checkpoint-4")]
    assert sorted(os.listdir(output_dir)) == ["checkpoint-2"]


def test_incomplete_foreign_checkpoint_is_skipped(tmp_path):
    for step, files in ((2, ("trainer_state.json", "model.safetensors")), (5, ("config.json",))):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
    assert last_good_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert last_good_checkpoint(str(tmp_path / "missing")) is None


def test_rotation_keeps_newest_and_best(tmp_path):
    for step in (1, 2, 3, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    deleted = rotate_checkpoints_safely(str(tmp_path), 2, [str(tmp_path / "checkpoint-1")], use_mtime=False)
    assert sorted(os.path.basename(p) for p in deleted) == ["checkpoint-2", "checkpoint-3"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1", "checkpoint-4"]


def test_resume_true_without_checkpoint_is_a_clear_error(ckpt_trainer):
    with pytest.raises(ValueError, match="no complete checkpoint"):
        ckpt_trainer().train(resume_from_checkpoint=True)


def test_resume_loads_torch_files_with_weights_only(ckpt_trainer, output_dir, monkeypatch):
    """Checkpoints hold no pickled arguments, and the Trainer reads its own torch files with `weights_only=True`."""
    ckpt_trainer(max_steps=2).train()
    ckpt = os.path.join(output_dir, "checkpoint-2")
    files = set(os.listdir(ckpt))
    assert "training_args.bin" not in files and "mmt_ard_config.json" in files
    assert not [f for f in files if f.endswith(".bin")]

    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append((os.path.basename(str(args[0])), kwargs.get("weights_only")))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    ckpt_trainer(max_steps=3).train(resume_from_checkpoint=ckpt)
    assert {name for name, _ in calls} == {"optimizer.pt", "scheduler.pt", "rng_state.pth"}
    assert all(weights_only is True for _, weights_only in calls), calls


def test_best_checkpoint_path_is_the_published_one(ckpt_trainer, output_dir):
    """The best checkpoint is recorded under its final name (not the staging one) and survives rotation."""
    trainer = ckpt_trainer(
        eval_strategy="steps", eval_steps=2, metric_for_best_model="clean_accuracy", load_best_model_at_end=True
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and "tmp-" not in best and os.path.isdir(best)
    assert os.path.dirname(best) == output_dir and last_good_checkpoint(output_dir) is not None
    import json

    with open(os.path.join(last_good_checkpoint(output_dir), "trainer_state.json")) as f:
        recorded = json.load(f)["best_model_checkpoint"]
    assert recorded is None or "tmp-" not in recorded
