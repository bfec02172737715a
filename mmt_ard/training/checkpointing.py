"""Crash-safe checkpoints: staged writes, atomic renames, rotation that never loses the last good checkpoint.

How a checkpoint is written (`save_checkpoint_atomically`, called from `MMTARDTrainer._save_checkpoint`):

1. the Trainer's own `_save_checkpoint` writes everything (student safetensors, `mmt_ard_state.json`, projections,
   `optimizer.pt`, `scheduler.pt`, `rng_state.pth`, `trainer_state.json`) into the staging folder
   `<output_dir>/tmp-checkpoint-N/checkpoint-N`;
2. every file is flushed to disk (`fsync`), then processes wait for each other (`wait_for_everyone`);
3. the main process renames the staged folder to `<output_dir>/checkpoint-N` with `os.replace` (atomic on POSIX);
4. only then are old checkpoints rotated (`save_total_limit`), each deleted by first renaming it out of the
   `checkpoint-*` namespace, so a crash mid-deletion never leaves a half-deleted `checkpoint-N` behind.

A process killed at any point therefore leaves either no `checkpoint-N` or a complete one; `transformers`'
`get_last_checkpoint` only matches names `checkpoint-<digits>` and `sort_checkpoints` only globs `checkpoint-*`, so
they never see a `tmp-*` folder. `last_good_checkpoint` additionally checks that the files a resume needs exist (for
checkpoints written by other tools), and `remove_stale_staging` clears leftovers of a crashed save.

Torch pickles: `optimizer.pt`, `scheduler.pt`, `rng_state.pth` (and `scaler.pt` under fp16) are written by the Trainer
with `torch.save`; transformers 5.x reads all of them back with `torch.load(..., weights_only=True)` (and refuses
torch < 2.6, see `check_torch_load_is_safe`). Model weights, projections and the weighting state are safetensors/JSON;
`training_args.bin` (a full pickle of the arguments) is never written: `MMTARDTrainer._save` writes
`mmt_ard_config.json` instead, and nothing in `mmt_ard` calls `torch.load` at all.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, sort_checkpoints

logger = logging.getLogger(__name__)

STAGING_PREFIX = "tmp-"  # staged and to-be-deleted folders: outside the `checkpoint-*` namespace
TRAINER_STATE_NAME = "trainer_state.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def is_complete_checkpoint(path: str) -> bool:
    """Whether `path` holds what a resume needs: the trainer state and the student's weights."""
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, TRAINER_STATE_NAME)):
        return False
    return any(os.path.isfile(os.path.join(path, name)) for name in WEIGHT_FILES)


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """`(step, path)` of every `checkpoint-<step>` folder in `output_dir`, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def last_good_checkpoint(output_dir: str) -> str | None:
    """The complete checkpoint with the highest step in `output_dir` (None if there is none).

    Incomplete `checkpoint-*` folders (from tools that do not stage their writes) are skipped with a warning.
    """
    for step, path in reversed(list_checkpoints(output_dir)):
        if is_complete_checkpoint(path):
            return path
        logger.warning(f"Skipping incomplete checkpoint {path}: it lacks {TRAINER_STATE_NAME} or the model weights.")
    return None


def remove_stale_staging(output_dir: str) -> list[str]:
    """Delete `tmp-*checkpoint-*` folders left by a save or a deletion that crashed; returns what was removed."""
    removed = []
    if not os.path.isdir(output_dir):
        return removed
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith(STAGING_PREFIX) and PREFIX_CHECKPOINT_DIR in name and os.path.isdir(path):
            logger.warning(f"Removing {path}: left over by an interrupted checkpoint save or deletion.")
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _fsync_tree(path: str) -> None:
    """Flush every file under `path` and the directories themselves to disk (best effort: not every OS allows it)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


def _fsync(path: str) -> None:
    """Flush one file or directory to disk; best effort (some filesystems refuse fsync on directories)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def delete_checkpoint(path: str) -> None:
    """Delete a checkpoint folder by renaming it out of the `checkpoint-*` namespace first, then removing it."""
    parent, name = os.path.split(os.path.normpath(path))
    doomed = os.path.join(parent, f"{STAGING_PREFIX}deleting-{name}")
    if os.path.exists(doomed):
        shutil.rmtree(doomed, ignore_errors=True)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def rotate_checkpoints_safely(
    output_dir: str, save_total_limit: int | None, protected: list[str | None], use_mtime: bool = True
) -> list[str]:
    """Keep at most `save_total_limit` checkpoints, never deleting one in `protected` (the newest, the best).

    Mirrors `transformers.trainer_utils.rotate_checkpoints`, but deletes through `delete_checkpoint`. Returns the
    deleted paths.
    """
    if not save_total_limit or save_total_limit <= 0:
        return []
    checkpoints = sort_checkpoints(output_dir, use_mtime=use_mtime)
    if len(checkpoints) <= save_total_limit:
        return []
    keep = {os.path.normpath(p) for p in protected if p}
    keep.add(os.path.normpath(checkpoints[-1]))
    num_to_keep = max(save_total_limit, len(keep))
    deleted, remaining = [], len(checkpoints)
    for path in checkpoints:
        if remaining <= num_to_keep:
            break
        if os.path.normpath(path) in keep:
            continue
        logger.info(f"Deleting older checkpoint [{path}] due to args.save_total_limit")
        delete_checkpoint(path)
        deleted.append(path)
        remaining -= 1
    return deleted


def save_checkpoint_atomically(trainer, parent_save: Callable, model, trial) -> str:
    """Run the Trainer's `_save_checkpoint` into a staging folder, then publish it with one atomic rename.

    Args:
        trainer: the `MMTARDTrainer` (its `_checkpoint_staging_dir` redirects `_get_output_dir` during the save).
        parent_save: `super()._save_checkpoint` of the trainer.
        model: passed through to `parent_save`.
        trial: passed through to `parent_save`.

    Returns:
        The published `checkpoint-N` path.
    """
    args, state = trainer.args, trainer.state
    run_dir = trainer._get_output_dir(trial=trial)
    name = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
    final = os.path.join(run_dir, name)
    staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
    staged = os.path.join(staging_root, name)
    if args.should_save and os.path.isdir(staging_root):
        shutil.rmtree(staging_root, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()

    trainer._checkpoint_staging_dir = staging_root
    try:
        parent_save(model, trial)  # writes into staging_root/checkpoint-N; its rotation only sees the staging folder
    finally:
        trainer._checkpoint_staging_dir = None

    if args.should_save:
        best = state.best_model_checkpoint
        if best and os.path.normpath(best).startswith(os.path.normpath(staging_root) + os.sep):
            # the parent found the best checkpoint under the staging name: record where it is published
            state.best_model_checkpoint = final
            state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
        _fsync_tree(staged)
    trainer.accelerator.wait_for_everyone()  # every rank has written its files (rng_state_<rank>.pth, shards)

    if args.should_save:
        if os.path.isdir(final):
            # the same step saved again (e.g. a resumed run): move the old one out of the namespace first
            delete_checkpoint(final)
        os.replace(staged, final)
        _fsync(run_dir)
        shutil.rmtree(staging_root, ignore_errors=True)
        rotate_checkpoints_safely(run_dir, args.save_total_limit, [final, state.best_model_checkpoint])
    trainer.accelerator.wait_for_everyone()
    return final
