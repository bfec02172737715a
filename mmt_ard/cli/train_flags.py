"""Every flag of `mmt-ard-train` is used or refused: the rules that say when a flag given would do nothing.

A flag "given" is one set on the command line or in the config file (`explicit` of `parse_args`); defaults are never
refused, nor a boolean flag given as False (it asks for nothing). Each `FlagRule` names flags and the condition under
which the run would ignore them; `check_flags_used` raises a `UsageError` naming the flags given (with their values),
why they would be ignored and what to do.

>>> check_flags_used(script_args, config, explicit)   # before anything is loaded
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..training.config import MMTARDConfig
from .errors import UsageError
from .train_args import ScriptArguments

# data and model flags: they name what to train on, so they need --student (the embedded default brings its own)
MODEL_AND_DATA_FLAGS = (
    "student_processor",
    "robust_teacher",
    "robust_teacher_processor",
    "clean_teacher",
    "clean_teacher_processor",
    "dataset_name",
    "dataset_config_name",
    "train_files",
    "eval_files",
    "train_split",
    "eval_split",
    "image_column",
    "label_column",
    "label_json_field",
    "class_names",
    "class_names_file",
    "streaming",
    "dataset_cache_dir",
)
EMBEDDED_FLAGS = (
    "quick",
    "embedded_cache_dir",
    "embedded_clean_steps",
    "embedded_robust_steps",
    "embedded_student_steps",
)
LORA_FLAGS = ("lora_alpha", "lora_dropout", "lora_target_modules", "save_merged")
EVALUATION_FLAGS = ("eval_eps", "max_eval_samples", "eval_before_training", "eval_teachers")
HUB_FLAGS = ("hub_model_id", "hub_token", "hub_private_repo", "hub_strategy", "hub_revision", "hub_always_push")


@dataclass(frozen=True)
class FlagRule:
    """Flags that a run ignores under a condition.

    Args:
        flags: the option names (without dashes).
        ignored: `(script_args, config) -> bool`: whether the run would ignore them.
        why: why (a phrase; `{preset}` is filled in).
        fix: what to do instead (a sentence; `{preset}` and `{missing}` are filled in).
        refuse_off: also refuse a boolean flag given as False (by default `--x false` asks for nothing, so it is
            never refused: `--save_merged false` without LoRA is harmless).
    """

    flags: tuple[str, ...]
    ignored: Callable[[ScriptArguments, MMTARDConfig], bool]
    why: str
    fix: str
    refuse_off: bool = False


def _embedded(sa: ScriptArguments, config: MMTARDConfig) -> bool:
    return sa.student is None


def _evaluates(sa: ScriptArguments) -> bool:
    """Whether a run with `--student` has evaluation data."""
    return sa.eval_split.lower() != "none" and bool(sa.eval_files or sa.dataset_name)


def _uses_coef(name: str) -> Callable[[ScriptArguments, MMTARDConfig], bool]:
    def ignored(sa: ScriptArguments, config: MMTARDConfig) -> bool:
        roles = getattr(config, "preset_roles", {}) or {}
        return not any(role.get("coef_field") == name for role in roles.values())

    return ignored


def _uses_role(role: str) -> Callable[[ScriptArguments, MMTARDConfig], bool]:
    return lambda sa, config: sa.student is not None and role not in (getattr(config, "preset_roles", {}) or {})


RULES: tuple[FlagRule, ...] = (
    FlagRule(
        MODEL_AND_DATA_FLAGS,
        _embedded,
        "model and data flags need --student: without it the command runs its embedded default (tiny CLIPs on "
        "scikit-learn's digits) and would ignore them",
        "Also give {missing}, or leave these flags out to run the embedded default.",
    ),
    FlagRule(
        EMBEDDED_FLAGS,
        lambda sa, config: sa.student is not None,
        "these options belong to the embedded default, which runs only without --student",
        "Leave them out when training your own models.",
    ),
    FlagRule(
        ("eval_teachers",),
        lambda sa, config: sa.student is None and not sa.eval_teachers,
        "the embedded default always evaluates its teachers",
        "Leave --eval_teachers out.",
        refuse_off=True,
    ),
    FlagRule(
        ("robust_teacher",),
        _uses_role("robust"),
        "preset {preset!r} has no robust teacher",
        "Leave --robust_teacher out, or pick a preset that uses one (mmt-ard, mmt-ard-sigmoid, mtard, "
        "single-teacher).",
    ),
    FlagRule(
        ("clean_teacher",),
        _uses_role("clean"),
        "preset {preset!r} has no clean teacher",
        "Leave --clean_teacher out, or pick a preset that uses one (mmt-ard, mmt-ard-sigmoid, mtard).",
    ),
    FlagRule(
        ("robust_teacher_processor",),
        lambda sa, config: sa.student is not None and not sa.robust_teacher,
        "a processor without its model (--robust_teacher is not given)",
        "Give --robust_teacher too, or leave the processor out.",
    ),
    FlagRule(
        ("clean_teacher_processor",),
        lambda sa, config: sa.student is not None and not sa.clean_teacher,
        "a processor without its model (--clean_teacher is not given)",
        "Give --clean_teacher too, or leave the processor out.",
    ),
    FlagRule(
        LORA_FLAGS,
        lambda sa, config: sa.lora_r <= 0,
        "LoRA options without LoRA (--lora_r is 0: full fine-tuning)",
        "Give --lora_r (e.g. 16), or leave them out.",
    ),
    FlagRule(
        ("class_names",),
        lambda sa, config: bool(sa.class_names_file),
        "both --class_names and --class_names_file name the classes",
        "Give one of them.",
    ),
    FlagRule(
        ("dataset_config_name",),
        lambda sa, config: sa.student is not None and not sa.dataset_name,
        "a dataset configuration without --dataset_name",
        "Give --dataset_name too, or leave it out.",
    ),
    FlagRule(
        ("dataset_name",),
        lambda sa, config: bool(sa.train_files) and (bool(sa.eval_files) or sa.eval_split.lower() == "none"),
        "--train_files and --eval_files (or --eval_split none) already say what to train and evaluate on",
        "Give either --dataset_name or the files.",
    ),
    FlagRule(
        ("eval_split",),
        lambda sa, config: (
            sa.student is not None and sa.eval_split.lower() != "none" and not (sa.eval_files or sa.dataset_name)
        ),
        "no evaluation data to take a split of (neither --eval_files nor --dataset_name)",
        "Give --eval_files or --dataset_name, or leave --eval_split out.",
    ),
    FlagRule(
        ("eval_files",),
        lambda sa, config: sa.eval_split.lower() == "none",
        "--eval_split none turns evaluation off",
        "Leave out one of them.",
    ),
    FlagRule(
        EVALUATION_FLAGS,
        lambda sa, config: sa.student is not None and not _evaluates(sa),
        "there is no evaluation (no --eval_files or --dataset_name, or --eval_split none)",
        "Give evaluation data, or leave these flags out.",
    ),
    FlagRule(
        ("eval_teachers",),
        lambda sa, config: sa.student is not None and sa.eval_teachers and not (sa.robust_teacher or sa.clean_teacher),
        "there is no teacher to evaluate",
        "Leave --eval_teachers out, or give the teachers.",
    ),
    FlagRule(
        HUB_FLAGS,
        lambda sa, config: not config.push_to_hub,
        "Hub options without --push_to_hub (nothing is pushed)",
        "Add --push_to_hub, or leave them out.",
    ),
    FlagRule(
        ("save_steps", "save_total_limit"),
        lambda sa, config: config.save_strategy == "no",
        "--save_strategy no writes no checkpoint",
        "Leave --save_strategy out (step checkpoints are then on), or leave these out.",
    ),
    FlagRule(
        ("sigmoid_gamma", "sigmoid_momentum"),
        lambda sa, config: config.weighting != "sigmoid",
        "only the `sigmoid` weighting uses them (this run's is {weighting!r})",
        "Add --weighting sigmoid (or --preset mmt-ard-sigmoid), or leave them out.",
    ),
    FlagRule(
        ("mtard_lr",),
        lambda sa, config: config.weighting != "mtard",
        "only the `mtard` weighting uses it (this run's is {weighting!r})",
        "Add --weighting mtard (or --preset mtard), or leave it out.",
    ),
    FlagRule(("robust_coef",), _uses_coef("robust_coef"), "preset {preset!r} has no robust teacher", "Leave it out."),
    FlagRule(("clean_coef",), _uses_coef("clean_coef"), "preset {preset!r} has no clean teacher", "Leave it out."),
    FlagRule(
        ("original_coef",),
        _uses_coef("original_coef"),
        "preset {preset!r} has no frozen original teacher (only fare and pmg-aft do)",
        "Leave it out.",
    ),
    FlagRule(
        ("attack_target",),
        lambda sa, config: config.attack_loss == "ce",
        "the `ce` attack loss attacks the labels, not a teacher",
        "Leave --attack_target out, or use --attack_loss kl / embedding-l2.",
    ),
)


def _value(name: str, sa: ScriptArguments, config: MMTARDConfig):
    return getattr(sa, name) if hasattr(sa, name) else getattr(config, name, None)


def given_text(names, sa: ScriptArguments, config: MMTARDConfig) -> str:
    """`--a='x', --b=3` for the flags `names` with their values."""
    return ", ".join(f"--{name}={_value(name, sa, config)!r}" for name in names)


def missing_models(sa: ScriptArguments, config: MMTARDConfig) -> str:
    """`--student, --robust_teacher and --clean_teacher (preset 'mmt-ard')`: what a run on the user's data needs."""
    needed = ["--student"] + [f"--{role}_teacher" for role in getattr(config, "preset_required_roles", ())]
    needed = [flag for flag in needed if not getattr(sa, flag[2:], None)]
    if not needed:
        return "nothing more"
    text = needed[0] if len(needed) == 1 else ", ".join(needed[:-1]) + " and " + needed[-1]
    return f"{text} (preset {config.preset!r})" if len(needed) > 1 else text


def unused_flags(sa: ScriptArguments, config: MMTARDConfig, explicit: set[str]) -> list[tuple[FlagRule, list[str]]]:
    """The rules the given flags break, each with the flags of it that were given."""
    broken = []
    for rule in RULES:
        given = [
            name
            for name in rule.flags
            if name in explicit and (rule.refuse_off or _value(name, sa, config) is not False)
        ]
        if given and rule.ignored(sa, config):
            broken.append((rule, given))
    return broken


def check_flags_used(sa: ScriptArguments, config: MMTARDConfig, explicit: set[str]) -> None:
    """Raise a `UsageError` for the first rule broken: the flags given, why the run would ignore them, the fix."""
    for rule, given in unused_flags(sa, config, explicit):
        fill = {"preset": config.preset, "weighting": config.weighting, "missing": missing_models(sa, config)}
        raise UsageError(
            "", None, f"{given_text(given, sa, config)}: {rule.why.format(**fill)}", rule.fix.format(**fill)
        )
