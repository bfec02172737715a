"""The `resume_helper.py` run, as a script that waits for a preemption signal inside a given step.

    python tests/preemption_helper.py --output_dir OUT --signal_step 5

When optimizer step K (`--signal_step`) begins, process 0 writes `<output_dir>/in-step-K` (its pid) and waits until
its preemption handler has caught a signal (the test sends it), then goes on with the step. Other processes are never
signalled: they wait for process 0 in the step's gradient all-reduce. Expected: `checkpoint-K`, exit status 75.
Runs single-process, or under `accelerate launch`; `resume_helper.py --resume` finishes the run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import torch
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
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--signal_step", type=int, required=True)
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(opts.output_dir, exist_ok=True)
    waiter = WaitForSignal(opts.signal_step, opts.output_dir)
    trainer = helper.build_trainer(opts.output_dir, [waiter])
    waiter.trainer = trainer
    trainer.train()


if __name__ == "__main__":
    sys.exit(main())
