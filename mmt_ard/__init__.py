"""MMT-ARD: multimodal multi-teacher adversarial robust distillation for CLIP-like models."""

from .config import MMTARDConfig
from .export import export_to_lvlm
from .models import ZeroShotCLIP, build_text_head, load_clip
from .presets import PRESETS
from .teachers import Teacher
from .trainer import MMTARDTrainer, StudentBundle
from .weighting import WEIGHTINGS, make_weighting

__version__ = "0.1.0"

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
