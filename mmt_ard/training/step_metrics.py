"""Per-step metrics and phase timers that do not stall a GPU.

`MMTARDTrainer` records, every step, its loss terms, teacher weights and accuracies, and the wall time of each
phase (teachers, attack, student). Turning each of those into a Python float at once would synchronise the device
about twenty times per step, each time draining the queue of kernels the CPU had launched ahead. Instead:

* values are kept as they come: Python floats, or 0-d tensors left on their device;
* a phase on a CUDA device is timed with a pair of CUDA events (`PhaseSpan`), read only when logged;
* `means` turns a metric store into `{key: mean}` at logging time with a single device synchronisation.

A value may come with a weight, `(value, weight)`: the number of samples it is the mean over. `weighted_sums` gives
`{key: (sum of weight x value, sum of weights)}`, which adds up across processes (`distributed.sum_over_processes`),
so a metric logged under several processes is the mean over every sample of every process (what one process would
log on the same global batch), not the main process's alone.

On the CPU a phase is timed with `time.perf_counter`, as before.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

import torch


class PhaseSpan:
    """The wall time of one or more phases of a step, measured with CUDA events and read on demand."""

    def __init__(self):
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def __float__(self) -> float:
        """Seconds (waits for the last phase to finish on the device)."""
        if not self.events:
            return 0.0
        self.events[-1][1].synchronize()
        return sum(start.elapsed_time(end) for start, end in self.events) / 1000.0


@contextlib.contextmanager
def timed_phase(store: list, add_to_last: bool = False, cuda: bool = False):
    """Time the block into `store` (one entry per step; `add_to_last` adds the block to the step's last entry).

    Args:
        store: the list of per-step times of this phase.
        add_to_last: add to the last entry instead of appending one.
        cuda: time device work with CUDA events (no synchronisation) instead of the host clock.
    """
    if cuda:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        yield
        end.record()
        if not (add_to_last and store and isinstance(store[-1], PhaseSpan)):
            store.append(PhaseSpan())
        store[-1].events.append((start, end))
        return
    begin = time.perf_counter()
    yield
    elapsed = time.perf_counter() - begin
    if add_to_last and store:
        store[-1] += elapsed
    else:
        store.append(elapsed)


def weighted_sums(metrics: Mapping[str, list]) -> dict[str, tuple[float, float]]:
    """`{key: (sum of weight x value, sum of weights)}` over a store of floats, 0-d tensors, `PhaseSpan`s and
    `(value, weight)` pairs (weight 1 when none is given); empty lists are left out.

    All tensor values are gathered per device and copied to the host together: one synchronisation per device.
    """
    tensors: dict[torch.device, list[torch.Tensor]] = {}
    for values in metrics.values():
        for v in values:
            v = v[0] if isinstance(v, tuple) else v
            if torch.is_tensor(v):
                tensors.setdefault(v.device, []).append(v.detach().float().reshape(()))
    host = {device: iter(torch.stack(vs).tolist()) for device, vs in tensors.items()}
    out = {}
    for key, values in metrics.items():
        if not values:
            continue
        total = weight = 0.0
        for entry in values:
            v, w = entry if isinstance(entry, tuple) else (entry, 1.0)
            total += float(w) * (next(host[v.device]) if torch.is_tensor(v) else float(v))
            weight += float(w)
        out[key] = (total, weight)
    return out


def means(metrics: Mapping[str, list]) -> dict[str, float]:
    """`{key: (weighted) mean of its values}` (see `weighted_sums`); empty lists are left out."""
    return {key: total / weight if weight else 0.0 for key, (total, weight) in weighted_sums(metrics).items()}
