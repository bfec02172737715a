"""Progress for batch systems (`mmt_ard.training.progress`): without a terminal, one plain line per logging step and
no progress-bar refreshes; on a terminal, the bar; an explicit `disable_tqdm` always wins."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from transformers import PrinterCallback, ProgressCallback

from mmt_ard.training import progress
from mmt_ard.training.progress import LogLineCallback, progress_bar_fits

HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resume_helper.py")
# the kill-and-resume tests' tiny run (mmt-ard-sigmoid, two teachers, 48 digits at batch 8), disable_tqdm left unset
RUN = f"""
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("helper", {HELPER!r})
helper = importlib.util.module_from_spec(spec)
spec.loader.exec_module(helper)
torch.set_num_threads(1)
trainer = helper.build_trainer(sys.argv[1], disable_tqdm=None, max_steps=6, logging_steps=2, save_strategy="no")
trainer.train()
"""


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _callback_types(trainer) -> set[type]:
    return {type(c) for c in trainer.callback_handler.callbacks}


def test_without_a_terminal_one_line_per_logging_step_and_no_bar(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", RUN, str(tmp_path / "out")],
        capture_output=True,  # pipes: neither stdout nor stderr is a terminal
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stdout and "\r" not in proc.stderr  # no bar refreshes anywhere
    assert "it/s" not in proc.stderr
    lines = proc.stdout.splitlines()
    steps = [line for line in lines if re.match(r"step \d+/6 \(\d+%\) \| loss ", line)]
    assert [int(re.match(r"step (\d+)", line).group(1)) for line in steps] == [2, 4, 6]
    for line in steps:
        assert re.search(r"\| [\d.]+ images/s \|", line) and re.search(r"\| ETA \d+:\d\d:\d\d$", line), line
    assert steps[-1].endswith("ETA 0:00:00")
    done = [line for line in lines if line.startswith("step 6/6 (100%) | done | loss ")]
    assert len(done) == 1
    assert not [line for line in lines if line.startswith("{")]  # not PrinterCallback's dictionaries


@pytest.fixture
def transformers_warning_verbosity():
    """transformers' own default turns the bar off above `warning` verbosity: pin it (another test may have changed
    it in this process)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    yield
    hf_logging.set_verbosity(before)


@pytest.mark.usefixtures("transformers_warning_verbosity")
def test_terminal_keeps_the_bar_and_an_explicit_choice_wins(make_trainer, monkeypatch):
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    assert progress_bar_fits()
    on_terminal = make_trainer("tecoa", disable_tqdm=None)
    assert on_terminal.args.disable_tqdm is False  # transformers' own default decides (verbosity)
    assert ProgressCallback in _callback_types(on_terminal)
    assert LogLineCallback not in _callback_types(on_terminal)

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a file
    assert not progress_bar_fits()
    in_a_file = make_trainer("tecoa", disable_tqdm=None)
    assert in_a_file.args.disable_tqdm is True
    assert LogLineCallback in _callback_types(in_a_file)
    assert not {ProgressCallback, PrinterCallback} & _callback_types(in_a_file)
    forced_bar = make_trainer("tecoa", disable_tqdm=False)  # the user asked for the bar: they get it
    assert ProgressCallback in _callback_types(forced_bar)
    assert LogLineCallback not in _callback_types(forced_bar)


def test_rate_and_eta_arithmetic(monkeypatch):
    """images/s over the window since the last line (global batch = per-device x accumulation x processes), ETA from
    the mean time per step since `train()` began (here resumed at step 10)."""
    clock = iter([100.0, 120.0, 130.0])
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    args = SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=2, world_size=2)
    state = SimpleNamespace(global_step=10, max_steps=50, train_batch_size=8, is_world_process_zero=True)
    callback, out = LogLineCallback(stream=io.StringIO()), None
    callback.on_train_begin(args, state, None)  # t = 100, step 10
    state.global_step = 20
    out = callback.format(args, state, {"loss": 0.5, "learning_rate": 1e-4})  # t = 120
    assert out == "step 20/50 (40%) | loss 0.5 | lr 0.0001 | 16.0 images/s | elapsed 0:00:20 | ETA 0:01:00"
    state.global_step = 25
    out = callback.format(args, state, {"loss": 0.25})  # t = 130: 5 steps x 32 images in 10 s
    assert out == "step 25/50 (50%) | loss 0.25 | 16.0 images/s | elapsed 0:00:30 | ETA 0:00:50"


def test_progress_bar_fits_only_a_terminal():
    assert progress_bar_fits(FakeTerminal()) is True
    assert progress_bar_fits(io.StringIO()) is False
    assert progress_bar_fits(object()) is False  # no isatty at all
    closed = open(os.devnull, "w")  # noqa: SIM115 - closed at once: isatty() then raises ValueError
    closed.close()
    assert progress_bar_fits(closed) is False
