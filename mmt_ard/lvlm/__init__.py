"""What the library knows about Hugging Face LVLM classes, shared by the export (`mmt_ard.export`) and the LVLM
evaluation (`mmt_ard.evaluation.lvlm`): one registry entry per class (`registry.py`) and the classes' image
pipelines made differentiable (`pipelines.py`, on Pillow's resize reproduced in torch, `resample.py`).

Layering: this package imports only `mmt_ard.models` (and transformers); export and evaluation import it.
"""

from .._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (mmt_ard/_lazy.py)
_EXPORTS = {
    "ImagePipeline": ".pipelines",
    "image_pipeline": ".pipelines",
    "LVLM_CLASSES": ".registry",
    "LVLMClass": ".registry",
    "lvlm_class": ".registry",
    "supported_classes": ".registry",
    "tower_family_of": ".registry",
    "pil_resize": ".resample",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted([*_EXPORTS])
