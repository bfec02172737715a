"""Out-of-memory handling: `auto_find_batch_size` that halves the batch exactly, and an error that says what helps.

The in-loop attack multiplies activation memory (the student on `x` and `x_adv`, plus the attack's own graph), so
the first step is where a run finds out whether its batch fits. `BatchSizeSearch.run_attempt` wraps each attempt of
the Trainer's training loop (`MMTARDTrainer._inner_training_loop`):

* with `auto_find_batch_size=True`, an out-of-memory error before the first optimizer update of the attempt makes
  the next attempt run at **half** the per-device batch (accelerate's own search shrinks by 10 % a time; halving
  keeps batch sizes powers of two and needs a few attempts at most). Before the retry everything the failed attempt
  touched is put back: the python/numpy/torch RNG states (the attack's random starts draw from them), the weighting
  strategy's state, the non-finite guard's window and the logged metrics; weights and optimizer moments were not
  changed (no update was applied). The retry is therefore the run that would have started at the smaller batch;
  the loss is normalised by the items of the accumulated batch, which the Trainer recounts at the new size.
* an out-of-memory error otherwise (no `auto_find_batch_size`, the batch is down to 1, or the error came after the
  first update, when a restart would repeat updates already applied) is re-raised as `TrainingOutOfMemoryError` (a
  `torch.OutOfMemoryError`), whose message names the settings that help and the last checkpoint on disk (which an
  out-of-memory error never touches: checkpoints are published atomically).

With several processes (DDP), every process must retry at the same smaller batch, or the ones that did not run out
of memory would wait forever for the others in the gradient all-reduce. So with `auto_find_batch_size` the first
micro-batch of every attempt is first tried on each process alone: the unwrapped model's full step (teachers,
attack, student, backward; a weighting that gathers the global batch weighs the local one) with nothing exchanged
between processes, then undone (RNG, weighting state, metrics,
gradients). The processes then agree whether any of them ran out of memory (one all-reduce); if one did, every
process raises the out-of-memory error and all retry at half the batch. This costs one extra step per attempt, only
with `auto_find_batch_size` on several processes. (An out-of-memory error later in the attempt, after that check,
is not agreed on: it stops the run as without `auto_find_batch_size`. FSDP is not covered: its sharded forward
exchanges weights between processes.)

On CUDA, `MemoryReportCallback` prints after the first step the batch the run uses and the step's peak memory.
"""

from __future__ import annotations

import copy
import gc
import logging
import random

import numpy as np
import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

GIB = 1024**3


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an out-of-memory error of torch (CUDA, CPU, MPS, XPU) as accelerate recognises them."""
    from accelerate.utils.memory import should_reduce_batch_size

    return isinstance(error, torch.OutOfMemoryError) or should_reduce_batch_size(error)


class TrainingOutOfMemoryError(torch.OutOfMemoryError):
    """Out of memory, with what to change; raised from the original error (see `out_of_memory_message`)."""


def out_of_memory_message(
    args, batch_size: int, step: int, last_checkpoint: str | None, tried: list[int] | None = None, updates: int = 0
) -> str:
    """The message of `TrainingOutOfMemoryError`: where it happened, the checkpoint to resume from, what helps.

    Args:
        args: the `MMTARDConfig` of the run (its current memory settings are quoted).
        batch_size: the per-device train batch the error happened at.
        step: the optimizer step being computed (1-based).
        last_checkpoint: the newest complete checkpoint, or None.
        tried: the batch sizes `auto_find_batch_size` tried, if it ran.
        updates: optimizer updates this attempt had already applied.
    """
    accumulation = int(args.gradient_accumulation_steps)
    where = f"Ran out of memory at per-device train batch {batch_size} in step {step}"
    if tried and updates:
        where += (
            f", after {updates} optimizer updates at that batch: `auto_find_batch_size` retries only before the first "
            "update (a restart would apply those updates again)"
        )
    elif tried:
        where += f"; `auto_find_batch_size` tried per-device batches {tried}"
    if last_checkpoint:
        saved = f"The last complete checkpoint, {last_checkpoint!r}, is intact: resume from it with "
        saved += "`resume_from_checkpoint=True` after changing one of the settings below."
    else:
        saved = "No checkpoint had been written yet."
    half = max(1, batch_size // 2)
    per_update = batch_size * accumulation
    checkpointing = bool(getattr(args, "activation_checkpointing", False) or args.gradient_checkpointing)
    helps = [
        f"`teacher_dtype='bf16'` (now {args.teacher_dtype!r}): the teachers run in half the memory",
        (
            "activation checkpointing of the student (`activation_checkpointing=True`, `gradient_checkpointing=True` "
            f"in transformers < 5; now {checkpointing})"
        ),
        (
            f"a smaller per-device batch with gradient accumulation: `per_device_train_batch_size={half}`, "
            f"`gradient_accumulation_steps={per_update // half}` keeps {per_update} images per process and update"
        ),
    ]
    if not args.auto_find_batch_size:
        helps.append("or `auto_find_batch_size=True`, which halves the batch until the first step fits")
    return f"{where}. {saved} What helps: " + "; ".join(helps) + "."


def format_memory_report(
    batch_size: int, accumulation: int, num_processes: int, peak_bytes: int, total_bytes: int, device: str
) -> str:
    """One line: the per-device batch, the images per update, and the first step's peak memory on `device`."""
    images = batch_size * accumulation * num_processes
    share = 100.0 * peak_bytes / total_bytes if total_bytes else float("nan")
    return (
        f"MMT-ARD: per-device train batch {batch_size} (x {accumulation} accumulation steps x {num_processes} "
        f"processes = {images} images per update); peak memory of the first step {peak_bytes / GIB:.2f} GiB of "
        f"{total_bytes / GIB:.2f} GiB ({share:.0f} %) on {device}."
    )


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class MemoryCallback(TrainerCallback):
    """Tracks, per attempt, whether an optimizer update began; on CUDA prints the first step's batch and peak memory.

    Args:
        search: the `BatchSizeSearch` it reports to.
    """

    def __init__(self, search: BatchSizeSearch):
        self.search = search
        self.start_step: int | None = None
        self.updates_begun = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step, self.updates_begun = state.global_step, 0
        if args.device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats(args.device)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.updates_begun += 1

    def on_step_end(self, args, state, control, **kwargs):
        first = self.start_step is not None and state.global_step == self.start_step + 1
        if first and args.device.type == "cuda" and torch.cuda.is_available() and state.is_local_process_zero:
            trainer = self.search.trainer
            print(
                format_memory_report(
                    trainer._train_batch_size,
                    args.gradient_accumulation_steps,
                    trainer.accelerator.num_processes,
                    torch.cuda.max_memory_allocated(args.device),
                    torch.cuda.get_device_properties(args.device).total_memory,
                    str(args.device),
                ),
                flush=True,
            )


class BatchSizeSearch:
    """One `train()` call's attempts at a batch size (see the module docstring).

    Args:
        trainer: the `MMTARDTrainer`; its `_inner_training_loop` calls `run_attempt`.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.callback = MemoryCallback(self)
        self.tried: list[int] = []
        self._retrying = False
        self._next: int | None = None
        self._snapshot: dict | None = None
        self._probe_pending = False  # the attempt's first micro-batch still has to be tried on each process alone

    def run_attempt(self, inner_loop, batch_size: int | None, *args, **kwargs):
        """Run one attempt of `inner_loop` (`Trainer._inner_training_loop`) at the right batch size."""
        trainer = self.trainer
        auto = bool(trainer.args.auto_find_batch_size)
        if self._retrying:
            self._retrying = False
            self._restore()
            batch_size = self._next
        else:  # the first attempt of a `train()` call
            self.tried, self._next = [], None
            self._snapshot = self._take_snapshot() if auto else None
        self.tried.append(int(batch_size if batch_size is not None else trainer._train_batch_size))
        self.callback.start_step, self.callback.updates_begun = None, 0
        self._probe_pending = auto and trainer.accelerator.num_processes > 1 and not trainer.is_fsdp_enabled
        try:
            return inner_loop(batch_size, *args, **kwargs)
        except Exception as error:
            if isinstance(error, TrainingOutOfMemoryError) or not is_out_of_memory(error):
                raise
            from accelerate.utils.memory import should_reduce_batch_size

            size, updates = self.tried[-1], self.callback.updates_begun
            if auto and updates == 0 and size > 1 and should_reduce_batch_size(error):
                self._next, self._retrying = size // 2, True
                logger.warning(
                    f"Out of memory at per-device train batch {size}: retrying at {size // 2} "
                    "(`auto_find_batch_size`)."
                )
                raise  # the Trainer's search catches it and calls the loop again
            self._snapshot = None
            raise self._error(size, updates) from error

    def agree_before_first_step(self, inputs: dict, num_items_in_batch=None) -> None:
        """With `auto_find_batch_size` on several processes: before the attempt's first micro-batch, run its step on
        each process alone and raise an out-of-memory error on every process if any of them ran out (see the module
        docstring). Called by `MMTARDTrainer.training_step`; does nothing otherwise.

        Args:
            inputs: the micro-batch as the Trainer hands it to `training_step`.
            num_items_in_batch: the Trainer's loss normaliser for it.
        """
        if not self._probe_pending:
            return
        self._probe_pending = False
        from ..runtime.preemption import any_process

        trainer = self.trainer
        bundle = trainer.accelerator.unwrap_model(trainer.model)  # no DDP wrapper: nothing is exchanged
        weighting = trainer.weighting  # a `GlobalBatchWeighting` gathers the batch: its inner strategy does not
        trainer.weighting = getattr(weighting, "inner", weighting)
        saved = {
            "rng": _rng_state(),
            "weighting": copy.deepcopy(trainer.weighting.state_dict()),
            "metrics": {k: list(v) for k, v in trainer._metrics["train"].items()},
        }
        failed = False
        try:
            with trainer.compute_loss_context_manager():
                loss = trainer.compute_loss(
                    bundle, trainer._prepare_inputs(inputs), num_items_in_batch=num_items_in_batch
                )
            loss.backward()
            del loss
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            failed = True
        finally:
            for p in bundle.parameters():
                p.grad = None
            _set_rng_state(saved["rng"])
            trainer.weighting.load_state_dict(saved["weighting"])
            trainer.weighting = weighting
            trainer._metrics["train"].clear()
            trainer._metrics["train"].update(saved["metrics"])
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if any_process(failed, trainer.args.device):
            size = self.tried[-1]
            who = "this process" if failed else "another process"
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. (agreed: {who} ran out of memory at per-device train batch {size}; every "
                "process retries at the same smaller batch)"
            )

    def _error(self, size: int, updates: int) -> TrainingOutOfMemoryError:
        from .checkpointing import last_good_checkpoint

        trainer = self.trainer
        step = trainer.state.global_step + 1
        tried = self.tried if trainer.args.auto_find_batch_size else None
        last = last_good_checkpoint(trainer.args.output_dir)
        return TrainingOutOfMemoryError(out_of_memory_message(trainer.args, size, step, last, tried, updates))

    def _take_snapshot(self) -> dict:
        return {"rng": _rng_state(), "weighting": copy.deepcopy(self.trainer.weighting.state_dict())}

    def _restore(self) -> None:
        """Undo what the failed attempt changed before its first update (see the module docstring)."""
        trainer = self.trainer
        gc.collect()  # the failed attempt's activations are garbage once its exception is gone
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        _set_rng_state(self._snapshot["rng"])
        trainer.weighting.load_state_dict(copy.deepcopy(self._snapshot["weighting"]))
        trainer._nonfinite.reset()
        trainer._metrics["train"].clear()
        if trainer.optimizer is not None:
            trainer.optimizer.zero_grad(set_to_none=True)
