"""Evaluation over several processes: who evaluates which samples, and how their outcomes come together.

Under `torchrun --nproc_per_node N` (or `accelerate launch --multi_gpu --num_processes N`, or inside a distributed
training run) every process loads the model and the data, evaluates every N-th of the samples still missing
(`EvalGroup.shard`), and after each batch the processes exchange their per-sample outcomes
(`EvalGroup.all_gather`): every process then holds all of them, and only the main process writes files.
Because every random draw belongs to a sample (`random_streams`), the outcomes are those of one process.

Exchanges run over a gloo group on the CPU (objects, not tensors), also when the model runs on NCCL GPUs.
"""

from __future__ import annotations

import datetime
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from ..runtime.distributed import launched_world_size, object_group, shutdown_process_group

T = TypeVar("T")

# one round of the evaluation (a batch per process) must finish within this; APGD-T on large models is slow
EVAL_TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class EvalGroup:
    """This process's place among the evaluating processes.

    Args:
        rank: this process's index (0 is the main process, the only one that writes).
        world_size: the number of processes.
        owns_process_group: whether `init_eval_group` created the default process group (and `close` ends it).
    """

    rank: int = 0
    world_size: int = 1
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> EvalGroup:
        """The group of an initialised `torch.distributed` (e.g. a training run's), else a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share: every `world_size`-th item from its rank on (balanced when costs vary in runs)."""
        return list(items[self.rank :: self.world_size])

    def all_gather(self, obj: T) -> list[T]:
        """Every process's `obj`, in rank order, on every process (a collective call)."""
        if self.world_size == 1:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj, group=_object_group())
        return out

    def from_main(self, fn: Callable[[], T]) -> T:
        """`fn()` run on the main process only, its result (or its error, raised everywhere) on every process.

        For reading files that only the main process can be trusted to see (a collective call).
        """
        if self.world_size == 1:
            return fn()
        box: list = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as error:  # noqa: BLE001 - re-raised on every process, so that none waits for the others
                box[0] = ("error", error)
        dist.broadcast_object_list(box, src=0, group=_object_group())
        status, value = box[0]
        if status == "error":
            raise value
        return value

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any process (a collective call)."""
        return any(self.all_gather(bool(flag)))

    def close(self, ok: bool = True) -> None:
        """End the process group if `init_eval_group` started it (after a barrier when `ok`)."""
        if self.owns_process_group:
            shutdown_process_group(barrier=ok)
            self.owns_process_group = False


def _object_group():
    return object_group(timeout=EVAL_TIMEOUT)


def accelerate_single_process_launch() -> bool:
    """`accelerate launch --num_processes N` (N > 1) without `--multi_gpu` on a machine without GPUs: Accelerate's
    simple launcher (meant for `mpirun`) started this one process alone (it sets the rendezvous address, no ranks)."""
    env = os.environ
    started_by_accelerate = "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env
    mpi = any(k in env for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "WORLD_SIZE"))
    return started_by_accelerate and not mpi


def init_eval_group(device: str | torch.device | None = None) -> tuple[EvalGroup, torch.device]:
    """Join the launcher's processes (torchrun, `accelerate launch`) into one group; the device of this process.

    Nothing happens for a single process, and an already initialised `torch.distributed` is used as it is. A new
    group uses NCCL when this process runs on a CUDA device (`cuda:LOCAL_RANK`), gloo otherwise.

    Args:
        device: `cuda`, `cpu`, ... (default: CUDA when available); a bare `cuda` becomes `cuda:LOCAL_RANK`.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    world = launched_world_size()
    if device.type == "cuda" and device.index is None and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dist.is_available() and dist.is_initialized():
        return EvalGroup.current(), device
    if world <= 1:
        if accelerate_single_process_launch():
            warnings.warn(
                "`accelerate launch` started this evaluation as ONE process: on a machine without GPUs, "
                "`accelerate launch --num_processes N` starts N processes only with `--multi_gpu` (or under mpirun). "
                "Evaluating in one process; for N use `torchrun --nproc_per_node N -m mmt_ard.cli.evaluate ...` or "
                "`accelerate launch --multi_gpu --num_processes N -m mmt_ard.cli.evaluate ...`.",
                stacklevel=2,
            )
        return EvalGroup(), device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=EVAL_TIMEOUT)
    return EvalGroup(dist.get_rank(), dist.get_world_size(), owns_process_group=True), device
