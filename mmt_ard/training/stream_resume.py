"""Resuming a stream from its saved position (`data.stream.ShardedStream`), not by replaying the batches done.

The trainer builds the DataLoader of a `ShardedStream` itself (`stream_loader`): each process reads its own slots
(no `accelerate` dispatch from rank 0, no re-sharding), and every batch carries the position after it, which
`StreamPositions` takes out of the batch before the model sees it. A checkpoint stores, per process,
`data_state_rank<r>.json`: `{slot: [pass, piece, row, taken]}` for each of its slots (one slot per DataLoader worker), with
what the positions are valid for (processes, workers, the stream's fingerprint). Resuming hands those positions to
the stream, and `get_resumed_dataloader` skips nothing.

A checkpoint without that file (written before positions were saved), or one written with other numbers of
processes or workers, or over other data, resumes by replay: the Trainer's default, which reads (and decodes) every
batch already done in the pass; a warning says why and what it costs.

Map-style data needs none of this: the Trainer skips the done batches of an epoch in the sampler (indices only, no
image is read), and the epoch's order comes from the seed.
"""

from __future__ import annotations

import json
import os

from torch.utils.data import DataLoader
from transformers.utils import logging

from ..data.stream import POSITION_KEY, PositionCollator, ShardedStream

logger = logging.get_logger(__name__)

DATA_STATE_PATTERN = "data_state_rank{rank}.json"
DATA_STATE_VERSION = 1


def is_stream(dataset) -> bool:
    return isinstance(dataset, ShardedStream)


class StreamPositions:
    """Where each slot of this process stands, after the batches the training loop has taken.

    Args:
        start: `{slot: (pass, piece, row, taken)}` of the slots, at the start of this `train()`.
        next_slot: the number (0 .. workers - 1, in this process) of the slot whose batch comes next.
    """

    def __init__(self, start: dict[int, tuple[int, ...]], next_slot: int = 0):
        self.positions = {int(s): list(p) for s, p in start.items()}
        self.next_slot = int(next_slot) % max(1, len(self.positions))

    def take(self, batch) -> None:
        """Remove the batch's position and record it (a batch without one is left alone)."""
        if isinstance(batch, dict) and POSITION_KEY in batch:
            slot, *position = (int(v) for v in batch.pop(POSITION_KEY).tolist())
            self.positions[slot] = position
            self.next_slot = (self.next_slot + 1) % len(self.positions)  # the loader's round-robin over workers


def stream_loader(trainer, stream: ShardedStream, start: tuple | None, worker_init_fn=None) -> DataLoader:
    """The training DataLoader of a stream in this process, starting at `start` (`({slot: position}, next slot)`
    from `positions_to_resume`, or None: the beginning)."""
    args = trainer.args
    positions, next_slot = start if start is not None else (None, 0)
    stream.for_process(args.process_index, args.world_size, args.dataloader_num_workers, positions, next_slot)
    trainer._stream_positions = StreamPositions(stream.start_positions(), next_slot)
    workers = args.dataloader_num_workers
    return DataLoader(
        stream,
        batch_size=trainer._train_batch_size,
        collate_fn=PositionCollator(trainer.data_collator),
        num_workers=workers,
        pin_memory=args.dataloader_pin_memory,
        persistent_workers=args.dataloader_persistent_workers if workers > 0 else False,
        prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
        worker_init_fn=worker_init_fn,
    )


def save_positions(trainer, checkpoint_dir: str) -> None:
    """Write this process's `data_state_rank<r>.json` into `checkpoint_dir` (every process writes its own)."""
    positions = getattr(trainer, "_stream_positions", None)
    stream = trainer.train_dataset
    if positions is None or not is_stream(stream):
        return
    args = trainer.args
    state = {
        "version": DATA_STATE_VERSION,
        "kind": "sharded_stream",
        "global_step": trainer.state.global_step,
        "world_size": args.world_size,
        "num_workers": args.dataloader_num_workers,
        "per_device_train_batch_size": trainer._train_batch_size,
        "fingerprint": stream.fingerprint(),
        "positions": {str(s): p for s, p in sorted(positions.positions.items())},
        "next_slot": positions.next_slot,
    }
    os.makedirs(checkpoint_dir, exist_ok=True)
    with open(os.path.join(checkpoint_dir, DATA_STATE_PATTERN.format(rank=args.process_index)), "w") as f:
        json.dump(state, f, indent=1)


def positions_to_resume(trainer, checkpoint_dir: str) -> tuple[dict[int, tuple[int, ...]], int] | None:
    """`({slot: (pass, piece, row, taken)}, next slot)` saved for this process, or None (with a warning saying why) when
    the resume must replay."""
    args, stream = trainer.args, trainer.train_dataset
    path = os.path.join(checkpoint_dir, DATA_STATE_PATTERN.format(rank=args.process_index))
    step = _global_step(checkpoint_dir)
    cost = (
        f"the first {step} steps' batches ({step * trainer._train_batch_size} images per process) are read and "
        "decoded again before training goes on"
    )
    if not os.path.isfile(path):
        logger.warning(
            f"{checkpoint_dir} holds no data position ({os.path.basename(path)}; it was written by an earlier version "
            f"of mmt_ard): resuming the stream by replay, {cost}. Checkpoints written from now on resume without. (A "
            "run that streamed through `datasets` read its samples in another order: the resumed run goes on in this "
            "stream's order, not bit-identical to where that run would have gone.)"
        )
        return None
    with open(path) as f:
        state = json.load(f)
    expected = {
        "world_size": args.world_size,
        "num_workers": args.dataloader_num_workers,
        "per_device_train_batch_size": trainer._train_batch_size,
        "fingerprint": stream.fingerprint(),
    }
    changed = {k: (state.get(k), v) for k, v in expected.items() if state.get(k) != v}
    if changed:
        described = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        logger.warning(
            f"The data position in {path} was saved for another setup ({described}): it cannot place this run's "
            f"readers, so the stream resumes by replay, {cost}. Resume with the checkpoint's setup to skip that."
        )
        return None
    positions = {int(s): tuple(int(v) for v in p) for s, p in state["positions"].items()}
    return positions, int(state.get("next_slot", 0))


def _global_step(checkpoint_dir: str) -> int:
    try:
        with open(os.path.join(checkpoint_dir, "trainer_state.json")) as f:
            return int(json.load(f).get("global_step", 0))
    except (OSError, ValueError):
        return 0
