"""MMT-ARD: multimodal multi-teacher adversarial robust distillation for CLIP-like models.

The public names below are imported on first use (PEP 562), so `import mmt_ard` and the command lines' `--help` do
not pay for torch and transformers; `from mmt_ard import MMTARDTrainer` works as always.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _aliases
from ._lazy import lazy_exports
from ._version import __version__ as __version__

# public name -> the module that defines it
_PUBLIC = {
    "MMTARDConfig": ".training.config",
    "MMTARDTrainer": ".training.trainer",
    "PRESETS": ".training.presets",
    "StudentBundle": ".training.trainer",
    "Teacher": ".training.teachers",
    "WEIGHTINGS": ".training.weighting",
    "ZeroShotCLIP": ".models",
    "build_text_head": ".models",
    "export_to_lvlm": ".export",
    "load_clip": ".models",
    "make_weighting": ".training.weighting",
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
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)

if TYPE_CHECKING:
    from .export import export_to_lvlm
    from .models import ZeroShotCLIP, build_text_head, load_clip
    from .training.config import MMTARDConfig
    from .training.presets import PRESETS
    from .training.teachers import Teacher
    from .training.trainer import MMTARDTrainer, StudentBundle
    from .training.weighting import WEIGHTINGS, make_weighting
