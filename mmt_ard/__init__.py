"""MMT-ARD: multimodal multi-teacher adversarial robust distillation for CLIP-like models.

The public names below are imported on first use (PEP 562), so `import mmt_ard` and the command lines' `--help` do
not pay for torch and transformers; `from mmt_ard import MMTARDTrainer` works as always.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import _aliases
from ._version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "MMTARDConfig": "mmt_ard.training.config",
    "MMTARDTrainer": "mmt_ard.training.trainer",
    "PRESETS": "mmt_ard.training.presets",
    "StudentBundle": "mmt_ard.training.trainer",
    "Teacher": "mmt_ard.training.teachers",
    "WEIGHTINGS": "mmt_ard.training.weighting",
    "ZeroShotCLIP": "mmt_ard.models",
    "build_text_head": "mmt_ard.models",
    "export_to_lvlm": "mmt_ard.export",
    "load_clip": "mmt_ard.models",
    "make_weighting": "mmt_ard.training.weighting",
}

__all__ = [
    "MMTARDConfig",
    "MMTARDTrainer",
    "PRESETS",
    "StudentBundle",
    "Teacher",
    "WEIGHTINGS",
    "ZeroShotCLIP",
    "build_text_head",
    "export_to_lvlm",
    "load_clip",
    "make_weighting",
]
assert sorted(__all__) == sorted(_PUBLIC)

_aliases.install()


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'mmt_ard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:
    from .export import export_to_lvlm
    from .models import ZeroShotCLIP, build_text_head, load_clip
    from .training.config import MMTARDConfig
    from .training.presets import PRESETS
    from .training.teachers import Teacher
    from .training.trainer import MMTARDTrainer, StudentBundle
    from .training.weighting import WEIGHTINGS, make_weighting
