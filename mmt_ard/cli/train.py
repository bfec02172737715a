"""`mmt-ard-train`: make a CLIP image encoder adversarially robust with MMT-ARD, evaluate it, save it, push it.

    mmt-ard-train --output_dir runs/digits                       # the embedded default, offline (see mmt_ard/embedded/)
    mmt-ard-train run.yaml --max_steps 100                       # a YAML/JSON config; flags override it
    accelerate launch -m mmt_ard.cli.train --student openai/clip-vit-base-patch32 ...   # several processes

`main` checks the arguments and runs the library's `mmt_ard.pipeline.run_training` (which a Python user can call
without the command line); `examples/run_mmt_ard.py` runs the same `main`. `mmt-ard-train --help` lists every option (`ScriptArguments` and
`MMTARDConfig`); docs/quickstart.md and docs/configuration.md describe them. From Python:

>>> script_args, config, explicit = parse_args(["--student", "openai/clip-vit-base-patch32", ...])
>>> results = main(script_args, config, explicit)   # also written to output_dir/results.json
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from .errors import run_command, running
from .train_args import ScriptArguments, make_parser, parse_args

if TYPE_CHECKING:
    from ..pipeline.publish import HubPushError
    from ..training.config import MMTARDConfig

__all__ = ["HubPushError", "ScriptArguments", "cli", "main", "make_parser", "parse_args"]

PROG = "mmt-ard-train"


def __getattr__(name: str):
    if name == "HubPushError":  # `from mmt_ard.cli.train import HubPushError`, without importing it for --help
        from ..pipeline.publish import HubPushError

        return HubPushError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(script_args: ScriptArguments, config: MMTARDConfig, explicit: set[str] = frozenset()) -> dict:
    """Check the arguments, then run `mmt_ard.pipeline.run_training`: load the models and data, evaluate them, train,
    evaluate, save, push; returns the results dictionary (also written to `output_dir/results.json`, and rendered as
    the model card `output_dir/README.md`).

    A flag the run would ignore, a name that cannot be found, or an `output_dir` holding another run raise a
    `UsageError` or a `ValueError` (`check_run`) before anything is loaded or written."""
    # imported here, not at the top: `mmt-ard-train --help` and a refused flag need only the parser
    from ..pipeline.run import run_training
    from .train_checks import check_run

    check_run(script_args, config, explicit)
    return run_training(script_args, config, explicit, on_start=running)


def cli(argv: list[str] | None = None) -> int:
    """The console command: parse, check, run `main`; returns the exit status (see `mmt_ard.cli.errors`): 0 done,
    1 a failure while running (e.g. the Hub push, after everything was saved), 2 a wrong command line or
    configuration (one line on stderr; nothing ran), 75 preempted."""
    from ..pipeline.run import configure_logging

    configure_logging()  # before parsing: what the parser decides (e.g. step checkpoints turned on) is logged
    try:
        return run_command(PROG, _command, argv)
    finally:
        from ..runtime.distributed import shutdown_process_group

        shutdown_process_group()  # every rank exits cleanly (a live gloo group can abort one at interpreter exit)


def _command(argv: list[str]) -> int:
    main(*make_parser(prog=PROG).parse_args_and_config(argv))
    return 0


if __name__ == "__main__":  # `accelerate launch -m mmt_ard.cli.train ...`
    sys.exit(cli())
