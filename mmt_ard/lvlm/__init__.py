"""What the library knows about Hugging Face LVLM classes, shared by the export (`mmt_ard.export`) and the LVLM
evaluation (`mmt_ard.evaluation.lvlm`): one registry entry per class (`registry.py`) and the classes' image
pipelines made differentiable (`pipelines.py`, on Pillow's resize reproduced in torch, `resample.py`).

Layering: this package imports only `mmt_ard.models` (and transformers); export and evaluation import it.
"""

from .pipelines import ImagePipeline, image_pipeline
from .registry import LVLM_CLASSES, LVLMClass, lvlm_class, supported_classes, tower_family_of
from .resample import pil_resize

__all__ = [
    "LVLM_CLASSES",
    "ImagePipeline",
    "LVLMClass",
    "image_pipeline",
    "lvlm_class",
    "pil_resize",
    "supported_classes",
    "tower_family_of",
]
