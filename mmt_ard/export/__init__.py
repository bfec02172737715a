"""Export a robust student's vision tower into Hugging Face LVLM checkpoints of every class of the shared registry
(`mmt_ard.lvlm.LVLM_CLASSES`: LLaVA, LLaVA-NeXT, LLaVA-OneVision, PaliGemma, Idefics3, SmolVLM, Aya Vision, Gemma 3). See
docs/lvlm.md and the `mmt-ard-export` command."""

from .._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (mmt_ard/_lazy.py)
_EXPORTS = {
    "LVLM_FAMILIES": ".families",
    "LVLMFamily": ".families",
    "supported_families": ".families",
    "ExportReport": ".lvlm_export",
    "export_to_lvlm": ".lvlm_export",
    "resize_position_embedding": ".position",
    "StudentTower": ".students",
    "load_student": ".students",
    "ExportError": ".tower",
    "fold_normalization": ".tower",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted([*_EXPORTS])
