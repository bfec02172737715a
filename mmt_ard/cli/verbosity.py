"""What the commands print of the libraries they use: by default, their own messages and progress, and the libraries'
errors; `--verbose` (or `MMT_ARD_VERBOSE=1`) brings back the libraries' warnings and progress bars.

Silenced by default: transformers' warnings and infos (a tiny tokenizer's `bos_token_id` notice, generation-config
notes), and the progress bars of loading and writing weights (transformers, huggingface_hub) and of preparing data
(datasets). Not silenced: `mmt_ard`'s own log lines (its checks say what matters about a model or a dataset),
transformers' errors, Python warnings, and the training progress (the Trainer's bar, or a plain line per logging
step when the output is not a terminal). A variable the user set (`TRANSFORMERS_VERBOSITY`,
`HF_HUB_DISABLE_PROGRESS_BARS`, `HF_DATASETS_DISABLE_PROGRESS_BARS`) wins.
"""

from __future__ import annotations

import contextlib
import os
import sys

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "MMT_ARD_VERBOSE"

# set before the libraries are imported, and inherited by the processes a launcher starts
_QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def verbose_requested(argv: list[str]) -> tuple[list[str], bool]:
    """`(argv without --verbose, whether it was there or MMT_ARD_VERBOSE is set)`."""
    rest = [token for token in argv if token != VERBOSE_FLAG]
    env = os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    return rest, len(rest) < len(argv) or env


@contextlib.contextmanager
def quiet_libraries():
    """Silence the libraries' warnings and progress bars (see the module docstring) while the block runs, before or
    after their import; everything is as it was afterwards (a Python caller of a command keeps its own settings)."""
    saved_env = {name: os.environ.get(name) for name in _QUIET_ENV}
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    hf_logging = None
    # libraries imported already read their settings at import: set them directly too
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        saved_hf = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        if os.environ["TRANSFORMERS_VERBOSITY"] == "error":
            hf_logging.set_verbosity_error()
        if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
            hf_logging.disable_progress_bar()
    datasets_bars = None
    if "datasets" in sys.modules and os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1":
        import datasets

        datasets_bars = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if hf_logging is not None:
            hf_logging.set_verbosity(saved_hf[0])
            if saved_hf[1]:
                hf_logging.enable_progress_bar()
        if datasets_bars:
            datasets.enable_progress_bars()
