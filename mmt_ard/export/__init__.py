"""Export a robust student's vision tower into Hugging Face LVLM checkpoints of every class of the shared registry
(`mmt_ard.lvlm.LVLM_CLASSES`: LLaVA, LLaVA-NeXT, LLaVA-OneVision, PaliGemma, Idefics3, SmolVLM, Aya Vision, Gemma 3). See
docs/lvlm.md and the `mmt-ard-export` command."""

from .families import LVLM_FAMILIES, LVLMFamily, supported_families
from .lvlm_export import ExportReport, export_to_lvlm
from .position import resize_position_embedding
from .students import StudentTower, load_student
from .tower import ExportError, fold_normalization

__all__ = [
    "LVLM_FAMILIES",
    "ExportError",
    "ExportReport",
    "LVLMFamily",
    "StudentTower",
    "export_to_lvlm",
    "fold_normalization",
    "load_student",
    "resize_position_embedding",
    "supported_families",
]
