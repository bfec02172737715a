"""What the commands print of the libraries they use: by default their warnings, but not their loading, writing and
data-preparation progress bars nor the notices that say nothing to a user of these commands; `--verbose` (or
`MMT_ARD_VERBOSE=1`) brings everything back.

Silenced by default:
- the progress bars of loading and writing weights (transformers, huggingface_hub) and of preparing data
  (datasets); a variable the user set (`HF_HUB_DISABLE_PROGRESS_BARS`, `HF_DATASETS_DISABLE_PROGRESS_BARS`) wins;
- transformers' notice that the tokenizer's PAD/BOS/EOS ids (`bos_token_id`, ...) differ from the model config's,
  which the Trainer logs for every tiny or zero-shot text tower: nothing here generates text with them.

Not silenced: `mmt_ard`'s own log lines, every other library warning and error, Python warnings, and the training
progress (the Trainer's bar on a terminal; transformers' verbosity is left alone because it also decides whether
the Trainer shows that bar).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "MMT_ARD_VERBOSE"

# set before the libraries are imported (they read them at import), and inherited by the processes a launcher starts
_QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
# (logger, start of the message) of library notices that say nothing to a user of the commands
_NOISE = (("transformers.trainer_utils", "The tokenizer has new PAD/BOS/EOS tokens"),)


class _DropNotices(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def verbose_requested(argv: list[str]) -> tuple[list[str], bool]:
    """`(argv without --verbose, whether it was there or MMT_ARD_VERBOSE is set)`."""
    rest = [token for token in argv if token != VERBOSE_FLAG]
    env = os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
    return rest, len(rest) < len(argv) or env


@contextlib.contextmanager
def quiet_libraries():
    """Silence the libraries' progress bars and notices (see the module docstring) while the block runs, whether or
    not they are imported yet; everything is as it was afterwards (a Python caller of a command keeps its settings)."""
    saved_env = {name: os.environ.get(name) for name in _QUIET_ENV}
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    filters = [(logging.getLogger(name), _DropNotices(prefix)) for name, prefix in _NOISE]
    for logger, notice_filter in filters:
        logger.addFilter(notice_filter)
    # libraries imported already read their settings at import: set them directly too
    hf_logging = hf_bars = datasets = datasets_bars = None
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        from transformers.utils import logging as hf_logging

        hf_bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
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
        for logger, notice_filter in filters:
            logger.removeFilter(notice_filter)
        if hf_bars:
            hf_logging.enable_progress_bar()
        if datasets_bars:
            datasets.enable_progress_bars()
