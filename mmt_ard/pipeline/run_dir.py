"""A training run's `output_dir`: does it hold another run, clearing it for `--overwrite_output_dir`, the run's
settings (`mmt_ard_run.json`) and what changed since a checkpoint was made.

What marks a run (`RUN_FILES`, `checkpoint-*` folders): the student's weights, the trainer's saved config and state,
`results.json`, `mmt_ard_run.json`, `preempted.json`. A folder holding none of them, nor any other file a run writes
(`README.md`, `config.json`, tokenizer files: `RUN_OUTPUT_PATTERNS`), is free. Each checkpoint holds the run's `MMTARDConfig` (`mmt_ard_config.json`, written by `MMTARDTrainer`) and the
command's own arguments (`mmt_ard_run.json`, written by `RunSettingsCallback`); `settings_changes` compares them
with a resumed run's.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from dataclasses import asdict

from transformers import TrainerCallback

from ..training.checkpointing import STAGING_PREFIX, is_complete_checkpoint, last_good_checkpoint, list_checkpoints
from ..training.config import MMTARDConfig
from ..training.model_card import MMTARD_SETTING_KEYS
from .arguments import ScriptArguments

logger = logging.getLogger(__name__)

RUN_SETTINGS_NAME = "mmt_ard_run.json"
CONFIG_JSON_NAME = "mmt_ard_config.json"  # = trainer.CONFIG_JSON_NAME
# files whose presence says "a run was here"
RUN_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    CONFIG_JSON_NAME,
    "mmt_ard_state.json",
    "results.json",
    RUN_SETTINGS_NAME,
    "preempted.json",
)
# what a run writes into output_dir, removed by `clear_run` (`--overwrite_output_dir`); other files stay
RUN_OUTPUT_PATTERNS = RUN_FILES + (
    "model-*.safetensors",
    "adapter_config.json",
    "config.json",
    "generation_config.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer*.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "README.md",
    "mmt_ard_projections.safetensors",
    "skipped_samples*.json*",
    "checksum_rank*.json",
)
RUN_OUTPUT_FOLDERS = ("checkpoint-*", f"{STAGING_PREFIX}*checkpoint-*", "lora_adapter")
# what must match for a resumed run to continue the same experiment
CONFIG_SETTINGS = (
    "preset",
    "seed",
    "data_seed",
    "learning_rate",
    "weight_decay",
    "lr_scheduler_type",
    "warmup_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    *MMTARD_SETTING_KEYS,
)
SCRIPT_SETTINGS = (
    "student",
    "student_processor",
    "robust_teacher",
    "robust_teacher_processor",
    "clean_teacher",
    "clean_teacher_processor",
    "dataset_name",
    "dataset_config_name",
    "train_files",
    "train_split",
    "image_column",
    "label_column",
    "class_names",
    "class_names_file",
    "max_train_samples",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "quick",
    "embedded_clean_steps",
    "embedded_robust_steps",
    "embedded_student_steps",
)
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1", "last"), ("false", "no", "0", "none", "")


class RunFolderError(ValueError):
    """An `output_dir` or `--resume_from_checkpoint` that a run cannot use (a `ValueError`: the commands report it
    as a configuration error, exit status 2). Its message reads like the commands' `UsageError`:
    `<what>=<value>: <why>. <fix>`."""

    def __init__(self, what: str, value=None, why: str = "", fix: str = ""):
        self.what, self.value, self.why, self.fix = what, value, why, fix
        super().__init__(f"{what}={value!r}: {why.rstrip('.')}. {fix}".strip())


def run_contents(output_dir: str) -> list[str]:
    """What in `output_dir` marks a run: `checkpoint-*` folders and `RUN_FILES`, sorted; `[]` for a free folder."""
    if not os.path.isdir(output_dir):
        return []
    found = [os.path.basename(path) for _, path in list_checkpoints(output_dir)]
    found += [name for name in RUN_FILES if os.path.isfile(os.path.join(output_dir, name))]
    return found


def files_a_run_writes(output_dir: str) -> list[str]:
    """Files in `output_dir` that a run would write over (`RUN_OUTPUT_PATTERNS`: `README.md`, `config.json`, ...)."""
    if not os.path.isdir(output_dir):
        return []
    return sorted(
        name
        for name in os.listdir(output_dir)
        if os.path.isfile(os.path.join(output_dir, name))
        and any(fnmatch.fnmatch(name, p) for p in RUN_OUTPUT_PATTERNS)
    )


def _summary(found: list[str]) -> str:
    checkpoints = [f for f in found if f.startswith("checkpoint-")]
    files = [f for f in found if not f.startswith("checkpoint-")]
    more = len(files) - 4
    parts = files[:4] + ([f"{more} more file{'s' if more > 1 else ''}"] if more > 0 else [])
    if checkpoints:
        parts.append(f"{len(checkpoints)} checkpoint(s) up to {checkpoints[-1]}")
    return ", ".join(parts)


def resume_value(value) -> str | bool | None:
    """`--resume_from_checkpoint` as `Trainer.train` takes it: True for `true`/`yes`/`1`/`last`, None for
    `false`/`no`/`none`, else the path."""
    if value is None or isinstance(value, bool):
        return value or None
    text = str(value).strip()
    if text.lower() in TRUE_WORDS:
        return True
    if text.lower() in FALSE_WORDS:
        return None
    return text


def check_output_dir(output_dir: str, resume, overwrite: bool) -> None:
    """Refuse an `output_dir` that is a file, cannot be created, or holds another run that neither
    `--resume_from_checkpoint` nor `--overwrite_output_dir` says what to do with; check the checkpoint to resume."""
    what = "--output_dir"
    if not str(output_dir).strip():
        raise RunFolderError(what, output_dir, "is empty", "Give a folder path (it is created if needed).")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise RunFolderError(
            what, output_dir, "is a file, not a folder", "Give a folder path (it is created if needed)."
        )
    parent = os.path.abspath(output_dir)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise RunFolderError(what, output_dir, f"cannot be created: {parent!r} is a file", "Give another folder path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunFolderError(
            what,
            output_dir,
            f"cannot be written: no write permission on {parent!r}",
            "Give a folder you can write to.",
        )
    if resume is not None and overwrite:
        raise RunFolderError(
            "--resume_from_checkpoint",
            resume,
            "given with --overwrite_output_dir: continue the run or start over, not both",
            "Give one of them.",
        )
    if resume is not None:
        check_resume(output_dir, resume)
        return
    if overwrite:
        return
    found = run_contents(output_dir)
    if found:
        raise RunFolderError(
            what,
            output_dir,
            f"holds another run ({_summary(found)})",
            "Continue it with --resume_from_checkpoint true (or a checkpoint-N path), start over in it with "
            "--overwrite_output_dir (its run files are deleted), or pick another --output_dir.",
        )
    clobbered = files_a_run_writes(output_dir)
    if clobbered:
        raise RunFolderError(
            what,
            output_dir,
            f"holds files a run writes and would replace ({', '.join(clobbered[:5])})",
            "Pick another --output_dir, or give --overwrite_output_dir to replace them.",
        )


def check_resume(output_dir: str, resume) -> str:
    """The checkpoint a `--resume_from_checkpoint` value points at (a complete one), or a `RunFolderError`."""
    what = "--resume_from_checkpoint"
    if resume is True:
        found = last_good_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if found is None:
            raise RunFolderError(
                what,
                "true",
                f"{output_dir!r} holds no complete checkpoint-* folder to resume",
                "Leave it out to start a new run, or give the path of a checkpoint-N folder.",
            )
        return found
    if not os.path.isdir(resume):
        raise RunFolderError(
            what,
            resume,
            "no such checkpoint folder",
            "Give a checkpoint-N folder, or true for the newest complete one in --output_dir.",
        )
    if not is_complete_checkpoint(resume):
        raise RunFolderError(
            what,
            resume,
            "is not a complete checkpoint (it needs trainer_state.json and the student's weights)",
            "Give a checkpoint-N folder written by mmt-ard-train, or true for the newest complete one.",
        )
    return resume


def clear_run(output_dir: str) -> list[str]:
    """Delete what an earlier run wrote into `output_dir` (`--overwrite_output_dir`): its checkpoints, weights,
    processor, model card and result files. Files the library does not write stay. Returns what was deleted."""
    if not os.path.isdir(output_dir):
        return []
    removed = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if os.path.isdir(path) and any(fnmatch.fnmatch(name, p) for p in RUN_OUTPUT_FOLDERS):
            shutil.rmtree(path)
            removed.append(name)
        elif os.path.isfile(path) and any(fnmatch.fnmatch(name, p) for p in RUN_OUTPUT_PATTERNS):
            os.remove(path)
            removed.append(name)
    if removed:
        logger.warning("--overwrite_output_dir: deleted the earlier run in %s: %s", output_dir, ", ".join(removed))
    return removed


# ---- the run's settings ----


def run_settings(sa: ScriptArguments, config: MMTARDConfig) -> dict:
    """What `mmt_ard_run.json` holds: the command's arguments and the config's run-defining fields."""
    return json.loads(
        json.dumps(
            {
                "script_args": asdict(sa),
                "config": {key: getattr(config, key, None) for key in CONFIG_SETTINGS},
            },
            default=str,
        )
    )


def write_run_settings(folder: str, settings: dict) -> None:
    """Write `mmt_ard_run.json` into `folder` (atomically)."""
    path = os.path.join(folder, RUN_SETTINGS_NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2)
    os.replace(path + ".tmp", path)


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def settings_changes(checkpoint: str, settings: dict) -> list[str]:
    """`name: old -> new` for each run-defining setting that differs between `checkpoint` and `settings`.

    The checkpoint's config is its `mmt_ard_config.json`; its arguments are its `mmt_ard_run.json` (else the one of
    its run's folder). Settings a checkpoint does not record are not compared.
    """
    saved_config = _read_json(os.path.join(checkpoint, CONFIG_JSON_NAME)) or {}
    saved_run = _read_json(os.path.join(checkpoint, RUN_SETTINGS_NAME))
    if saved_run is None:
        saved_run = _read_json(os.path.join(os.path.dirname(os.path.normpath(checkpoint)), RUN_SETTINGS_NAME)) or {}
    old = {**saved_run.get("script_args", {}), **saved_config}
    new = {**settings["script_args"], **settings["config"]}
    changes = []
    for key in SCRIPT_SETTINGS + CONFIG_SETTINGS:
        if key in old and key in new and not _same(old[key], new[key]):
            changes.append(f"{key}: {old[key]!r} -> {new[key]!r}")
    return changes


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return a == b


def warn_settings_changes(checkpoint: str, settings: dict) -> list[str]:
    """Log a warning naming the settings a resumed run changes since `checkpoint` was made; returns them."""
    changes = settings_changes(checkpoint, settings)
    if changes:
        logger.warning(
            "Resuming %s with other settings than it was made with: %s. The run continues with the new ones; if that "
            "is not what you meant, stop and rerun with the checkpoint's settings.",
            checkpoint,
            "; ".join(changes),
        )
    return changes


class RunSettingsCallback(TrainerCallback):
    """Writes the run's settings (`mmt_ard_run.json`) into every checkpoint, so a resume can tell what changed."""

    def __init__(self, settings: dict):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(folder):
                write_run_settings(folder, self.settings)
        return control
