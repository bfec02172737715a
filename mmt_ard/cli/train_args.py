"""The parser of `mmt-ard-train`: `ScriptArguments` (`mmt_ard.pipeline.arguments`) and `MMTARDConfig`, from flags
over a config file over the defaults (the embedded default's recipe when no `--student` is given).

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

import torch
from transformers import HfArgumentParser

from ..embedded.recipe import DISTILLATION_DEFAULTS, QUICK_DEFAULTS
from ..pipeline.arguments import ScriptArguments, parse_eps
from ..training.config import MMTARDConfig
from .config_file import flags_given, read_config_file, split_config_path
from .errors import UsageError, plain_usage_error
from .help_format import DefaultsHelpFormatter

logger = logging.getLogger(__name__)

__all__ = ["ScriptArguments", "TrainArgumentParser", "defaults_for", "make_parser", "parse_args", "parse_eps"]

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
