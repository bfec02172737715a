"""Preemption: on SIGTERM / SIGUSR1, finish the optimizer step, write a checkpoint, exit with a requeue status.

Cluster schedulers and spot machines announce a kill with a signal (Slurm: `--signal=USR1@120` a grace period ahead,
or SIGTERM at the time limit, SIGKILL some seconds later). While `MMTARDTrainer.train()` runs:

1. `PreemptionHandler` catches the signals named in `MMTARDConfig.preemption_signals`; the handler only records the
   signal (nothing else is safe inside a signal handler);
2. `PreemptionCallback.on_step_end` (every optimizer step, on every process) all-reduces "has any process been
   signalled?", so that all ranks stop after the same step even when the signal reached only one of them, and sets
   `control.should_save` and `control.should_training_stop` (and skips an evaluation due at that step: the grace
   period is short);
3. the Trainer writes `checkpoint-N` through the atomic path (`checkpointing.save_checkpoint_atomically`) and leaves
   its loop; `MMTARDTrainer.train()` then writes `<output_dir>/preempted.json` (step, checkpoint, signal) and raises
   `TrainingPreempted`, a `SystemExit` with status `PREEMPTED_EXIT_CODE` (75, `EX_TEMPFAIL`: "try again later").

DataLoader worker processes ignore these signals (`IgnoreSignalsInWorker`, the workers' `worker_init_fn`): Slurm's
`--signal` reaches every process of the job step, and a worker that died of it (a worker started with the `spawn` or
`forkserver` method does not inherit the main process's handler) would end the run before its checkpoint.

A job script requeues on status 75; launchers (`torchrun`, `accelerate launch`) report their own status when a
worker exits non-zero (1), so behind a launcher test for `preempted.json` instead (see docs/reliability.md). A
signal that arrives after the last step is ignored (the run completes normally).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, the job should be run again
MARKER_NAME = "preempted.json"
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")
OFF = "none"
_UNCATCHABLE = ("SIGKILL", "SIGSTOP")


def parse_signals(names: list[str]) -> list[str]:
    """Canonical signal names (`SIGTERM`, ...) from user input; `[]` or `["none"]` turns preemption handling off.

    Args:
        names: signal names, with or without the `SIG` prefix, any case (`term`, `SIGUSR1`), or numbers as strings.

    Raises:
        ValueError: an unknown or uncatchable signal (naming the field `preemption_signals`).
    """
    if [n.strip().lower() for n in names] in ([], [OFF]):
        return []
    out = []
    for name in names:
        key = name.strip().upper()
        if key.isdigit():
            try:
                key = signal.Signals(int(key)).name
            except ValueError:
                key = f"signal number {name.strip()}"
        elif not key.startswith("SIG"):
            key = "SIG" + key
        if key in _UNCATCHABLE or not isinstance(getattr(signal, key, None), signal.Signals):
            raise ValueError(
                f"`preemption_signals`={names!r}: {name!r} is not a signal this platform lets a process catch. Use "
                f"names such as {list(DEFAULT_SIGNALS)}, or {OFF!r} (or an empty list) to turn preemption handling off."
            )
        if key not in out:
            out.append(key)
    return out


class TrainingPreempted(SystemExit):
    """Raised by `MMTARDTrainer.train()` after the preemption checkpoint is written; exit status 75.

    Args:
        step: the optimizer step the run stopped after (its checkpoint is `checkpoint-<step>`).
        checkpoint: path of that checkpoint.
        signal_name: the signal that was received (`None` on ranks that were not signalled themselves).
    """

    def __init__(self, step: int, checkpoint: str, signal_name: str | None):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name

    def __str__(self) -> str:
        return (
            f"training was preempted ({self.signal_name or 'signal on another process'}) after step {self.step}; "
            f"checkpoint {self.checkpoint!r} is complete: resume with `resume_from_checkpoint=True`."
        )


class PreemptionHandler:
    """Installs handlers for `signals` while in a `with` block; `received` is the first signal caught (or None).

    The previous handlers are restored on exit. Signal handlers can only be installed from the main thread: in any
    other thread (e.g. `train()` called from a worker thread) nothing is installed and a warning says so.

    Args:
        signals: canonical names from `parse_signals`.
    """

    def __init__(self, signals: list[str]):
        self.signals = [getattr(signal, name) for name in signals]
        self.received: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name

    def __enter__(self):
        self.received = None
        if not self.signals:
            return self
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "`train()` (or the evaluation) runs outside the main thread: no preemption signal handlers "
                f"installed ({[s.name for s in self.signals]} keep their default action)."
            )
            return self
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}


class IgnoreSignalsInWorker:
    """A DataLoader `worker_init_fn` that makes the worker ignore the preemption signals, then calls `inner`.

    Picklable (for workers started with `spawn` / `forkserver`) when `inner` is.

    Args:
        signals: canonical names from `parse_signals`.
        inner: the DataLoader's own `worker_init_fn` (the Trainer's seeding), or None.
    """

    def __init__(self, signals: list[str], inner=None):
        self.signals, self.inner = list(signals), inner

    def __call__(self, worker_id: int) -> None:
        for name in self.signals:
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether `flag` is true on any process (an all-reduce when torch.distributed runs, else `flag` itself)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor(float(flag), device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)
    return flag


class PreemptionCallback(TrainerCallback):
    """At each optimizer step's end: if any process was signalled, save now and stop (see the module docstring).

    Args:
        handler: the `PreemptionHandler` whose `received` is polled.
    """

    def __init__(self, handler: PreemptionHandler):
        self.handler = handler
        self.stopped_at: int | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.stopped_at = None

    def on_step_end(self, args, state, control, **kwargs):
        # a collective on every rank at every step: all ranks stop after the same step
        if any_process(self.handler.received is not None, args.device):
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None:  # already saved at the step; no second save or evaluation at epoch end
            control.should_save = False
            control.should_evaluate = False
        return control


def write_marker(output_dir: str, step: int, checkpoint: str, signal_name: str | None) -> str:
    """Write `<output_dir>/preempted.json` (for job scripts behind a launcher that hides the exit status)."""
    return write_marker_record(output_dir, {"step": step, "checkpoint": checkpoint, "signal": signal_name})


def write_marker_record(output_dir: str, record: dict) -> str:
    """Write `record` (plus `exit_code`: 75) atomically to `<output_dir>/preempted.json`; returns its path."""
    path = os.path.join(output_dir, MARKER_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({**record, "exit_code": PREEMPTED_EXIT_CODE}, f, indent=2)
    os.replace(tmp, path)
    return path


def remove_marker(output_dir: str) -> None:
    """Delete a `preempted.json` left by an earlier, preempted run (called when `train()` starts)."""
    path = os.path.join(output_dir, MARKER_NAME)
    if os.path.isfile(path):
        os.remove(path)


def run_preemptible(trainer, train_fn, *args, **kwargs):
    """Call `train_fn` (the Trainer's `train`) with the handlers installed; raise `TrainingPreempted` if preempted.

    Args:
        trainer: the `MMTARDTrainer` (its `_preemption` callback and `args`).
        train_fn: `super().train` of the trainer.
        *args: passed to `train_fn`.
        **kwargs: passed to `train_fn`.
    """
    callback: PreemptionCallback | None = trainer._preemption
    if callback is None:
        return train_fn(*args, **kwargs)
    if trainer.args.should_save:
        remove_marker(trainer.args.output_dir)
    with callback.handler:
        output = train_fn(*args, **kwargs)
    received = callback.handler.received
    if callback.stopped_at is None:
        if received is not None:
            logger.warning(f"{received} arrived after the last training step: the run completed normally.")
        return output
    step = callback.stopped_at
    checkpoint = os.path.join(trainer.args.output_dir, f"checkpoint-{step}")
    if trainer.args.should_save:
        write_marker(trainer.args.output_dir, step, checkpoint, received)
    trainer.accelerator.wait_for_everyone()
    logger.warning(
        f"Preempted by {received or 'a signal to another process'}: stopped after step {step}, saved {checkpoint}; "
        f"exiting with status {PREEMPTED_EXIT_CODE}."
    )
    raise TrainingPreempted(step, checkpoint, received)
