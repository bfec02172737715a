"""Several processes: which setup really runs, CPU process groups, FSDP2 on CPU, and global-batch weighting.

What goes wrong without this module, each seen in a 2-process run on a machine without GPUs:

* `accelerate launch --multi_gpu --num_processes 2` (or `torchrun`) without `use_cpu=True`: Accelerate finds no GPU,
  sets up *no* distributed training, and each process trains alone, believes it is the main process and writes the
  same checkpoint folders as the other one (the first save then fails, one process renaming the staged folder while
  the other still writes into it). `cpu_multi_process_launch` lets `MMTARDConfig` switch such a launch to CPU (gloo)
  so that the processes form one group, and `check_one_process_group` refuses to train when they still did not;
* Accelerate's FSDP plugin is silently dropped on CPU (its state only shards on accelerator devices), so an FSDP
  config trained with DDP instead. `enable_fsdp_on_cpu` keeps FSDP2 on CPU (gloo), which is how the FSDP path is
  tested without GPUs;
* stateful teacher weightings (`sigmoid`, `mtard`) updated on each rank's own shard of the batch drift apart across
  ranks, differ from a one-process run on the same global batch, and a checkpoint (written by rank 0) cannot resume
  the other ranks exactly. `GlobalBatchWeighting` feeds them the whole global batch on every rank.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers.utils import logging

logger = logging.get_logger(__name__)


def launched_world_size() -> int:
    """How many processes the launcher started (`WORLD_SIZE` of torchrun / `accelerate launch`; 1 if none)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def has_accelerator_device() -> bool:
    """Whether a device Accelerate can form a process group on exists (CUDA/ROCm, XPU, NPU, MLU, MUSA, HPU)."""
    if torch.cuda.is_available():
        return True
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return True
    try:
        from accelerate.utils import is_mlu_available, is_musa_available, is_npu_available

        return bool(is_npu_available() or is_mlu_available() or is_musa_available())
    except ImportError:  # pragma: no cover - older accelerate
        return False


def cpu_multi_process_launch() -> bool:
    """Several processes were launched on a machine without an accelerator: they can only train together on CPU."""
    return launched_world_size() > 1 and not has_accelerator_device()


def check_one_process_group(accelerator) -> None:
    """Raise if the launched processes did not end up in Accelerate's process group (they would each train alone).

    Args:
        accelerator: the Trainer's `Accelerator`.
    """
    launched = launched_world_size()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        launched = max(launched, torch.distributed.get_world_size())
    if launched > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"{launched} processes were launched but Accelerate set up no distributed training "
            f"(distributed_type={accelerator.distributed_type.value}): each process would train alone and they would "
            "overwrite each other's checkpoints. On a machine without GPUs pass `use_cpu=True` (gloo); with GPUs "
            "check that every process sees one (CUDA_VISIBLE_DEVICES)."
        )


def fsdp_requested(args) -> bool:
    """Whether the run asks for FSDP: an Accelerate FSDP config (`ACCELERATE_USE_FSDP`) or `TrainingArguments.fsdp`."""
    from_env = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return from_env or getattr(args, "fsdp_plugin_args", None) is not None


def enable_fsdp_on_cpu(accelerator, args) -> bool:
    """Keep FSDP when Accelerate dropped it on a multi-process CPU (gloo) group; returns whether it did.

    Accelerate's `AcceleratorState` only turns an FSDP plugin on for accelerator devices: on `MULTI_CPU` it trains
    with DDP and says nothing. `torch.distributed.fsdp.fully_shard` itself runs on CPU with gloo, so the plugin is put
    back in place exactly as Accelerate does on GPUs (same plugin, built from the same environment or arguments).

    Args:
        accelerator: the Trainer's `Accelerator` (its shared state is changed in place).
        args: the `MMTARDConfig` (its `fsdp_plugin_args`, when set, build the plugin).
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU or not fsdp_requested(args):
        return False
    plugin_args = getattr(args, "fsdp_plugin_args", None)
    plugin = FullyShardedDataParallelPlugin(**plugin_args) if plugin_args else FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(
            f"FSDP on CPU needs FSDP2 (`fsdp_version: 2` in the Accelerate config), got version {plugin.fsdp_version}."
        )
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    from accelerate.state import PartialState

    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as Accelerate does (state.py)
    logger.info(f"FSDP2 on CPU: {accelerator.num_processes} processes, gloo backend.")
    return True


class _Holder(nn.Module):
    """Lists parameters for `FullyShardedDataParallelPlugin.ignored_modules` (which takes modules, not parameters)."""

    def __init__(self, params: list[nn.Parameter]):
        super().__init__()
        self.held = nn.ParameterList(params)


def ignore_scalar_parameters(plugin, model: nn.Module) -> list[str]:
    """Keep 0-d parameters (CLIP's `logit_scale`) out of FSDP sharding; returns their names.

    `fully_shard` refuses scalar parameters. Ignored parameters stay ordinary, whole tensors on every rank and keep
    their shape, so a saved model is still a standard `CLIPModel`. They must not train (their gradients would not be
    synchronised): `MMTARDTrainer` freezes `logit_scale`.

    Args:
        plugin: the Accelerate `FullyShardedDataParallelPlugin` (its `ignored_modules` gains a holder module).
        model: the module about to be sharded.
    """
    scalars = [(name, p) for name, p in model.named_parameters() if p.dim() == 0]
    trainable = [name for name, p in scalars if p.requires_grad]
    if trainable:
        raise ValueError(
            f"Scalar parameters {trainable} train, but FSDP cannot shard 0-d parameters and would not synchronise "
            "their gradients: freeze them (`p.requires_grad_(False)`) or train without FSDP."
        )
    if not scalars:
        return []
    ignored = plugin.ignored_modules
    if isinstance(ignored, str):
        raise TypeError(
            f"`fsdp_ignored_modules`={ignored!r} (a pattern) cannot be combined with the scalar parameters "
            f"{[n for n, _ in scalars]} that FSDP must ignore: pass the modules themselves instead of a pattern."
        )
    plugin.ignored_modules = [*(ignored or []), _Holder([p for _, p in scalars])]
    return [name for name, _ in scalars]


def wrap_student_layers(plugin, model: nn.Module, layer_classes: tuple[str, ...], family: str) -> list[str]:
    """The FSDP units of a transformer-based wrap: the student's own encoder layers unless the config names others.

    The shipped `fsdp.yaml` names no layer class, so one config serves CLIP (`CLIPEncoderLayer`), SigLIP
    (`SiglipEncoderLayer`) and SigLIP 2 students alike. Other wrap policies are left as they are.

    Args:
        plugin: the Accelerate `FullyShardedDataParallelPlugin`.
        model: the module about to be sharded (the `StudentBundle`).
        layer_classes: class names of the student family's encoder layers (`ModelFamily.encoder_layer_classes`).
        family: the family's title, for the message.

    Returns:
        The layer class names the wrap uses (empty when the policy is not transformer-based).
    """
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    if getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy) is not transformer_auto_wrap_policy:
        return []
    present = {type(m).__name__ for m in model.modules()}
    names = plugin.transformer_cls_names_to_wrap
    if not names:
        plugin.transformer_cls_names_to_wrap = [n for n in layer_classes if n in present]
        return list(plugin.transformer_cls_names_to_wrap)
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(
            f"`fsdp_transformer_layer_cls_to_wrap`={','.join(names)}: {missing} is not in the {family} student, whose "
            f"layers are {[n for n in layer_classes if n in present]}. Name those, or leave the field out of the "
            "Accelerate config (the student's own layers are wrapped)."
        )
    return list(names)


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` went through FSDP2's `fully_shard` (its parameters are DTensors held in shards)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch < 2.6
        return False
    return isinstance(model, FSDPModule)


def load_full_state_into_sharded(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full (unsharded) tensors by name into an FSDP2-sharded `model`; each process keeps its own shards.

    Every process passes the same full tensors (each reads the checkpoint files itself), so nothing is broadcast.

    Args:
        model: the sharded module.
        state: parameter name -> full tensor, a subset of `model.state_dict()`'s names.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    unknown = sorted(set(state) - set(model.state_dict()))
    if unknown:
        raise RuntimeError(f"The checkpoint holds tensors the model does not have: {unknown[:5]}.")
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


def unsharded_copy(clip: nn.Module, sharded_owner: nn.Module, prefix: str) -> nn.Module:
    """A whole, ordinary copy of a model that FSDP sharded in place, on every process (a collective call).

    Args:
        clip: the sharded `PreTrainedModel` (its config builds the copy).
        sharded_owner: the FSDP root module that holds `clip` (e.g. the Trainer's `StudentBundle`).
        prefix: `clip`'s name in `sharded_owner`'s state dict, with the trailing dot (`"student.clip."`).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(sharded_owner, options=StateDictOptions(full_state_dict=True))
    copy = type(clip)(clip.config)
    copy.load_state_dict({k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}, strict=False)
    return copy.to(next(iter(full.values())).device)


def distributed_setup(accelerator) -> str:
    """The setup that really runs, in words: `"FSDP2, 2 processes"`, `"DDP, 2 processes"` or `"single process"`."""
    from accelerate.utils import DistributedType

    n = accelerator.num_processes
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        version = getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1)
        return f"FSDP{version if version == 2 else ''}, {n} process{'es' if n > 1 else ''}"
    if kind == DistributedType.DEEPSPEED:
        return f"DeepSpeed, {n} process{'es' if n > 1 else ''}"
    if n > 1:
        return f"DDP, {n} processes"
    return "single process"


class GlobalBatchWeighting:
    """A stateful weighting strategy fed the whole global batch on every rank.

    Per-sample weights are elementwise in the confidences once the running statistics are fixed, so computing them
    on the gathered `(K, B_global)` confidences and keeping this rank's columns gives exactly the one-process values;
    `update` sees the gathered confidences and the per-teacher losses summed over ranks (each rank's loss is its share
    of the global batch). Every rank therefore holds the same state, which rank 0 saves and every rank resumes from.

    Args:
        inner: the `WeightingStrategy`.
        accelerator: the Trainer's `Accelerator` (its `gather` and `reduce`).
    """

    def __init__(self, inner, accelerator):
        self.inner = inner
        self.accelerator = accelerator

    def __getattr__(self, name):  # name, needs_confidence, state_dict, load_state_dict, ...
        return getattr(self.inner, name)

    def _gather(self, confidences: torch.Tensor) -> tuple[torch.Tensor, slice]:
        """`(K, B_r)` on rank r -> `(K, sum_r B_r)` in rank order, and this rank's columns in it.

        Batches may differ in size across ranks (e.g. `bad_samples='skip'` dropped rows): they are padded to the
        largest for the collective and cut back after it.
        """
        k, b = confidences.shape
        sizes = self.accelerator.gather(torch.tensor([b], device=confidences.device)).tolist()  # (world,)
        padded = confidences.detach().new_zeros(max(sizes), k)
        padded[:b] = confidences.detach().t()
        rows = self.accelerator.gather(padded).view(len(sizes), max(sizes), k)  # (world, B_max, K)
        gathered = torch.cat([rows[r, :n] for r, n in enumerate(sizes)]).t()  # (K, sum B_r)
        start = sum(sizes[: self.accelerator.process_index])
        return gathered, slice(start, start + b)

    def weights(self, confidences: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        gathered, mine = self._gather(confidences)
        return self.inner.weights(gathered, coefs)[:, mine].to(confidences)

    def update(self, confidences: torch.Tensor, per_teacher_losses: torch.Tensor) -> None:
        gathered, _ = self._gather(confidences)
        losses = self.accelerator.reduce(per_teacher_losses.detach().float(), reduction="sum")
        self.inner.update(gathered, losses)


def needs_global_batch(weighting) -> bool:
    """Whether a weighting strategy keeps state that depends on the batch (so ranks must see the same one)."""
    return bool(weighting.state_dict())


_GLOO_GROUPS: dict[int, object] = {}  # default process group id -> a gloo group over the same processes


def object_group(timeout=None):
    """A gloo group over the default group's processes, for exchanging Python objects on the CPU (the default group
    itself when it is gloo); created once, by every process (a collective call the first time).

    Args:
        timeout: `datetime.timedelta` of its collectives (default: torch's).
    """
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    key = id(dist.distributed_c10d._get_default_group())
    if key not in _GLOO_GROUPS:
        kwargs = {"timeout": timeout} if timeout is not None else {}
        _GLOO_GROUPS[key] = dist.new_group(backend="gloo", **kwargs)
    return _GLOO_GROUPS[key]


def sum_over_processes(sums: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """`{key: (total, weight)}` added up over all processes (a collective call; this process's own without
    `torch.distributed`). Keys missing on some processes count as `(0, 0)` there.

    Args:
        sums: this process's `step_metrics.weighted_sums`.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(sums)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, dict(sums), group=object_group())
    out: dict[str, tuple[float, float]] = {}
    for part in parts:
        for key, (total, weight) in part.items():
            t, w = out.get(key, (0.0, 0.0))
            out[key] = (t + total, w + weight)
    return out


def shutdown_process_group(barrier: bool = True) -> None:
    """End a multi-process run cleanly: wait for every rank, then destroy the default process group.

    A gloo group still alive when the interpreter exits can abort a rank in its C++ destructor ("terminate called
    without an active exception"), turning a finished run into a failed launch. Call it once, at the very end.

    Args:
        barrier: wait for every rank first (not after an error, when the others may never arrive).
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        _GLOO_GROUPS.clear()
        dist.destroy_process_group()
