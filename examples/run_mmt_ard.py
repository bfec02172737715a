#!/usr/bin/env python
"""Make a CLIP image encoder adversarially robust with MMT-ARD (or a baseline preset), evaluate it, save it.

With no model arguments it runs the **embedded default**, offline: tiny CLIP teachers (a clean one, and a robust
one adversarially fine-tuned from it) and a smaller student are trained on scikit-learn's bundled digits (or taken
from `--embedded_cache_dir`), the student is distilled with the `mmt-ard` preset, and a table of clean and PGD
accuracy of both teachers and of the student before and after is printed and saved with the student.

    python examples/run_mmt_ard.py                                  # embedded default, 1-2 min on 2 CPU cores
    python examples/run_mmt_ard.py my_run.yaml --max_steps 100      # a YAML/JSON config; flags override it
    python examples/run_mmt_ard.py --config my_run.json --preset single-teacher
    accelerate launch --config_file examples/accelerate_configs/multi_gpu_ddp.yaml examples/run_mmt_ard.py \\
        --student openai/clip-vit-base-patch32 \\
        --robust_teacher LEAF-CLIP/CLIP-ViT-L-FARE2 --robust_teacher_processor openai/clip-vit-large-patch14 \\
        --clean_teacher openai/clip-vit-large-patch14 \\
        --dataset_name ILSVRC/imagenet-1k --eval_split validation --streaming --max_steps 5000 ...

`python examples/run_mmt_ard.py --help` lists every option: the script's own (`ScriptArguments` below) and every
`MMTARDConfig` / `TrainingArguments` field. See docs/quickstart.md and docs/configuration.md.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from mmt_ard import MMTARDConfig, MMTARDTrainer, Teacher
from mmt_ard.data import (
    ImageClassificationCollator,
    load_image_dataset,
    prepare_dataset,
    resolve_class_names,
)
from mmt_ard.model_card import MMTARD_SETTING_KEYS, format_eps, robustness_table, save_model_card

logger = logging.getLogger("run_mmt_ard")

CONFIG_EXTENSIONS = (".yaml", ".yml", ".json")
DEFAULT_OUTPUT_DIR = os.path.join("outputs", "mmt-ard")

# The embedded default's distillation phase (method.md section 8): parser defaults, so a config file or a flag wins.
EMBEDDED_DEFAULTS = {
    "preset": "mmt-ard",
    "max_steps": 200,
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 128,
    "learning_rate": 5e-4,
    "warmup_steps": 0.05,
    "attack_eps": 8 / 255,
    "attack_steps": 5,
    "attack_step_size": 2 / 255,
    "eval_attack_eps": 8 / 255,
    "eval_attack_steps": 10,
    "eval_attack_step_size": 2 / 255,
    "logging_steps": 25,
    "save_strategy": "no",
    "report_to": "none",
}
# `--quick`: the same pipeline with a handful of steps (smoke tests, CI); distinct cache entries
QUICK_DEFAULTS = {"max_steps": 4, "eval_attack_steps": 3, "logging_steps": 2}
QUICK_RECIPE = {"clean_steps": 4, "robust_steps": 3, "student_steps": 4}
QUICK_MAX_EVAL_SAMPLES = 64


@dataclass
class ScriptArguments:
    """Arguments of `examples/run_mmt_ard.py` that are not training arguments (those live in `MMTARDConfig`).

    Args:
        config: a `.yaml`/`.yml`/`.json` file of arguments (script and `MMTARDConfig` fields); flags override it.
            It may also be given as the first positional argument.
        student: the student `CLIPModel`: Hub id or local path. Unset: the embedded default (tiny CLIPs on digits).
        student_processor: where the student's processor lives if not with the model.
        robust_teacher: the robust teacher (sees adversarial images): Hub id or local path.
        robust_teacher_processor: its processor's Hub id or path (e.g. `openai/clip-vit-large-patch14` for
            `LEAF-CLIP/CLIP-ViT-L-FARE2`, whose repository has none).
        clean_teacher: the clean teacher (sees clean images): Hub id or local path.
        clean_teacher_processor: its processor's Hub id or path.
        lora_r: LoRA rank of the student's vision attention projections (0: full fine-tuning of the vision tower).
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        lora_target_modules: module names inside the vision tower that get LoRA adapters.
        save_merged: with LoRA, save the student with the adapters merged into its weights (a plain `CLIPModel`;
            the adapter goes to `output_dir/lora_adapter`); otherwise save the adapter only.
        dataset_name: a Hub dataset id, or a local directory (image folder, parquet/arrow files, `save_to_disk`).
        dataset_config_name: the Hub dataset's configuration.
        train_files: local `.parquet`/`.arrow` training files (instead of `dataset_name`).
        eval_files: local `.parquet`/`.arrow` evaluation files.
        train_split: training split of `dataset_name`.
        eval_split: evaluation split of `dataset_name` (`none`: no evaluation).
        image_column: the column holding images (encoded bytes, an `Image` feature, paths or arrays).
        label_column: the column holding integer labels (or class names).
        class_names: class names in label-id order (default: the label column's `ClassLabel`).
        class_names_file: a file of class names: one per line, a JSON list, or JSON with a `classes` list.
        streaming: stream the datasets (`IterableDataset`; needs `--max_steps`).
        max_train_samples: use this many training samples (a seeded random subset).
        max_eval_samples: evaluate on this many samples (a seeded random subset).
        dataset_cache_dir: the `datasets` cache directory.
        eval_eps: L-inf budgets of the final PGD evaluation, as fractions (`2/255 4/255`) or floats; default: the
            config's `eval_attack_eps`. Step size scales with eps (`eval_attack_step_size / eval_attack_eps`).
        eval_before_training: also evaluate the student before training (the "before" rows of the table).
        eval_teachers: also evaluate the teachers (always on in the embedded default).
        embedded_cache_dir: where the embedded default keeps its trained teachers and student (`none`: no cache).
        quick: the embedded default with a handful of steps and 64 evaluation images (a smoke test).
        embedded_clean_steps: clean-teacher steps of the embedded default (default 300).
        embedded_robust_steps: robust-teacher fine-tuning steps of the embedded default (default 200).
        embedded_student_steps: student pre-training steps of the embedded default (default 200).
        num_threads: CPU threads of torch (default: torch's own, 1 for the embedded default, whose tiny matrices
            run fastest single-threaded, above all on a busy machine).
        dump_checksums: write `checksum_rank<r>.json` (a hash of the student's weights on each process) to
            `output_dir`: identical files on every rank show that DDP kept the replicas in sync.
    """

    config: str | None = field(
        default=None, metadata={"help": "A .yaml/.yml/.json file of arguments; flags override it."}
    )
    student: str | None = field(
        default=None, metadata={"help": "Student CLIPModel (Hub id or path). Unset: the offline embedded default."}
    )
    student_processor: str | None = field(default=None, metadata={"help": "Student processor id/path if elsewhere."})
    robust_teacher: str | None = field(default=None, metadata={"help": "Robust teacher CLIPModel (Hub id or path)."})
    robust_teacher_processor: str | None = field(
        default=None, metadata={"help": "Robust teacher's processor (e.g. openai/clip-vit-large-patch14 for FARE2)."}
    )
    clean_teacher: str | None = field(default=None, metadata={"help": "Clean teacher CLIPModel (Hub id or path)."})
    clean_teacher_processor: str | None = field(default=None, metadata={"help": "Clean teacher's processor id/path."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the student's vision tower (0: full fine-tune)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"],
        metadata={"help": "Vision-tower module names given LoRA adapters."},
    )
    save_merged: bool = field(
        default=False, metadata={"help": "With LoRA: save merged weights (plain CLIPModel) instead of the adapter."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id or local dir (image folder / parquet / arrow / save_to_disk)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_files: list[str] | None = field(default=None, metadata={"help": "Local .parquet/.arrow training files."})
    eval_files: list[str] | None = field(default=None, metadata={"help": "Local .parquet/.arrow evaluation files."})
    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: str = field(default="validation", metadata={"help": "Evaluation split ('none': no evaluation)."})
    image_column: str = field(default="image", metadata={"help": "Image column."})
    label_column: str = field(default="label", metadata={"help": "Label column (ints or class names)."})
    class_names: list[str] | None = field(default=None, metadata={"help": "Class names in label order."})
    class_names_file: str | None = field(
        default=None, metadata={"help": "Class names file: one per line, a JSON list, or JSON with 'classes'."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the datasets (needs --max_steps)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use a seeded subset of this size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on a seeded subset of this size."})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "datasets cache directory."})
    eval_eps: list[str] | None = field(
        default=None, metadata={"help": "Final PGD budgets, e.g. 2/255 4/255 (default: eval_attack_eps)."}
    )
    eval_before_training: bool = field(default=True, metadata={"help": "Also evaluate the student before training."})
    eval_teachers: bool = field(default=False, metadata={"help": "Also evaluate the teachers (on in embedded mode)."})
    embedded_cache_dir: str = field(
        default=os.path.join("~", ".cache", "mmt_ard", "embedded"),
        metadata={"help": "Cache of the embedded default's teachers and student ('none': no cache)."},
    )
    quick: bool = field(default=False, metadata={"help": "Embedded default with a few steps (smoke test)."})
    embedded_clean_steps: int | None = field(default=None, metadata={"help": "Embedded clean-teacher steps (300)."})
    embedded_robust_steps: int | None = field(default=None, metadata={"help": "Embedded robust-teacher steps (200)."})
    embedded_student_steps: int | None = field(default=None, metadata={"help": "Embedded student pre-training (200)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (embedded default: 1)."})
    dump_checksums: bool = field(
        default=False, metadata={"help": "Write checksum_rank<r>.json of the student's weights per process."}
    )


class HubPushError(RuntimeError):
    """Pushing to the Hub failed; everything was saved in `output_dir` first."""


# ---- arguments ----


def read_config_file(path: str) -> dict:
    """A YAML or JSON mapping of argument names to values."""
    if not path.lower().endswith(CONFIG_EXTENSIONS):
        raise ValueError(f"Config file {path!r}: use a {'/'.join(CONFIG_EXTENSIONS)} file.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Config file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        if path.lower().endswith(".json"):
            values = json.load(f)
        else:
            import yaml

            values = yaml.safe_load(f)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise TypeError(f"Config file {path!r} holds a {type(values).__name__}: it must map argument names to values.")
    return values


def _flags_given(argv: list[str]) -> set[str]:
    """Destination names of the `--flags` on the command line (`--no_x` counts as `x`)."""
    given = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            given.add(name)
            if name.startswith("no_"):
                given.add(name[3:])
    return given


def _split_config_path(argv: list[str]) -> tuple[str | None, list[str]]:
    """The config file (`--config X`, `--config=X`, or a first positional `.yaml/.json`) and the other arguments."""
    argv = list(argv)
    path = None
    if argv and not argv[0].startswith("-") and argv[0].lower().endswith(CONFIG_EXTENSIONS):
        path = argv.pop(0)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, rest = pre.parse_known_args(argv)
    if known.config is not None:
        if path is not None:
            raise ValueError(f"Two config files given ({path!r} and --config {known.config!r}): give one.")
        path = known.config
    return path, rest


def build_parser():
    from transformers import HfArgumentParser

    return HfArgumentParser((ScriptArguments, MMTARDConfig), description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, MMTARDConfig, set[str]]:
    """Parse flags over an optional config file over the (embedded) defaults.

    Precedence, lowest first: dataclass defaults, the embedded default's recipe (when no `--student`), `--quick`,
    the config file, command-line flags.

    Returns:
        `(script_args, config, explicit)`: `explicit` holds the names set by the config file or a flag.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, argv = _split_config_path(argv)
    file_values = read_config_file(config_path) if config_path else {}
    parser = build_parser()
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise ValueError(
            f"Config file {config_path!r} has unknown keys {unknown}: use the option names listed by --help "
            "(without the leading dashes)."
        )
    explicit = set(file_values) | _flags_given(argv)
    # a first, lenient pass for what decides the defaults
    first = argparse.Namespace(**{"student": None, "quick": False, **file_values})
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--student", default=first.student)
    pre.add_argument(
        "--quick", nargs="?", const=True, default=first.quick, type=lambda s: s.lower() in ("1", "true", "yes")
    )
    early, _ = pre.parse_known_args(argv)
    defaults: dict = {"output_dir": DEFAULT_OUTPUT_DIR, "dataloader_pin_memory": torch.cuda.is_available()}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # several processes and no GPU (e.g. `accelerate launch --multi_gpu --num_processes 2` on CPU): without
        # `use_cpu` each process would train alone; with it they form one gloo process group
        defaults["use_cpu"] = True
    if early.student is None:
        defaults.update(EMBEDDED_DEFAULTS)
        if early.quick:
            defaults.update(QUICK_DEFAULTS)
    defaults.update(file_values)
    parser.set_defaults(**defaults)
    script_args, config = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    script_args.config = config_path
    return script_args, config, explicit


# ---- small helpers ----


def parse_eps(text: str | float) -> float:
    """`"2/255"` -> 0.00784; `"0.01"` -> 0.01."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"`eval_eps` value {text!r} is not a number or a fraction like 2/255.") from err
    if not 0 <= value <= 1:
        raise ValueError(f"`eval_eps` value {text!r} = {value:g} is outside [0, 1]: budgets are in [0,1] pixel units.")
    return value


def hardware_description() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"CPU: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"


def weights_checksum(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter, in name order (identical replicas give identical hashes)."""
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def apply_lora(model, r: int, alpha: int, dropout: float, target_modules: list[str]):
    """Wrap the student in peft LoRA adapters on its **vision** tower's `target_modules`."""
    from peft import LoraConfig, get_peft_model

    names = "|".join(re.escape(m) for m in target_modules)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=rf".*vision_model\..*\.({names})"
    )
    return get_peft_model(model, config)


def _subset(dataset, n: int | None, seed: int):
    if n is None or n >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(n))


def _num_rows(dataset) -> int | str:
    try:
        return len(dataset)
    except TypeError:
        return "streamed"


# ---- what to train on: the embedded default or the user's models and data ----


@dataclass
class RunInputs:
    student: torch.nn.Module
    processor: object
    teachers: list
    train_dataset: object
    eval_dataset: object
    class_names: list[str]
    collator: object
    descriptions: dict  # base_model, teachers[name] -> (model, processor), dataset names
    teacher_models: dict = field(default_factory=dict)  # name -> (CLIPModel, processor) to evaluate
    phases: dict = field(default_factory=dict)


def prepare_embedded(sa: ScriptArguments, config: MMTARDConfig) -> RunInputs:
    from mmt_ard.embedded import EmbeddedRecipe, build_embedded_models, digits_splits

    overrides = dict(QUICK_RECIPE) if sa.quick else {}
    for key in ("clean", "robust", "student"):
        value = getattr(sa, f"embedded_{key}_steps")
        if value is not None:
            overrides[f"{key}_steps"] = value
    recipe = EmbeddedRecipe(seed=config.seed, **overrides)
    cache = None if sa.embedded_cache_dir.lower() == "none" else os.path.expanduser(sa.embedded_cache_dir)
    train_ds, test_ds = digits_splits(recipe.image_size, recipe.seed)
    built = build_embedded_models(
        recipe,
        cache,
        train_dataset=train_ds,
        use_cpu=config.use_cpu,
        disable_tqdm=config.disable_tqdm,
        logging_steps=max(1, min(config.logging_steps, 50)),
        log_level=config.log_level,
    )
    student, processor = built["student"]
    if sa.lora_r > 0:
        student = apply_lora(student, sa.lora_r, sa.lora_alpha, sa.lora_dropout, sa.lora_target_modules)
    clean, robust = built["clean_teacher"], built["robust_teacher"]
    teachers = [
        Teacher(model=robust[0], role="robust", processor=robust[1]),
        Teacher(model=clean[0], role="clean", processor=clean[1]),
    ]
    from mmt_ard.tiny import DIGIT_NAMES

    max_eval = sa.max_eval_samples or (QUICK_MAX_EVAL_SAMPLES if sa.quick else None)
    train_ds = prepare_dataset(train_ds, "pixel_values", "labels", max_samples=sa.max_train_samples, seed=config.seed)
    test_ds = prepare_dataset(test_ds, "pixel_values", "labels", max_samples=max_eval, seed=config.seed)
    collator = ImageClassificationCollator(
        recipe.image_size,
        DIGIT_NAMES,
        image_column="pixel_values",
        label_column="labels",
        bad_samples=config.bad_samples,
    )
    where = built["cache_path"] or "not cached"
    descriptions = {
        "base_model": f"embedded tiny CLIP student ({recipe.describe('student')})",
        "teachers": {
            "robust": (f"embedded robust teacher ({recipe.describe('robust_teacher')})", "its own"),
            "clean": (f"embedded clean teacher ({recipe.describe('clean_teacher')})", "its own"),
        },
        "train": f"scikit-learn digits, train split ({recipe.image_size} px)",
        "eval": f"scikit-learn digits, test split ({recipe.image_size} px)",
        "cache": where,
    }
    return RunInputs(
        student=student,
        processor=processor,
        teachers=teachers,
        train_dataset=train_ds,
        eval_dataset=test_ds,
        class_names=list(DIGIT_NAMES),
        collator=collator,
        descriptions=descriptions,
        teacher_models={"robust teacher": robust, "clean teacher": clean},
        phases=built["phases"],
    )


def _load_data(sa: ScriptArguments, config: MMTARDConfig):
    if sa.dataset_name and os.path.isfile(sa.dataset_name):
        raise ValueError(
            f"`dataset_name`={sa.dataset_name!r} is a file: pass files with `--train_files` / `--eval_files`."
        )
    train_source = sa.train_files or sa.dataset_name
    if not train_source:
        raise ValueError(
            "No training data: give `--dataset_name` (Hub id or local directory) or `--train_files` (parquet/arrow); "
            "or leave out `--student` for the embedded default."
        )
    if sa.streaming and config.max_steps <= 0:
        raise ValueError("`--streaming` reads datasets without a length: set `--max_steps` (e.g. 5000).")
    kwargs = {"config_name": sa.dataset_config_name, "streaming": sa.streaming, "cache_dir": sa.dataset_cache_dir}
    train = load_image_dataset(train_source, sa.train_split, **kwargs)
    eval_source = None if sa.eval_split.lower() == "none" else (sa.eval_files or sa.dataset_name)
    evaluation = load_image_dataset(eval_source, sa.eval_split, **kwargs) if eval_source else None
    class_names = resolve_class_names(train, sa.label_column, sa.class_names, sa.class_names_file)
    train = prepare_dataset(
        train, sa.image_column, sa.label_column, max_samples=sa.max_train_samples, seed=config.seed
    )
    if evaluation is not None:
        # a streamed evaluation set is not shuffled: its first `max_eval_samples` rows are used (a shuffle buffer
        # would read 10,000 images to yield the first one)
        evaluation = prepare_dataset(
            evaluation,
            sa.image_column,
            sa.label_column,
            max_samples=sa.max_eval_samples,
            seed=config.seed,
            shuffle=not sa.streaming,
        )
    return train, evaluation, class_names


def prepare_from_args(sa: ScriptArguments, config: MMTARDConfig) -> RunInputs:
    from mmt_ard.models import load_clip

    given = {"robust": sa.robust_teacher, "clean": sa.clean_teacher}
    missing = [role for role in config.preset_required_roles if not given.get(role)]
    if missing:
        flags = " and ".join(f"`--{role}_teacher`" for role in missing)
        raise ValueError(f"`--preset {config.preset}` needs {flags} (Hub ids or local paths).")
    train, evaluation, class_names = _load_data(sa, config)
    student, processor = load_clip(sa.student, sa.student_processor)
    if sa.lora_r > 0:
        student = apply_lora(student, sa.lora_r, sa.lora_alpha, sa.lora_dropout, sa.lora_target_modules)
    teachers, teacher_models, described = [], {}, {}
    for role in ("robust", "clean"):
        name_or_path = given[role]
        if not name_or_path:
            continue
        if role not in config.preset_roles:
            # one config file can serve several presets: a teacher the preset has no role for is left out
            logger.warning("`--preset %s` uses no %s teacher: ignoring `--%s_teacher`.", config.preset, role, role)
            continue
        processor_id = getattr(sa, f"{role}_teacher_processor")
        model, teacher_processor = load_clip(name_or_path, processor_id)
        teachers.append(Teacher(model=model, role=role, processor=teacher_processor))
        teacher_models[f"{role} teacher"] = (model, teacher_processor)
        described[role] = (name_or_path, processor_id or name_or_path)
    image_size = int(student.config.vision_config.image_size)
    collator = ImageClassificationCollator(
        image_size, class_names, sa.image_column, sa.label_column, bad_samples=config.bad_samples
    )
    train_name = sa.dataset_name or ", ".join(sa.train_files or [])
    descriptions = {
        "base_model": sa.student,
        "teachers": described,
        "train": f"{train_name} [{sa.train_split}]",
        "eval": f"{sa.dataset_name or ', '.join(sa.eval_files or [])} [{sa.eval_split}]"
        if evaluation is not None
        else "-",
        "train_id": sa.dataset_name,
        "eval_id": sa.dataset_name,
    }
    return RunInputs(
        student=student,
        processor=processor,
        teachers=teachers,
        train_dataset=train,
        eval_dataset=evaluation,
        class_names=class_names,
        collator=collator,
        descriptions=descriptions,
        teacher_models=teacher_models if sa.eval_teachers else {},
    )


# ---- evaluation ----


def evaluate_robustness(trainer: MMTARDTrainer, eval_dataset, eps_list: list[float], label: str) -> list[dict]:
    """Clean and PGD-CE accuracy at each budget through `trainer.evaluate` (eval mode, fp32, input gradients)."""
    args = trainer.args
    saved = (args.eval_attack_eps, args.eval_attack_step_size)
    ratio = args.eval_attack_step_size / args.eval_attack_eps if args.eval_attack_eps else 0.25
    rows = []
    try:
        for eps in eps_list:
            args.eval_attack_eps, args.eval_attack_step_size = eps, ratio * eps
            metrics = trainer.evaluate(eval_dataset=eval_dataset)
            n = int(metrics.get("eval_num_samples", 0))
            rows.append(
                {
                    "model": label,
                    "attack": f"PGD-{args.eval_attack_steps} (CE)" if eps > 0 and args.eval_attack_steps else "none",
                    "eps": eps,
                    "clean_accuracy": float(metrics["eval_clean_accuracy"]),
                    "robust_accuracy": float(metrics["eval_adv_accuracy"]),
                    "num_clean": n,
                    "num_robust": n,
                }
            )
    finally:
        args.eval_attack_eps, args.eval_attack_step_size = saved
    return rows


def evaluate_model(model, processor, label: str, inputs: RunInputs, config: MMTARDConfig, eps_list) -> list[dict]:
    """Evaluate a model outside the training trainer (a teacher, or the student before training) with a no-teacher
    `tecoa` trainer of the same evaluation settings."""
    eval_args = MMTARDConfig(
        output_dir=config.output_dir,
        preset="tecoa",
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        use_cpu=config.use_cpu,
        report_to="none",
        disable_tqdm=config.disable_tqdm,
        seed=config.seed,
        attack_norm=config.attack_norm,
        eval_attack_eps=config.eval_attack_eps,
        eval_attack_steps=config.eval_attack_steps,
        eval_attack_step_size=config.eval_attack_step_size,
        logit_scale=config.logit_scale,
        use_model_logit_scale=config.use_model_logit_scale,
        prompt_templates=config.prompt_templates,
        dataloader_num_workers=config.dataloader_num_workers,
        dataloader_pin_memory=config.dataloader_pin_memory and torch.cuda.is_available(),
        log_level=config.log_level,
    )
    trainer = MMTARDTrainer(
        model=model,
        args=eval_args,
        processing_class=processor,
        class_names=inputs.class_names,
        data_collator=inputs.collator,
    )
    return evaluate_robustness(trainer, inputs.eval_dataset, eps_list, label)


@torch.no_grad()
def teacher_confidence_report(trainer: MMTARDTrainer, inputs: RunInputs, max_samples: int = 512) -> dict:
    """Each teacher's confidence (cosine of its image embedding to the true class's text embedding) on clean
    training images: the `confidence` weighting multiplies its KL term by it, so negative values push the student
    *away* from that teacher."""
    from tqdm.auto import tqdm

    rows = itertools.islice(iter(inputs.train_dataset), max_samples)
    bar = tqdm(rows, desc="teacher confidence: reading images", disable=trainer.args.disable_tqdm, leave=False)
    examples = list(bar)
    if not examples:
        return {}
    batch = inputs.collator(examples)
    report = {}
    for spec, module in zip(trainer.teacher_specs, trainer.teacher_modules):
        device = next(module.parameters()).device
        x, y = batch["pixel_values"].to(device), batch["labels"].to(device)
        conf = torch.cat(
            [module.confidence(module(xb).image_embeds, yb) for xb, yb in zip(x.split(128), y.split(128))]
        )
        report[spec.name] = {
            "mean": round(float(conf.mean()), 4),
            "min": round(float(conf.min()), 4),
            "fraction_negative": round(float((conf < 0).float().mean()), 4),
            "num_samples": int(conf.numel()),
        }
        if trainer.weighting.needs_confidence and report[spec.name]["fraction_negative"] > 0.05:
            logger.warning(
                "Teacher `%s` has a negative confidence on %.0f%% of %d training images (mean %.3f): the `%s` "
                "weighting pushes the student away from it on those. Consider `--weighting sigmoid` or `fixed`, or a "
                "better teacher.",
                spec.name,
                100 * report[spec.name]["fraction_negative"],
                conf.numel(),
                conf.mean(),
                trainer.args.weighting,
            )
    return report


# ---- saving and pushing ----


def save_student(trainer: MMTARDTrainer, sa: ScriptArguments, output_dir: str) -> str:
    """Save the student (full weights, merged LoRA, or the LoRA adapter) and its processor; returns what was saved."""
    trainer.save_model(output_dir)
    if sa.lora_r <= 0:
        return "full weights"
    if not sa.save_merged:
        return "LoRA adapter"
    bundle = trainer.accelerator.unwrap_model(trainer.model)
    peft_model = bundle.student.clip
    if trainer.is_world_process_zero():
        adapter_dir = os.path.join(output_dir, "lora_adapter")
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            path = os.path.join(output_dir, name)
            if os.path.exists(path):
                os.makedirs(adapter_dir, exist_ok=True)
                os.replace(path, os.path.join(adapter_dir, name))
        merged = peft_model.merge_and_unload()
        merged.save_pretrained(output_dir, safe_serialization=True)
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
            ignore_patterns=["checkpoint-*", "checkpoint-*/**", "runs/**", "checksum_rank*"],
        )
        return repo.url if hasattr(repo, "url") else str(repo)
    except Exception as err:  # offline, no token, no permission, network errors: all end the same way
        raise HubPushError(
            f"Could not push to the Hub as {hub_model_id!r} ({type(err).__name__}: {err}). Nothing is lost: the model, "
            f"processor and model card are saved in {os.path.abspath(output_dir)!r}. Push them later, once the "
            f"network and a token work, with `hf upload {hub_model_id} {output_dir}`."
        ) from err


# ---- the run ----


def _teacher_rows(inputs: RunInputs, config: MMTARDConfig, eps_list) -> list[dict]:
    rows = []
    for label, (model, processor) in inputs.teacher_models.items():
        rows += evaluate_model(model, processor, label, inputs, config, eps_list)
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Run the script; returns the results dictionary (also written to `output_dir/results.json`)."""
    start = time.perf_counter()
    sa, config, explicit = parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    logger.setLevel(config.get_process_log_level())
    embedded = sa.student is None
    threads = sa.num_threads or (1 if embedded else None)
    if threads:
        torch.set_num_threads(threads)
    push, config.push_to_hub = config.push_to_hub, False  # the Trainer would create the repo at init: push at the end
    hub_model_id = config.hub_model_id or os.path.basename(os.path.normpath(config.output_dir))

    from transformers import set_seed

    set_seed(config.seed)
    inputs = prepare_embedded(sa, config) if embedded else prepare_from_args(sa, config)
    eps_list = [parse_eps(e) for e in sa.eval_eps] if sa.eval_eps else [config.eval_attack_eps]
    do_eval = inputs.eval_dataset is not None
    eval_teachers = do_eval and (embedded or sa.eval_teachers)

    rows = _teacher_rows(inputs, config, eps_list) if eval_teachers else []
    if do_eval and sa.eval_before_training:
        # a separate no-teacher trainer with the evaluation settings, so the table's rows are all measured alike
        # (MMTARDTrainer.train also copes with an earlier `evaluate()` under DDP: it re-wraps the student)
        rows += evaluate_model(inputs.student, inputs.processor, "student (before)", inputs, config, eps_list)
    trainer = MMTARDTrainer(
        model=inputs.student,
        args=config,
        teachers=inputs.teachers,
        class_names=inputs.class_names,
        processing_class=inputs.processor,
        train_dataset=inputs.train_dataset,
        eval_dataset=inputs.eval_dataset,
        data_collator=inputs.collator,
    )
    confidences = teacher_confidence_report(trainer, inputs) if inputs.teachers else {}
    student_module = trainer.accelerator.unwrap_model(trainer.model).student
    initial_checksum = weights_checksum(student_module)

    train_result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    if do_eval:
        rows += evaluate_robustness(trainer, inputs.eval_dataset, eps_list, "student (after)")

    output_dir = config.output_dir
    saved_as = save_student(trainer, sa, output_dir)
    metrics = train_result.metrics
    world = config.world_size
    results = {
        "model_name": os.path.basename(os.path.normpath(output_dir)),
        "base_model": inputs.descriptions["base_model"],
        "base_model_id": None if embedded else sa.student,
        "hub_model_id": hub_model_id if push else None,
        "preset": config.preset,
        "tags": ["embedded-default"] if embedded else [],
        "teachers": [
            {
                "name": spec.name,
                "role": spec.role,
                "model": inputs.descriptions["teachers"].get(spec.role, ("-", "-"))[0],
                "processor": inputs.descriptions["teachers"].get(spec.role, ("-", "-"))[1],
                "input": spec.input,
                "match": spec.match,
                "coef": spec.coef,
                "confidence": confidences.get(spec.name),
            }
            for spec in trainer.teacher_specs
        ],
        "settings": {key: getattr(config, key) for key in MMTARD_SETTING_KEYS if hasattr(config, key)},
        "lora": (
            {
                "r": sa.lora_r,
                "alpha": sa.lora_alpha,
                "dropout": sa.lora_dropout,
                "target_modules": sa.lora_target_modules,
                "saved": saved_as,
            }
            if sa.lora_r > 0
            else None
        ),
        "dataset": {
            "train": inputs.descriptions["train"],
            "eval": inputs.descriptions["eval"],
            "train_id": inputs.descriptions.get("train_id"),
            "eval_id": inputs.descriptions.get("eval_id"),
            "num_train": _num_rows(inputs.train_dataset),
            "num_eval": _num_rows(inputs.eval_dataset) if do_eval else 0,
            "num_classes": len(inputs.class_names),
            "class_names": inputs.class_names,
            "skipped": inputs.collator.num_skipped,
        },
        "training": {
            "steps": trainer.state.global_step,
            "batch_size": config.per_device_train_batch_size * world * config.gradient_accumulation_steps,
            "images_per_second": metrics.get("train_samples_per_second"),
            "wall_clock_s": metrics.get("train_runtime"),
            "hardware": hardware_description(),
            "num_processes": world,
            "phases": {
                f"embedded {phase.replace('_', ' ')}": (
                    f"{info['description']}; "
                    + (
                        "reused from the cache"
                        if info.get("cached")
                        else f"trained in {info['train_runtime_s']:.1f} s"
                    )
                )
                for phase, info in inputs.phases.items()
            },
        },
        "robustness": {
            "protocol": (
                f"zero-shot classification, L-inf PGD-CE, {config.eval_attack_steps} steps, step size "
                f"{config.eval_attack_step_size / config.eval_attack_eps if config.eval_attack_eps else 0:.3g} x eps, "
                f"uniform random start, eval mode, fp32, prompt {config.prompt_templates!r}"
            ),
            "rows": rows,
            "notes": [
                (
                    f"clean and robust accuracy are computed on the same {rows[0]['num_clean'] if rows else 0} "
                    "evaluation images; PGD is an upper bound on robust accuracy (APGD/AutoAttack is stronger)."
                )
            ]
            + (
                [
                    "teacher confidence on clean training images (mean / fraction negative): "
                    + "; ".join(f"{k} {v['mean']:.3f} / {v['fraction_negative']:.2f}" for k, v in confidences.items())
                ]
                if confidences
                else []
            ),
        },
        "explicit_arguments": sorted(explicit),
    }
    results["training"]["total_wall_clock_s"] = round(time.perf_counter() - start, 1)
    if sa.dump_checksums:
        rank = config.process_index
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, f"checksum_rank{rank}.json"), "w") as f:
            json.dump(
                {
                    "rank": rank,
                    "world_size": world,
                    "initial": initial_checksum,
                    "final": weights_checksum(student_module),
                },
                f,
            )
    if trainer.is_world_process_zero():
        save_model_card(results, output_dir)
        with open(os.path.join(output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, default=str)
        print_summary(results, output_dir)
    if push and trainer.is_world_process_zero():
        url = push_to_hub(output_dir, hub_model_id, token=config.hub_token, private=config.hub_private_repo)
        logger.info("Pushed to %s", url)
        results["pushed_to"] = url
    return results


def print_summary(results: dict, output_dir: str) -> None:
    rows = results["robustness"]["rows"]
    print()
    print(f"MMT-ARD ({results['preset']}): {results['base_model']}")
    print(f"Protocol: {results['robustness']['protocol']}")
    print(robustness_table(results["robustness"]))
    before = [r for r in rows if r["model"] == "student (before)"]
    after = [r for r in rows if r["model"] == "student (after)"]
    for b, a in zip(before, after):
        print(
            f"student at eps {format_eps(a['eps'])}: robust {100 * b['robust_accuracy']:.1f}% -> "
            f"{100 * a['robust_accuracy']:.1f}%, clean {100 * b['clean_accuracy']:.1f}% -> {100 * a['clean_accuracy']:.1f}%"
        )
    training = results["training"]
    print(
        f"{training['steps']} steps, {training.get('images_per_second') or 0:.1f} images/s, training "
        f"{training.get('wall_clock_s') or 0:.1f} s, whole run {training['total_wall_clock_s']:.1f} s on "
        f"{training['hardware']}"
    )
    print(f"Saved the student, its processor and README.md (model card) in {os.path.abspath(output_dir)}")


if __name__ == "__main__":
    try:
        main()
    except HubPushError as err:
        logger.error("%s", err)
        sys.exit(1)
