"""The `resume_helper.py` run, as a script that waits for a preemption signal inside a given step.

    python tests/preemption_helper.py train --output_dir OUT --signal_step 5
    python tests/preemption_helper.py resume --output_dir OUT --checkpoint OUT/checkpoint-5 --reference_dir REF \
        --dump states.safetensors

`train --signal_step K`: when optimizer step K begins, process 0 writes `<output_dir>/in-step-K` (its pid) and waits
until its preemption handler has caught a signal (the test sends it), then goes on with the step. Other processes are
never signalled: they wait for process 0 in the step's gradient all-reduce. Expected: `checkpoint-K`, exit status 75.

`resume`: finishes the run from `--checkpoint`, then trains an uninterrupted reference in `--reference_dir` in the
same processes, and process 0 writes both final states to `--dump` (keys `resumed/...`, `reference/...`).

Runs single-process, or under `accelerate launch` (each process then trains on its shard of every batch).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

from transformers import TrainerCallback

_spec = importlib.util.spec_from_file_location(
    "mmt_ard_resume_helper", os.path.join(os.path.dirname(os.path.abspath(__file__)), "resume_helper.py")
)
helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helper)

WAIT_S = 180


class WaitForSignal(TrainerCallback):
    """When step `step` begins on process 0: write a marker with the pid, wait until the trainer caught a signal."""

    def __init__(self, step: int, output_dir: str):
        self.step, self.output_dir, self.trainer = step, output_dir, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step != self.step - 1 or not state.is_world_process_zero:
            return
        handler = self.trainer._preemption.handler
        with open(os.path.join(self.output_dir, f"in-step-{self.step}"), "w") as f:
            f.write(str(os.getpid()))
        deadline = time.time() + WAIT_S
        while handler.received is None:
            if time.time() > deadline:
                raise TimeoutError(f"no preemption signal within {WAIT_S} s")
            time.sleep(0.02)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "resume"])
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--signal_step", type=int, default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--reference_dir", default=None)
    parser.add_argument("--dump", default=None)
    parser.add_argument("--feature_weight", type=float, default=None, help="0: no projection heads")
    parser.add_argument("--preset", default=None)
    opts = parser.parse_args(argv)
    overrides = {k: v for k, v in (("feature_weight", opts.feature_weight), ("preset", opts.preset)) if v is not None}
    if opts.mode == "train":
        callbacks = [WaitForSignal(opts.signal_step, opts.output_dir)] if opts.signal_step else []
        os.makedirs(opts.output_dir, exist_ok=True)
        trainer = helper.build_trainer(opts.output_dir, callbacks, **overrides)
        for cb in callbacks:
            cb.trainer = trainer
        trainer.train()
        return
    import safetensors.torch

    resumed = helper.build_trainer(opts.output_dir, **overrides)
    resumed.train(resume_from_checkpoint=opts.checkpoint)
    reference = helper.build_trainer(opts.reference_dir, save_strategy="no", **overrides)
    reference.train()
    if reference.accelerator.is_main_process:
        states = {f"resumed/{k}": v for k, v in helper.final_state(resumed).items()}
        states.update({f"reference/{k}": v for k, v in helper.final_state(reference).items()})
        safetensors.torch.save_file({k: v.contiguous() for k, v in states.items()}, opts.dump)


if __name__ == "__main__":
    sys.exit(main())
