"""One error path for every command: one line per user error on stderr, an exit status that says what happened, the
traceback only on request.

    @command("mmt-ard-eval")
    def main(argv: list[str]) -> int: ...      # raise UsageError / let library errors propagate; call running()

    sys.exit(main())                            # `main(argv)` returns the exit status; it never raises

What the user sees: `<prog>: error: <what>=<value>: <why>. <fix>` (a `UsageError`), or the library's own message
(which names the field, the value and the fix) after `<prog>: error: `. Exit statuses (`EXIT_*`):

* 0: done;
* 1 (`EXIT_FAILURE`): a failure while running: unreadable data met mid-run (`BadSampleError`), a failed Hub push,
  out of memory, any error raised after the command called `running()`, and unexpected errors (bugs), whose line
  says how to get the traceback;
* 2 (`EXIT_USAGE`): the command line or the configuration is wrong: argparse's errors, `UsageError`, and the
  library's `ValueError` / `TypeError` / `LookupError` / `OSError` raised before the command called `running()`
  (nothing has run, nothing on disk has changed);
* 75 (`EXIT_PREEMPTED`): training was preempted and left a checkpoint to resume from (`mmt_ard.runtime.preemption`);
* 130: interrupted (Ctrl-C).

`--debug` (a bare flag anywhere on the command line, taken off before the command parses it) or the environment
variable `MMT_ARD_DEBUG=1` prints the traceback before the line.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from .verbosity import VERBOSE_ENV, VERBOSE_FLAG, quiet_libraries, verbose_requested

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 75  # = mmt_ard.runtime.preemption.PREEMPTED_EXIT_CODE (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130
DEBUG_FLAG = "--debug"
DEBUG_ENV = "MMT_ARD_DEBUG"

# raised before the run starts, these are mistakes in the command line or the configuration (exit 2)
CONFIGURATION_ERRORS = (
    ValueError,
    TypeError,
    LookupError,
    OSError,
    argparse.ArgumentError,
    argparse.ArgumentTypeError,
)


class CommandError(Exception):
    """A user error a command reports in one line, with its exit status.

    Args:
        what: the flag or field at fault (`--student`, `output_dir`); empty for a message without one.
        value: the value it got (shown with `repr`).
        why: what is wrong with it (no trailing period).
        fix: what to do instead (a sentence, or empty).
    """

    exit_code = EXIT_FAILURE

    def __init__(self, what: str, value=None, why: str = "", fix: str = ""):
        self.what, self.value, self.why, self.fix = what, value, why, fix
        head = f"{what}={value!r}: {why}" if what else why
        super().__init__(f"{head.rstrip('.')}. {fix}".strip())


class UsageError(CommandError, ValueError):
    """A mistake in the command line or the configuration (exit status 2); also a `ValueError` for Python callers."""

    exit_code = EXIT_USAGE


def plain_usage_error(message: str) -> UsageError:
    """A `UsageError` with a ready-made message (argparse's, say)."""
    return UsageError("", None, message.rstrip("."))


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make an existing parser (and its subparsers) raise `UsageError` instead of printing usage and exiting."""

    def error(message: str):
        raise plain_usage_error(f"{message.rstrip('.')} (see --help)")

    parser.error = error  # type: ignore[method-assign]
    return parser


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """List `--debug` and `--verbose` in a command's `--help` (the command wrapper takes them off the command line
    itself)."""
    parser.add_argument(
        DEBUG_FLAG,
        action="store_true",
        help=f"Print the Python traceback of an error (also: {DEBUG_ENV}=1).",
    )
    parser.add_argument(
        VERBOSE_FLAG,
        action="store_true",
        help=f"Also print the libraries' warnings and progress bars (also: {VERBOSE_ENV}=1).",
    )


def debug_requested(argv: list[str]) -> tuple[list[str], bool]:
    """`(argv without a bare --debug, whether it was there or MMT_ARD_DEBUG is set)`.

    `--debug VALUE` (TrainingArguments' own `--debug underflow_overflow`) is left alone: only `--debug` followed by
    nothing or by another option is the traceback switch.
    """
    rest, found = [], False
    for i, token in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else None
        if token == DEBUG_FLAG and (following is None or following.startswith("-")):
            found = True
            continue
        rest.append(token)
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    return rest, found or env


@dataclass
class _Context:
    prog: str
    debug: bool
    phase: str = "setup"  # "setup" until the command calls `running()`


_ACTIVE: list[_Context] = []


def running() -> None:
    """Tell the error path that the command's checks are done and the run has started: from now on an error is a
    run-time failure (exit 1), not a configuration error (exit 2). A no-op outside a command."""
    if _ACTIVE:
        _ACTIVE[-1].phase = "run"


# failures while running wherever they are raised (looked up only once their module is imported: a module not
# imported cannot have raised them, and the commands stay quick to start)
RUN_TIME_ERRORS = (
    ("mmt_ard.data.bad_samples", "BadSampleError"),
    ("mmt_ard.pipeline.publish", "HubPushError"),
    ("mmt_ard.training.memory", "TrainingOutOfMemoryError"),
    ("mmt_ard.training.nonfinite", "NonFiniteLossError"),
)


def _run_time_types() -> tuple[type, ...]:
    found = (getattr(sys.modules.get(module), name, None) for module, name in RUN_TIME_ERRORS)
    return tuple(t for t in found if isinstance(t, type))


def exit_code_for(err: BaseException, phase: str = "setup") -> int:
    """The exit status of a command that ended with `err` in `phase` (`setup` or `run`)."""
    if isinstance(err, SystemExit):
        code = err.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_FAILURE)
    if isinstance(err, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(err, CommandError):
        return err.exit_code
    if isinstance(err, _run_time_types()):
        return EXIT_FAILURE
    if phase == "setup" and isinstance(err, CONFIGURATION_ERRORS):
        return EXIT_USAGE
    return EXIT_FAILURE


def one_line(text: str) -> str:
    """`text` on one line (library messages sometimes carry a newline from a wrapped error)."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def error_line(prog: str, err: BaseException, phase: str = "setup") -> str:
    """`<prog>: error: <message>` for `err` (an unexpected error is named by its type and points to --debug)."""
    # ImportError: an optional dependency that is not installed (its message names the extra to install)
    expected = isinstance(err, (CommandError, RuntimeError, ImportError, *CONFIGURATION_ERRORS, *_run_time_types()))
    message = one_line(str(err)) or type(err).__name__
    if isinstance(err, KeyboardInterrupt):
        return f"{prog}: interrupted"
    if not expected:
        return (
            f"{prog}: error: {type(err).__name__}: {message} (unexpected: rerun with {DEBUG_FLAG} for the traceback, "
            "and please report it)"
        )
    return f"{prog}: error: {message}"


def _first_process() -> bool:
    """Whether this is the first (or only) process of a launch (`RANK` unset or 0)."""
    return os.environ.get("RANK", "0") in ("", "0")


def run_command(prog: str, main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run `main(argv)` behind the error path and return the exit status (never raises, except under `--debug`
    nothing changes but the printed traceback).

    Args:
        prog: the command's name, the start of every error line (`mmt-ard-eval`).
        main: the command: parses `argv`, checks, calls `running()` when the run starts, returns a status (None: 0).
        argv: the arguments (default: `sys.argv[1:]`); a bare `--debug` is taken off and turns tracebacks on,
            `--verbose` is taken off and keeps the libraries' warnings and progress bars (`verbosity.py`).
    """
    argv, debug = debug_requested(list(sys.argv[1:] if argv is None else argv))
    argv, verbose = verbose_requested(argv)
    context = _Context(prog, debug)
    _ACTIVE.append(context)
    try:
        with contextlib.nullcontext() if verbose else quiet_libraries():
            status = main(argv)
        return EXIT_OK if status is None else int(status)
    except SystemExit as err:  # argparse's --help (0), preemption (75), a command's own sys.exit
        code = exit_code_for(err)
        if code == EXIT_PREEMPTED:
            print(f"{prog}: {one_line(str(err))}", file=sys.stderr)
        return code
    except BaseException as err:  # noqa: BLE001 - the one place where every error of a command ends
        code = exit_code_for(err, context.phase)
        # a configuration error is the same on every process of a launch: only the first one says it
        if debug or code != EXIT_USAGE or _first_process():
            if debug:
                traceback.print_exc(file=sys.stderr)
            print(error_line(prog, err, context.phase), file=sys.stderr)
        return code
    finally:
        _ACTIVE.pop()
        sys.stderr.flush()


def command(prog: str) -> Callable[[Callable[[list[str]], int | None]], Callable[..., int]]:
    """Decorator: `main(argv)` of a command becomes `main(argv=None) -> exit status` behind `run_command`."""

    def wrap(main: Callable[[list[str]], int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def runner(argv: list[str] | None = None) -> int:
            return run_command(prog, main, argv)

        return runner

    return wrap
