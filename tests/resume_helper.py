"""A small MMT-ARD training run for the kill-and-resume tests, usable in-process and as a script.

As a script it trains and, with `--hang_at_step K`, stops making progress after optimizer step K (it writes
`<output_dir>/hung-at-K` and sleeps) so that the test can `SIGKILL` it mid-training at a known point:

    python tests/resume_helper.py --output_dir OUT --hang_at_step 7

Under `accelerate launch` with several processes every rank writes `hung-at-K-rank<R>` (holding its pid) instead;
`--resume` resumes from the last complete checkpoint and `--dump FILE` has rank 0 write the final weights and the
weighting state (`final_state` + `weighting`) to FILE (safetensors, the weighting state in its metadata);
`--reference_dir DIR` then also trains the same run uninterrupted (without checkpoints) in DIR, in the same processes
(one launch less for a multi-process test), dumped to `DIR/final.safetensors`.

The run is the `mmt-ard-sigmoid` preset (so the weighting strategy has state) with a feature term towards teachers of
other embedding sizes (so learned projection heads exist), 48 digits at batch 8 (6 steps per epoch, so 8 steps cross
an epoch boundary), PGD-2 with a random start drawn from the global torch RNG.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import TrainerCallback

from mmt_ard import MMTARDConfig, MMTARDTrainer, Teacher
from mmt_ard.embedded.tiny import build_tiny_clip, digits_dataset
from mmt_ard.runtime.distributed import shutdown_process_group

MAX_STEPS = 8
SAVE_STEPS = 3
NUM_ROWS = 48


class HangAtStep(TrainerCallback):
    """After optimizer step `step`, write a marker file and sleep until killed."""

    def __init__(self, step: int, output_dir: str):
        self.step, self.output_dir = step, output_dir

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            name = f"hung-at-{self.step}" + (f"-rank{args.process_index}" if args.world_size > 1 else "")
            with open(os.path.join(self.output_dir, name), "w") as f:
                f.write(str(os.getpid()))
            while True:
                time.sleep(1)


@functools.lru_cache(maxsize=1)
def _train_rows():
    return digits_dataset(16).select(range(NUM_ROWS))


def build_trainer(output_dir: str, callbacks=(), **overrides) -> MMTARDTrainer:
    student, processor = build_tiny_clip(hidden=32, image_size=16, seed=0)
    robust, robust_proc = build_tiny_clip(hidden=48, projection_dim=40, image_size=20, seed=1)
    clean, clean_proc = build_tiny_clip(hidden=48, projection_dim=44, image_size=12, seed=2)
    kwargs = dict(
        output_dir=output_dir,
        preset="mmt-ard-sigmoid",
        feature_weight=0.5,
        attack_steps=2,
        attack_eps=8 / 255,
        attack_step_size=4 / 255,
        learning_rate=1e-3,
        max_steps=MAX_STEPS,
        save_steps=SAVE_STEPS,
        per_device_train_batch_size=8,
        logging_steps=1,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        seed=7,
    )
    kwargs.update(overrides)
    return MMTARDTrainer(
        model=student,
        args=MMTARDConfig(**kwargs),
        teachers=[
            Teacher(robust, role="robust", processor=robust_proc),
            Teacher(clean, role="clean", processor=clean_proc),
        ],
        processing_class=processor,
        train_dataset=_train_rows(),
        callbacks=list(callbacks),
    )


def final_state(trainer: MMTARDTrainer) -> dict[str, torch.Tensor]:
    """Every trained tensor of the run: the student CLIP and the projection heads, by name."""
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--hang_at_step", type=int, default=None)
    parser.add_argument("--save_total_limit", type=int, default=None)
    parser.add_argument("--save_strategy", default="steps")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--dump", default=None)
    parser.add_argument("--reference_dir", default=None)
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    callbacks = [HangAtStep(opts.hang_at_step, opts.output_dir)] if opts.hang_at_step else []
    overrides = {"save_strategy": opts.save_strategy, "save_total_limit": opts.save_total_limit}
    trainer = build_trainer(opts.output_dir, callbacks, **overrides)
    trainer.train(resume_from_checkpoint=True if opts.resume else None)
    if opts.dump:
        dump(trainer, opts.dump)
    if opts.reference_dir:
        reference = build_trainer(opts.reference_dir, save_strategy="no")
        reference.train()
        dump(reference, os.path.join(opts.reference_dir, "final.safetensors"))
    shutdown_process_group()


def dump(trainer: MMTARDTrainer, path: str) -> None:
    """Rank 0 writes the final weights, the weighting state and the distributed setup to `path` (safetensors)."""
    import json

    import safetensors.torch

    if trainer.accelerator.is_main_process:
        state = {k: v.contiguous() for k, v in final_state(trainer).items()}
        meta = {"weighting": json.dumps(trainer.weighting.state_dict()), "setup": trainer.distributed_setup()}
        safetensors.torch.save_file(state, path, metadata=meta)


if __name__ == "__main__":
    sys.exit(main())
