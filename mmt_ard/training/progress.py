"""Progress for batch systems: one plain line per logging step where a progress bar would flood a log file.

tqdm redraws its bar with carriage returns (`\\r`); in a terminal that is one line that changes, in a file (a SLURM
log, `> run.log 2>&1`, a CI job) it is every refresh concatenated into one endless line. So, as tqdm's own
`disable=None` does, the bar is only drawn where its stream (stderr) is a terminal. Elsewhere `disable_tqdm` becomes
True, transformers' convention for "no bar", and the trainer prints `LogLineCallback`'s lines instead of
transformers' `PrinterCallback` dictionaries:

    step 25/200 (12%) | loss 1.2346 | lr 0.0004985 | 812.3 images/s | elapsed 0:00:02 | ETA 0:00:14

An explicit `disable_tqdm` (flag, config file, or Python) always wins.
"""

from __future__ import annotations

import datetime
import sys
import time

from transformers import TrainerCallback

# keys of a log record that are about timing, not the model (left out of the eval line)
_TIMING_KEYS = ("runtime", "_time", "samples_per_second", "steps_per_second")


def progress_bar_fits(stream=None) -> bool:
    """Whether a progress bar drawn on `stream` (default `sys.stderr`, tqdm's) reaches a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=round(max(0.0, seconds))))


def _number(value) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


class LogLineCallback(TrainerCallback):
    """Print one plain line per log record on process 0, flushed at once (`tail -f` shows it).

    Training records give `step N/M (P%) | loss | lr | images/s | elapsed | ETA`; images/s is over the steps since
    the previous line, the ETA extrapolates the mean time per step of this `train()` call. Evaluation records give the
    evaluation metrics, the final record the run's totals.

    Args:
        stream: where the lines go (default: `sys.stdout` at the time of each print).
    """

    def __init__(self, stream=None):
        self.stream = stream
        self._start_time = self._start_step = None
        self._last_time = self._last_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start_time = self._last_time = time.perf_counter()
        self._start_step = self._last_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        line = self.format(args, state, logs)
        print(line, file=self.stream or sys.stdout, flush=True)

    def format(self, args, state, logs: dict) -> str:
        """The line for one log record."""
        total = state.max_steps or 0
        step = state.global_step
        head = f"step {step}/{total} ({100 * step // total}%)" if total > 0 else f"step {step}"
        if "train_runtime" in logs:
            parts = [head, "done", f"loss {_number(logs.get('train_loss'))}"]
            parts.append(f"{logs.get('train_samples_per_second', 0.0):.1f} images/s")
            parts.append(f"elapsed {_duration(logs['train_runtime'])}")
            return " | ".join(parts)
        if any(k.startswith("eval_") for k in logs):
            metrics = [
                f"{k[len('eval_') :]} {_number(v)}"
                for k, v in logs.items()
                if k.startswith("eval_") and "/" not in k and not k.endswith(_TIMING_KEYS)
            ]
            return " | ".join([head, "eval", *metrics])
        parts = [head]
        for key in ("loss", "learning_rate", "grad_norm"):
            if key in logs:
                parts.append(f"{'lr' if key == 'learning_rate' else key} {_number(logs[key])}")
        now = time.perf_counter()
        if self._last_time is not None and step > self._last_step and now > self._last_time:
            batch = (state.train_batch_size or args.per_device_train_batch_size) * args.gradient_accumulation_steps
            images = (step - self._last_step) * batch * max(1, args.world_size)
            parts.append(f"{images / (now - self._last_time):.1f} images/s")
        if self._start_time is not None and step > self._start_step:
            per_step = (now - self._start_time) / (step - self._start_step)
            parts.append(f"elapsed {_duration(now - self._start_time)}")
            if total > 0:
                parts.append(f"ETA {_duration(per_step * (total - step))}")
        self._last_time, self._last_step = now, step
        if "loss" not in logs:  # a record of the caller's own: its numbers too
            parts += [f"{k} {_number(v)}" for k, v in logs.items() if isinstance(v, (int, float))]
        return " | ".join(parts)
