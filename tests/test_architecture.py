"""The package layout: old module paths as aliases, lazy package namespaces, and commands whose --help and refusals
need neither torch nor transformers."""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
import warnings

import pytest

import mmt_ard
from mmt_ard._aliases import MOVED

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("old", ["mmt_ard.trainer", "mmt_ard.apgd", "mmt_ard.tiny"])
def test_old_module_path_is_the_new_module_and_warns(old):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert any(issubclass(w.category, FutureWarning) and MOVED[old] in str(w.message) for w in caught)


def test_every_alias_points_at_an_existing_module():
    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, (old, new)
        assert not os.path.exists(os.path.join(REPO, *old.split(".")) + ".py"), f"{old} is still a file"


def test_public_names_resolve_and_are_listed():
    for name in mmt_ard.__all__:
        assert getattr(mmt_ard, name) is not None
        assert name in dir(mmt_ard)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mmt_ard.nope  # noqa: B018


def test_package_root_holds_packages_and_the_documented_modules():
    root = os.path.join(REPO, "mmt_ard")
    modules = sorted(n for n in os.listdir(root) if n.endswith(".py"))
    assert modules == ["__init__.py", "_aliases.py", "_lazy.py", "_version.py"]
    with open(os.path.join(REPO, "docs", "architecture.md"), encoding="utf-8") as f:
        page = f.read()
    for name in modules[1:]:
        assert f"`{name}`" in page


def _imported_after(code: str) -> set[str]:
    """The top-level modules a fresh interpreter has imported after running `code`."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("command", ["export", "evaluate", "eval_lvlm"])
def test_help_and_a_refused_flag_import_neither_torch_nor_transformers(command):
    code = (
        f"import contextlib, io\nfrom mmt_ard.cli.{command} import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "    assert main(['--help']) == 0\n    assert main(['--no-such-flag']) == 2\n"
    )
    loaded = _imported_after(code)
    assert not {"torch", "transformers", "datasets"} & loaded


def test_help_shows_only_defaults_that_say_something():
    from mmt_ard.cli.eval_lvlm import build_parser as lvlm_parser
    from mmt_ard.cli.evaluate import build_parser as eval_parser

    for parser in (eval_parser(), lvlm_parser()):
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
        assert "(default). (default" not in text
    assert "(default: 100)" in lvlm_parser().format_help()  # --n-iter: a default worth showing


def test_quiet_libraries_silences_loading_bars_and_notices_and_restores_them(tmp_path, capfd, monkeypatch, caplog):
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    from mmt_ard.cli.verbosity import quiet_libraries, verbose_requested
    from mmt_ard.embedded.tiny import build_tiny_clip

    assert verbose_requested(["--verbose", "--x", "1"]) == (["--x", "1"], True)
    model, _ = build_tiny_clip()
    model.save_pretrained(tmp_path)
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(name, raising=False)
    notice = logging.getLogger("transformers.trainer_utils")
    hf_logging.enable_progress_bar()
    capfd.readouterr()
    CLIPModel.from_pretrained(tmp_path)
    assert "Loading weights" in capfd.readouterr().err  # the control: the bar is there to silence
    with quiet_libraries(), caplog.at_level(logging.WARNING):
        CLIPModel.from_pretrained(tmp_path)
        notice.warning("The tokenizer has new PAD/BOS/EOS tokens that differ from the model config")
        notice.warning("another warning")
    assert "Loading weights" not in capfd.readouterr().err
    assert "PAD/BOS/EOS" not in caplog.text and "another warning" in caplog.text
    assert hf_logging.is_progress_bar_enabled() and not notice.filters  # restored
    assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
