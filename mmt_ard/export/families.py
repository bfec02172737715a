"""Which LVLMs a robust tower can go into, and what kind of tower each holds: a view of the shared registry of LVLM
classes (`mmt_ard.lvlm.registry`), which the LVLM evaluation reads too.

An LVLM class is named by the `architectures[0]` of its `config.json`; its tower's model family
(`mmt_ard.models.families`) comes from `config.vision_config.model_type`.
"""

from __future__ import annotations

from ..lvlm.registry import EXPORTABLE_FAMILIES, LVLM_CLASSES, LVLMClass, tower_family_of
from ..lvlm.registry import lvlm_class as _lvlm_class
from ..lvlm.registry import supported_classes as supported_families

# the registry under the export's older names
LVLMFamily = LVLMClass
LVLM_FAMILIES = LVLM_CLASSES


def lvlm_family(config: dict, where: str) -> LVLMClass:
    """The registry entry of an LVLM from its `config.json` content; a `ValueError` listing the supported ones."""
    return _lvlm_class(config, where, flag="--into")


__all__ = [
    "EXPORTABLE_FAMILIES",
    "LVLM_FAMILIES",
    "LVLMFamily",
    "lvlm_family",
    "supported_families",
    "tower_family_of",
]
