"""LoRA students (peft): wrap a `CLIPModel`, train only the adapters, merge the result back into a plain `CLIPModel`.

The paper's LoRA setting is r=16, alpha=16, dropout 0.1 on the attention projections of the student's vision tower.

>>> student = apply_lora(clip, r=16, alpha=16, dropout=0.1)
>>> trainer = MMTARDTrainer(model=student, ...)   # any preset: only adapter parameters are trained
>>> trainer.train(); trainer.save_model("out")      # writes adapter_model.safetensors + adapter_config.json
>>> merge_checkpoint(base_clip, "out", "out-merged", processor=processor)   # a plain CLIPModel directory

How the rest of the library sees a peft student:

* `ZeroShotCLIP` calls the peft model, so the training forward *and the attack* run through the adapters (the
  attack sees the full, adapted model); `ZeroShotCLIP.base` is the `CLIPModel` with the adapters injected;
* `MMTARDTrainer._save` writes the adapter only (`adapter_model.safetensors`), `load_student_weights` restores it,
  so resuming works as for a full fine-tune;
* the frozen `original` teacher of `fare`/`pmg-aft` is a copy of the model *without* adapters (`unadapted_copy`).
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
TOWERS = ("vision", "text", "both")


def is_peft_model(model: nn.Module) -> bool:
    """Whether `model` is a peft wrapper (`PeftModel`)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _target_regex(target_modules, tower: str) -> str:
    towers = {"vision": "vision_model", "text": "text_model", "both": "(?:vision_model|text_model)"}[tower]
    names = "|".join(target_modules)
    return rf".*{towers}\.encoder\.layers\.\d+\.(?:self_attn|mlp)\.(?:{names})"


def apply_lora(
    clip: nn.Module,
    r: int = 16,
    alpha: float = 16,
    dropout: float = 0.1,
    target_modules: tuple[str, ...] | list[str] = ATTENTION_PROJECTIONS,
    tower: str = "vision",
    seed: int = 0,
):
    """Wrap a `CLIPModel` with LoRA adapters; every other parameter is frozen.

    Args:
        clip: a transformers `CLIPModel` (modified in place: the adapters are injected into it).
        r: adapter rank.
        alpha: LoRA scaling `alpha` (the update is scaled by `alpha / r`).
        dropout: dropout on the adapter input (training only; the attack runs in eval mode).
        target_modules: names of the linear layers in each encoder layer to adapt (attention: `q_proj`, `k_proj`,
            `v_proj`, `out_proj`; MLP: `fc1`, `fc2`).
        tower: `vision` (the paper's setting: the text tower stays frozen), `text` or `both`.
        seed: seed of the adapters' random initialisation (the global RNG is left as it was).

    Returns:
        The `peft.PeftModel`.
    """
    from peft import LoraConfig, get_peft_model

    if is_peft_model(clip):
        raise ValueError("`clip` is already a peft model: pass the plain CLIPModel to `apply_lora`.")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"`r`={r!r}: the LoRA rank must be an integer >= 1 (the paper uses 16).")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise ValueError(f"`alpha`={alpha!r}: the LoRA scaling must be a number > 0 (the paper uses 16).")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"`dropout`={dropout!r}: use a probability in [0, 1) (the paper uses 0.1).")
    if tower not in TOWERS:
        raise ValueError(f"`tower`={tower!r}: use one of {list(TOWERS)}.")
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    if not target_modules or not all(isinstance(t, str) and t.isidentifier() for t in target_modules):
        raise ValueError(
            f"`target_modules`={target_modules!r}: give layer names such as {list(ATTENTION_PROJECTIONS)}."
        )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules=_target_regex(target_modules, tower),
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(clip, config)


def adapter_parameter_names(model: nn.Module) -> set[str]:
    """Names of the LoRA parameters of `model` (as in `model.named_parameters()`)."""
    return {name for name, _ in model.named_parameters() if ".lora_" in name}


def unadapted_copy(clip: nn.Module) -> nn.Module:
    """A deep copy of the plain `CLIPModel` under `clip`, without any adapter (for the frozen `original` teacher)."""
    if is_peft_model(clip):
        # copy the wrapper, then take the adapters out of the copy (no merging: the original weights come back)
        return copy.deepcopy(clip).unload()
    from ..models import base_model

    return copy.deepcopy(base_model(clip))


def merge_and_save(model: nn.Module, output_dir: str | None = None, processor=None, inplace: bool = False):
    """Merge a LoRA student's adapters into its weights and return (and optionally save) a plain `CLIPModel`.

    Args:
        model: the peft student (e.g. `trainer.model.student.clip` after training).
        output_dir: if given, the merged model is written there (safetensors) with `processor`.
        processor: the student's `CLIPProcessor`, saved next to the weights.
        inplace: merge into `model` itself (saves memory; `model` is no longer a peft model afterwards).

    Returns:
        The merged `CLIPModel`.
    """
    if not is_peft_model(model):
        raise TypeError(f"`model` is a {type(model).__name__}, not a peft model: it has no adapters to merge.")
    merged = (model if inplace else copy.deepcopy(model)).merge_and_unload()
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        merged.save_pretrained(output_dir, safe_serialization=True)
        if processor is not None:
            processor.save_pretrained(output_dir)
    return merged


def merge_checkpoint(base_clip: nn.Module, checkpoint_dir: str, output_dir: str | None = None, processor=None):
    """Apply the adapter saved in `checkpoint_dir` (by `MMTARDTrainer`) to `base_clip`, merge, optionally save.

    Args:
        base_clip: the plain `CLIPModel` the adapter was trained on (modified in place).
        checkpoint_dir: a folder holding `adapter_config.json` and `adapter_model.safetensors`.
        output_dir: where to write the merged `CLIPModel` (safetensors), if given.
        processor: saved next to it.

    Returns:
        The merged `CLIPModel`.
    """
    from peft import PeftModel

    adapter = os.path.join(checkpoint_dir, "adapter_model.safetensors")
    if not os.path.isfile(adapter) or not os.path.isfile(os.path.join(checkpoint_dir, "adapter_config.json")):
        raise FileNotFoundError(
            f"`checkpoint_dir`={checkpoint_dir!r} holds no adapter_config.json + adapter_model.safetensors: pass a "
            "folder written by MMTARDTrainer for a LoRA student."
        )
    model = PeftModel.from_pretrained(base_clip, checkpoint_dir)
    return merge_and_save(model, output_dir, processor, inplace=True)
