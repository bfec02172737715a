"""What `mmt-ard-train` checks before it loads or writes anything: every flag is used, every name can be found, the
output folder holds no other run, the checkpoint to resume exists.

>>> check_run(script_args, config, explicit)   # a UsageError or a ValueError (exit status 2) on the first problem

The run folder's own checks (`check_output_dir`) are library code (`mmt_ard.pipeline.run_dir`, a `RunFolderError`)
that `mmt_ard.pipeline.run_training` runs too, for a Python caller who skips these.
"""

from __future__ import annotations

from ..pipeline.run_dir import check_output_dir, resume_value
from ..training.config import MMTARDConfig
from .errors import UsageError
from .names import check_data_files, check_dataset_name, check_files, check_model_name, check_wds_folder
from .train_args import ScriptArguments, parse_eps
from .train_flags import check_flags_used

# least valid value of each numeric `ScriptArguments` field (None: unset, always fine)
SCRIPT_MINIMUMS = {
    "lora_r": 0,
    "lora_alpha": 1,
    "max_train_samples": 1,
    "max_eval_samples": 1,
    "embedded_clean_steps": 0,
    "embedded_robust_steps": 0,
    "embedded_student_steps": 0,
    "num_threads": 1,
}


def check_script_values(sa: ScriptArguments) -> None:
    """Ranges of the numeric script arguments (a `--num_threads 0` or `--lora_r -1` would be silently ignored)."""
    for name, low in SCRIPT_MINIMUMS.items():
        value = getattr(sa, name)
        if value is not None and value < low:
            raise UsageError(f"--{name}", value, f"must be at least {low}", "Give a larger value, or leave it out.")
    if not 0 <= sa.lora_dropout < 1:
        raise UsageError("--lora_dropout", sa.lora_dropout, "must be in [0, 1)", "0.1 is the paper's.")


def check_stream_subset(sa: ScriptArguments) -> None:
    """`--max_train_samples` cannot cut a stream of webdataset shards: their samples are not counted ahead."""
    from ..data.sources import is_webdataset_source

    if sa.streaming and sa.max_train_samples and is_webdataset_source(sa.train_files or sa.dataset_name or []):
        raise UsageError(
            "--max_train_samples",
            sa.max_train_samples,
            "cannot cut a stream of webdataset shards (their samples are not counted ahead)",
            "Give fewer shards instead, or leave out --streaming.",
        )


def check_run(sa: ScriptArguments, config: MMTARDConfig, explicit: set[str] | frozenset = frozenset()) -> None:
    """Refuse a run whose flags would be ignored, whose models or data cannot be found, or whose `output_dir` holds
    another run. Normalises `config.resume_from_checkpoint` (`true` -> True, `none` -> None).

    Args:
        sa: the script arguments.
        config: the run's config.
        explicit: the options set by a flag or the config file (`parse_args`); only those can be refused as unused.
    """
    check_script_values(sa)
    check_flags_used(sa, config, set(explicit))
    for text in sa.eval_eps or []:
        parse_eps(text)  # a ValueError naming the budget, before anything is loaded
    if sa.student is not None:
        check_model_name("--student", sa.student)
        check_model_name("--student_processor", sa.student_processor, "processor")
        for role in ("robust", "clean"):
            check_model_name(f"--{role}_teacher", getattr(sa, f"{role}_teacher"))
            check_model_name(f"--{role}_teacher_processor", getattr(sa, f"{role}_teacher_processor"), "processor")
        check_data_files("--train_files", sa.train_files)
        check_data_files("--eval_files", sa.eval_files)
        check_files("--class_names_file", sa.class_names_file)
        if sa.dataset_name:
            check_dataset_name("--dataset_name", sa.dataset_name)
            check_wds_folder("--dataset_name", sa.dataset_name, [sa.train_split, sa.eval_split])
        check_stream_subset(sa)
    config.resume_from_checkpoint = resume_value(config.resume_from_checkpoint)
    check_output_dir(config.output_dir, config.resume_from_checkpoint, sa.overwrite_output_dir)
