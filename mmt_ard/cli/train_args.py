"""The arguments of `mmt-ard-train`: `ScriptArguments` and `MMTARDConfig`, from flags over a config file over the
defaults (the embedded default's recipe when no `--student` is given).

>>> script_args, config, explicit = parse_args(["run.yaml", "--max_steps", "100"])

Precedence, lowest first: dataclass defaults, the embedded default's recipe (`mmt_ard.embedded.DISTILLATION_DEFAULTS`,
when no `--student`), `--quick`, the config file, command-line flags. One rule joins two of them: a `save_steps` or
`save_total_limit` given without a `save_strategy` turns step checkpoints on (`save_strategy="steps"`) even where
the embedded default's `save_strategy="no"` would otherwise silence it.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from transformers import HfArgumentParser

from ..embedded.recipe import DISTILLATION_DEFAULTS, QUICK_DEFAULTS
from ..training.config import MMTARDConfig
from .config_file import flags_given, read_config_file, split_config_path
from .errors import UsageError, plain_usage_error
from .help_format import DefaultsHelpFormatter

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT_DIR = os.path.join("outputs", "mmt-ard")
# options that ask for step checkpoints: given without a `save_strategy`, they turn step saving on
STEP_SAVING_OPTIONS = ("save_steps", "save_total_limit")
EPILOG = (
    "--debug (alone) prints the Python traceback of an error (also MMT_ARD_DEBUG=1); --verbose also prints the "
    "libraries' warnings and progress bars (also MMT_ARD_VERBOSE=1). Exit status: 0 done, 1 a failure "
    "while running, 2 a wrong command line or configuration (nothing ran, nothing on disk changed), 75 preempted "
    "(resume with --resume_from_checkpoint true)."
)
DESCRIPTION = (
    "Make a CLIP image encoder adversarially robust with MMT-ARD (or a baseline preset), evaluate it, save it. "
    "Without --student: the offline embedded default (tiny CLIPs on scikit-learn's digits)."
)


@dataclass
class ScriptArguments:
    """Arguments of `mmt-ard-train` (and `examples/run_mmt_ard.py`) that are not training arguments (those live in
    `MMTARDConfig`).

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
        train_files: local `.parquet`/`.arrow` training files, or webdataset `.tar` shards (brace patterns such as
            `shards/{00000..00099}.tar` allowed), instead of `dataset_name`.
        eval_files: local `.parquet`/`.arrow` evaluation files or `.tar` shards.
        train_split: training split of `dataset_name`.
        eval_split: evaluation split of `dataset_name` (`none`: no evaluation).
        image_column: the column holding images (encoded bytes, an `Image` feature, paths or arrays).
        label_column: the column holding integer labels (or class names).
        label_json_field: webdataset shards: take the label from this field of each sample's `.json` instead of its
            `.cls` file.
        class_names: class names in label-id order (default: the label column's `ClassLabel`, else a JSON sidecar
            `foo.json` next to a data file `foo.parquet`, else the built-in names of a known dataset such as
            `cifar10`; see `mmt_ard.data.open_image_source`).
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
        overwrite_output_dir: start a new run in an `output_dir` that holds another one (its checkpoints, weights,
            model card and results are deleted when training starts); without it such a folder is refused unless
            `--resume_from_checkpoint` continues the run.
    """

    config: str | None = field(
        default=None, metadata={"help": "A .yaml/.yml/.json file of arguments; flags override it."}
    )
    student: str | None = field(
        default=None, metadata={"help": "Student CLIP / SigLIP / SigLIP 2 model (Hub id or path). Unset: the offline embedded default."}
    )
    student_processor: str | None = field(default=None, metadata={"help": "Student processor id/path if elsewhere."})
    robust_teacher: str | None = field(default=None, metadata={"help": "Robust teacher CLIP / SigLIP model (Hub id or path)."})
    robust_teacher_processor: str | None = field(
        default=None, metadata={"help": "Robust teacher's processor (e.g. openai/clip-vit-large-patch14 for FARE2)."}
    )
    clean_teacher: str | None = field(default=None, metadata={"help": "Clean teacher CLIP / SigLIP model (Hub id or path)."})
    clean_teacher_processor: str | None = field(default=None, metadata={"help": "Clean teacher's processor id/path."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the student's vision tower (0: full fine-tune)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"],
        metadata={"help": "Vision-tower module names given LoRA adapters."},
    )
    save_merged: bool = field(
        default=False, metadata={"help": "With LoRA: save merged weights (a plain model) instead of the adapter."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id or local dir (image folder / parquet / arrow / save_to_disk)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_files: list[str] | None = field(
        default=None,
        metadata={"help": "Local .parquet/.arrow training files or .tar shards (brace patterns allowed)."},
    )
    eval_files: list[str] | None = field(
        default=None, metadata={"help": "Local .parquet/.arrow evaluation files or .tar shards."}
    )
    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: str = field(default="validation", metadata={"help": "Evaluation split ('none': no evaluation)."})
    image_column: str = field(default="image", metadata={"help": "Image column."})
    label_column: str = field(default="label", metadata={"help": "Label column (ints or class names)."})
    label_json_field: str | None = field(
        default=None, metadata={"help": "Webdataset shards: label from this field of each sample's .json (not .cls)."}
    )
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
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that holds another run (its run files are deleted)."},
    )


class TrainArgumentParser(HfArgumentParser):
    """The parser of `ScriptArguments` and `MMTARDConfig`, with config files and the embedded default's defaults.

    Its errors are `UsageError`s (one line through the command's error path, exit status 2), unknown options
    included (with the nearest known one)."""

    def __init__(self, prog: str | None = None):
        # no abbreviations: every option given is known by its full name (what `check_flags_used` checks)
        super().__init__(
            (ScriptArguments, MMTARDConfig),
            prog=prog,
            description=DESCRIPTION,
            epilog=EPILOG,
            allow_abbrev=False,
            formatter_class=DefaultsHelpFormatter,
        )

    def error(self, message: str):
        raise plain_usage_error(f"{message.rstrip('.')} (see --help)")

    def unknown_options(self, names) -> UsageError:
        """The error for options this parser does not have, naming the closest ones it has."""
        known = sorted({s for a in self._actions for s in a.option_strings if s.startswith("--")})
        hints = []
        for name in names:
            close = difflib.get_close_matches(name.split("=", 1)[0], known, n=1)
            hints.append(f"{name} (did you mean {close[0]}?)" if close else name)
        return UsageError(
            "", None, f"unknown option(s) {', '.join(hints)}", "`mmt-ard-train --help` lists every option."
        )

    def parse_args_and_config(self, argv: list[str] | None = None) -> tuple[ScriptArguments, MMTARDConfig, set[str]]:
        """Parse flags over an optional config file over the (embedded) defaults.

        Returns:
            `(script_args, config, explicit)`: `explicit` holds the names set by the config file or a flag.
        """
        argv = list(sys.argv[1:] if argv is None else argv)
        config_path, argv = split_config_path(argv)
        file_values = read_config_file(config_path) if config_path else {}
        unknown = sorted(set(file_values) - {action.dest for action in self._actions})
        if unknown:
            raise UsageError(
                "config",
                config_path,
                f"unknown keys {unknown}",
                "Use the option names listed by --help (without the leading dashes).",
            )
        explicit = set(file_values) | flags_given(argv)
        self.set_defaults(**defaults_for(argv, file_values, explicit))
        *parsed, rest = self.parse_args_into_dataclasses(
            args=argv, look_for_args_file=False, return_remaining_strings=True
        )
        if rest:
            raise self.unknown_options([r for r in rest if r.startswith("-")] or rest)
        script_args, config = parsed
        script_args.config = config_path  # (`save_steps` with an explicit `save_strategy="no"`: refused by check_run)
        return script_args, config, explicit


def defaults_for(argv: list[str], file_values: dict, explicit: set[str]) -> dict:
    """The parser defaults of a run: the embedded default's recipe without `--student`, `--quick`, the file's values."""
    # a first, lenient pass for what decides the defaults
    first = argparse.Namespace(**{"student": None, "quick": False, **file_values})
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--student", default=first.student)
    pre.add_argument(
        "--quick", nargs="?", const=True, default=first.quick, type=lambda s: s.lower() in ("1", "true", "yes")
    )
    early, _ = pre.parse_known_args(argv)
    defaults: dict = {"output_dir": DEFAULT_OUTPUT_DIR, "dataloader_pin_memory": torch.cuda.is_available()}
    if early.student is None:
        defaults.update(DISTILLATION_DEFAULTS)
        if early.quick:
            defaults.update(QUICK_DEFAULTS)
    defaults.update(file_values)
    asks_for_steps = explicit & set(STEP_SAVING_OPTIONS)
    if asks_for_steps and "save_strategy" not in explicit and defaults.get("save_strategy") == "no":
        # a default must not silence an explicit request for checkpoints: `TrainingArguments`' "steps" applies
        del defaults["save_strategy"]
        logger.info("%s given without `save_strategy`: saving checkpoints every `save_steps`.", sorted(asks_for_steps))
    return defaults


def make_parser(prog: str | None = None) -> TrainArgumentParser:
    """The parser of `mmt-ard-train` and `examples/run_mmt_ard.py` (`--help` lists every option)."""
    return TrainArgumentParser(prog=prog)


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, MMTARDConfig, set[str]]:
    """`(script_args, config, explicit)` from `argv` (default: `sys.argv[1:]`); see `TrainArgumentParser`."""
    return make_parser().parse_args_and_config(argv)


def parse_eps(text: str | float) -> float:
    """`"2/255"` -> 0.00784; `"0.01"` -> 0.01."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"`eval_eps` value {text!r} is not a number or a fraction like 2/255.") from err
    if not 0 <= value <= 1:
        raise ValueError(f"`eval_eps` value {text!r} = {value:g} is outside [0, 1]: budgets are in [0,1] pixel units.")
    return value
