"""The training run from Python, without the command line: `mmt_ard.pipeline.run_training`."""

from __future__ import annotations

import json

import pytest

from mmt_ard.embedded import DISTILLATION_DEFAULTS, QUICK_DEFAULTS
from mmt_ard.pipeline import RunFolderError, ScriptArguments, run_training
from mmt_ard.training import MMTARDConfig


def test_quick_embedded_run_from_python(tmp_path):
    out = tmp_path / "run"
    script_args = ScriptArguments(quick=True, embedded_cache_dir=str(tmp_path / "cache"))
    settings = {**DISTILLATION_DEFAULTS, **QUICK_DEFAULTS, "output_dir": str(out), "dataloader_pin_memory": False}
    results = run_training(script_args, MMTARDConfig(**settings, disable_tqdm=True))
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "results.json").read_text())["robustness"]["rows"] == results["robustness"]["rows"]
    # the library, like the command, refuses to write over a finished run
    with pytest.raises(RunFolderError, match="holds another run"):
        run_training(script_args, MMTARDConfig(**settings))
