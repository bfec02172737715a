"""Non-finite losses: skip the update, count it, stop after `max_bad_steps` in a row.

An adversarial-training step can blow up (a NaN pixel, an overflowing teacher in fp16, a too-large learning rate).
`NonFiniteGuard` makes such a step a no-op instead of poisoning the weights:

* every micro-batch still runs its backward pass (so DDP's gradient all-reduce stays in step on every rank), but its
  loss is checked; at the optimizer step the gradients are checked too (all flags stay on the device and are read
  once per optimizer step: one synchronisation, not one per micro-batch);
* if any micro-batch of the accumulation window had a non-finite loss, or any gradient is non-finite, the optimizer's
  `step` is not called at all: parameters, AdamW moments and step counts stay exactly as they were (zeroing the
  gradients would not do: AdamW would still apply weight decay and momentum). The weighting strategy's state
  (e.g. the sigmoid EMA statistics) is restored to what it was before the window;
* the learning-rate scheduler still advances with `global_step` (the Trainer's step counter moves on), so the
  schedule stays aligned with the step numbers in logs and checkpoints;
* skipped updates are counted (`nonfinite_steps`, logged at every logging step and saved in checkpoints) and warned
  about; after `max_bad_steps` consecutive skipped updates `NonFiniteLossError` stops the run. Since no bad update
  was ever applied, every checkpoint on disk holds finite weights and stays loadable.

The guard wraps the optimizer's `step` method (as torch's own LR schedulers do to track calls), so it works with and
without Accelerate's gradient scaler. Under DeepSpeed the optimizer is not created by the Trainer and is not wrapped.
"""

from __future__ import annotations

import copy
import logging
import types

import torch

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when `max_bad_steps` consecutive optimizer steps had a non-finite loss or gradient."""


def _gradients_finite(optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """A 0-d bool tensor: are all gradients finite? (None without gradients; no device sync.)"""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    # a sharded (FSDP) gradient is checked on this rank's shard; `_should_skip` combines the ranks
    flags = [torch.isfinite(g.to_local() if hasattr(g, "to_local") else g).all() for g in grads]
    if not flags:
        return None
    return torch.stack([f.to(flags[0].device) for f in flags]).all()


class NonFiniteGuard:
    """Skips optimizer updates whose loss or gradients are not finite (see the module docstring).

    Args:
        trainer: the `MMTARDTrainer`; the guard reads `args.max_bad_steps`, the weighting strategy, and keeps the
            counters `trainer._bad_steps` (consecutive skipped updates) and `trainer._nonfinite_steps` (all of them),
            which the trainer saves in checkpoints.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self._window_bad: torch.Tensor | None = None  # 0-d bool on the device: a non-finite loss in this window
        self._weighting_snapshot: dict | None = None

    def reset(self) -> None:
        """Forget a window that never reached the optimizer step (an attempt that ran out of memory)."""
        self._window_bad = None
        self._weighting_snapshot = None

    # ---- per micro-batch (from `MMTARDTrainer.training_step`) ----
    def before_micro_batch(self) -> None:
        if self._weighting_snapshot is None:  # first micro-batch of an accumulation window
            self._weighting_snapshot = copy.deepcopy(self.trainer.weighting.state_dict())

    def after_micro_batch(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(
            loss.detach()
        ).all()  # a device tensor: read once per optimizer step, not per micro-batch
        self._window_bad = bad if self._window_bad is None else (self._window_bad | bad.to(self._window_bad.device))

    # ---- per optimizer step ----
    def install(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Wrap `optimizer.step` so that a bad window skips it. Idempotent."""
        if getattr(optimizer, "_mmt_ard_nonfinite_guard", None) is self:
            return optimizer
        inner_step = optimizer.step
        guard = self

        def guarded_step(opt, *args, **kwargs):
            if guard._should_skip(opt):
                guard._skipped()
                return None
            out = inner_step(*args, **kwargs)
            guard._stepped()
            return out

        # a bound method, so that torch's LR-scheduler step tracking (which reads `step.__func__`) can wrap it
        optimizer.step = types.MethodType(guarded_step, optimizer)
        optimizer._mmt_ard_nonfinite_guard = self
        return optimizer

    def _should_skip(self, optimizer) -> bool:
        """Whether this window's loss or gradients were non-finite on any rank (one device sync per step)."""
        device = self.trainer.args.device
        flag = torch.zeros((), device=device)
        if self._window_bad is not None:
            flag = flag + self._window_bad.to(device).float()
        grads_finite = _gradients_finite(optimizer)
        if grads_finite is not None:
            flag = flag + (~grads_finite).to(device).float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)  # every rank skips together
        return bool(flag.item() > 0)

    def _end_window(self) -> None:
        self._window_bad = None
        self._weighting_snapshot = None
        self.trainer._metrics["train"]["nonfinite_steps"] = [float(self.trainer._nonfinite_steps)]

    def _stepped(self) -> None:
        self.trainer._bad_steps = 0
        self._end_window()

    def _skipped(self) -> None:
        trainer = self.trainer
        if self._weighting_snapshot is not None:
            trainer.weighting.load_state_dict(self._weighting_snapshot)
        trainer._bad_steps += 1
        trainer._nonfinite_steps += 1
        self._end_window()
        step, limit = trainer.state.global_step + 1, trainer.args.max_bad_steps
        logger.warning(
            f"Step {step}: non-finite loss or gradient; the update was skipped ({trainer._bad_steps} in a row, "
            f"limit `max_bad_steps`={limit}; {trainer._nonfinite_steps} skipped in total)."
        )
        if trainer._bad_steps >= limit:
            from .checkpointing import last_good_checkpoint

            last = last_good_checkpoint(trainer.args.output_dir)
            where = f"the last checkpoint, {last!r}, holds finite weights" if last else "no checkpoint was written yet"
            raise NonFiniteLossError(
                f"{trainer._bad_steps} consecutive optimizer steps (up to step {step}) had a non-finite loss or "
                f"gradient, so training stopped (`max_bad_steps`={limit}). No bad update was applied and {where}. "
                "Check the data for NaN/inf pixels, lower `learning_rate`, run teachers in fp32 (`teacher_dtype`), "
                "then resume with `resume_from_checkpoint`."
            )
