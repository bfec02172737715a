"""Saving the trained student and pushing it to the Hub, as `mmt-ard-train` does at the end of a run.

>>> saved_as = save_student(trainer, output_dir, lora=True, merged=True)   # "merged weights (adapter in lora_adapter/)"
>>> url = push_to_hub(output_dir, "you/clip-b32-mmt-ard")                   # a HubPushError, with the fix, on failure
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..training.trainer import MMTARDTrainer

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
NOT_PUSHED = ["checkpoint-*", "checkpoint-*/**", "runs/**", "checksum_rank*"]


class HubPushError(RuntimeError):
    """Pushing to the Hub failed; everything was saved in `output_dir` first."""


def save_student(trainer: MMTARDTrainer, output_dir: str, lora: bool = False, merged: bool = False) -> str:
    """Save the student (full weights, the LoRA adapter, or merged LoRA) and its processor; returns what was saved.

    Args:
        trainer: the trainer after `train()`.
        output_dir: where the student goes.
        lora: the student is a LoRA (peft) model.
        merged: with LoRA, save a plain `CLIPModel` with the adapters merged into its weights (the adapter itself
            moves to `output_dir/lora_adapter/`); otherwise save the adapter only.
    """
    trainer.save_model(output_dir)
    if not lora:
        return "full weights"
    if not merged:
        return "LoRA adapter"
    if trainer.is_world_process_zero():
        adapter_dir = os.path.join(output_dir, "lora_adapter")
        for name in ADAPTER_FILES:
            path = os.path.join(output_dir, name)
            if os.path.exists(path):
                os.makedirs(adapter_dir, exist_ok=True)
                os.replace(path, os.path.join(adapter_dir, name))
        peft_model = trainer.accelerator.unwrap_model(trainer.model).student.clip
        from ..training.lora import merge_and_save

        merge_and_save(peft_model, output_dir, inplace=True)
    return "merged weights (adapter in lora_adapter/)"


def push_to_hub(output_dir: str, hub_model_id: str, token: str | None = None, private: bool | None = None) -> str:
    """Upload `output_dir` (model, processor, model card, results) to `hub_model_id`; a `HubPushError` on failure."""
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        repo = api.create_repo(hub_model_id, exist_ok=True, private=private)
        api.upload_folder(
            repo_id=repo.repo_id,
            folder_path=output_dir,
            commit_message="MMT-ARD robust student",
            ignore_patterns=NOT_PUSHED,
        )
        return repo.url if hasattr(repo, "url") else str(repo)
    except Exception as err:  # offline, no token, no permission, network errors: all end the same way
        raise HubPushError(
            f"Could not push to the Hub as {hub_model_id!r} ({type(err).__name__}: {err}). Nothing is lost: the model, "
            f"processor and model card are saved in {os.path.abspath(output_dir)!r}. Push them later, once the "
            f"network and a token work, with `hf upload {hub_model_id} {output_dir}`."
        ) from err
