"""Old module paths, kept for one release (0.2) after the package root was grouped into packages.

`import mmt_ard.trainer` or `from mmt_ard.apgd import apgd` still work: they return the module at its new path
(the same module object, so patching one patches the other) and warn once with a `FutureWarning` that names the new
path. `mmt_ard.attacks`, `mmt_ard.data` and `mmt_ard.embedded` need no alias: they are packages now, and re-export
what the old modules of those names held. See docs/architecture.md and the changelog.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

_TRAINING = (
    "checkpointing config lora losses memory model_card nonfinite precision presets step_metrics teacher_cache "
    "teachers trainer validation weighting"
).split()

MOVED: dict[str, str] = {
    "mmt_ard.apgd": "mmt_ard.attacks.auto_pgd",
    "mmt_ard.random_streams": "mmt_ard.attacks.random_streams",
    "mmt_ard.distributed": "mmt_ard.runtime.distributed",
    "mmt_ard.preemption": "mmt_ard.runtime.preemption",
    "mmt_ard.known_datasets": "mmt_ard.data.known_datasets",
    "mmt_ard.tiny": "mmt_ard.embedded.tiny",
    **{f"mmt_ard.{name}": f"mmt_ard.training.{name}" for name in _TRAINING},
    # the training run's library logic, out of the command line (`mmt_ard.pipeline`)
    "mmt_ard.cli.train_inputs": "mmt_ard.pipeline.inputs",
    "mmt_ard.cli.train_report": "mmt_ard.pipeline.report",
    "mmt_ard.cli.run_dir": "mmt_ard.pipeline.run_dir",
    "mmt_ard.cli.publish": "mmt_ard.pipeline.publish",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return None  # a placeholder: exec_module swaps in the real module

    def exec_module(self, module) -> None:
        warnings.warn(
            f"`{module.__name__}` moved to `{self.target}`; the old path is an alias that goes away in 0.2.",
            FutureWarning,
            stacklevel=2,
        )
        # the import system returns what sys.modules holds under the old name once this returns
        sys.modules[module.__name__] = importlib.import_module(self.target)


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED.get(fullname)
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new)) if new else None


def install() -> None:
    """Put the alias finder on `sys.meta_path` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
