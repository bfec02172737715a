"""Loading the student whose vision tower goes into an LVLM: a CLIP or SigLIP model, as a Hub id, a folder, a
training run's `output_dir` or an open_clip checkpoint.

`load_student` is the one place that knows how students are read; it returns the tower's tensors, its vision
config and its image normalisation, nothing else. transformers checkpoints (CLIP, SigLIP, full or vision-only) are
read with the class their config's `model_type` names in the model families (`mmt_ard.models.families`), with only
their image processor; open_clip checkpoints (FARE/TeCoA releases) go through `mmt_ard.load_clip`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models.families import ModelFamily
from .families import tower_family_of


@dataclass
class StudentTower:
    """The vision tower of a student, ready to be mapped into an LVLM.

    Args:
        state_dict: the tower's tensors (fp32, CPU), keyed as inside a transformers vision model
            (`embeddings.patch_embedding.weight`, `encoder.layers.0...`, ...).
        vision_config: the tower's vision config (`CLIPVisionConfig` / `SiglipVisionConfig`).
        kind: CLIP or SigLIP.
        image_mean: per-channel mean the student was trained with.
        image_std: per-channel std the student was trained with.
        normalization_source: where `image_mean`/`image_std` come from (for logs and the model card).
        source: what the user gave (`--student`).
        path: the folder the weights were read from (a run's saved model or newest checkpoint), if local.
        provenance: the training run's `results.json` (preset, teachers, robustness table), when there is one.
    """

    state_dict: dict[str, torch.Tensor]
    vision_config: object
    kind: ModelFamily
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    normalization_source: str
    source: str
    path: str | None = None
    provenance: dict = field(default_factory=dict)


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _normalization(processor, kind: ModelFamily, where: str) -> tuple[tuple, tuple, str]:
    image_processor = getattr(processor, "image_processor", processor)
    mean = getattr(image_processor, "image_mean", None)
    std = getattr(image_processor, "image_std", None)
    if mean is None or std is None:
        return kind.image_mean, kind.image_std, f"the {kind.title} default (no image processor found)"
    return tuple(float(m) for m in mean), tuple(float(s) for s in std), f"the image processor of {where}"


def _has_processor_files(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in ("preprocessor_config.json", "processor_config.json"))


def _tower_of(model: nn.Module) -> tuple[nn.Module, object]:
    """The vision transformer inside a CLIP/SigLIP model (or a vision-only model) and its vision config."""
    config = model.config
    vision_config = getattr(config, "vision_config", None) or config
    tower = getattr(model, "vision_model", None)
    return (model if tower is None else tower), vision_config


def student_from_model(
    model: nn.Module, processor=None, source: str = "<model object>", path: str | None = None
) -> StudentTower:
    """A `StudentTower` from a loaded `CLIPModel`, `SiglipModel` or vision-only model (and its processor).

    Args:
        model: the loaded model (a peft wrapper is looked through).
        processor: its processor or image processor (None: the family's default normalisation).
        source: what the user gave, for messages.
        path: the folder the weights came from, if any.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(
            f"`student` of type {type(model).__name__}: pass a Hub id, a folder, a training run's output_dir, an "
            "open_clip checkpoint, or a loaded CLIPModel / SiglipModel."
        )
    base = model.get_base_model() if hasattr(model, "peft_config") and hasattr(model, "get_base_model") else model
    kind = tower_family_of(getattr(base.config, "model_type", None), f"The student {source!r}")
    tower, vision_config = _tower_of(base)
    mean, std, norm_source = _normalization(processor, kind, path or source)
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in tower.state_dict().items()}
    return StudentTower(state, vision_config, kind, mean, std, norm_source, source, path)


def _model_type(spec: str) -> str | None:
    """`model_type` of a transformers folder or Hub id (None when it has no config, e.g. an open_clip file)."""
    if os.path.isdir(spec):
        config = _read_json(os.path.join(spec, "config.json"))
        return None if config is None else config.get("model_type")
    if os.path.exists(spec):
        return None
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(spec).model_type
    except Exception:  # not a transformers repository (open_clip), or unreachable: load_clip says which
        return None


def load_student(spec, processor=None) -> StudentTower:
    """Load the student's vision tower.

    Args:
        spec: a training run's `output_dir` (its saved model, else its newest checkpoint), a `CLIPModel` /
            `SiglipModel` (or vision-only) folder or Hub id, an open_clip checkpoint that `mmt_ard.load_clip` reads,
            or a loaded model object.
        processor: the student's processor (object, Hub id or folder) when its own folder has none; without one, a
            folder with no processor files is taken to use its family's default normalisation (said in the log).
    """
    if not isinstance(spec, str):
        return student_from_model(spec, processor)
    from ..convert import is_open_clip_source
    from ..evaluation.robust_eval import resolve_model_path
    from ..models import load_clip

    run_dir = spec if os.path.isdir(spec) else None
    path = spec
    if os.path.isdir(spec) and not is_open_clip_source(spec):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the export logs which folder it read
            path = resolve_model_path(spec)
    provenance = {}
    if run_dir is not None:
        results = _read_json(os.path.join(run_dir, "results.json"))
        if isinstance(results, dict) and "robustness" in results:
            provenance = results
    model_type = _model_type(path)
    where = path if os.path.exists(path) else spec
    if model_type is None:  # an open_clip checkpoint (or nothing loadable: `load_clip` says which)
        model, proc = load_clip(path, processor, dtype=torch.float32)
    else:  # a transformers checkpoint of a family the export knows: the tower and the image processor suffice
        import transformers

        family = tower_family_of(model_type, f"`--student` {spec!r}")
        class_name = family.model_types.get(model_type) or family.vision_model_types[model_type]
        model = getattr(transformers, class_name).from_pretrained(path, dtype=torch.float32)
        proc = _load_image_processor(processor, path)
    student = student_from_model(model, proc, source=spec, path=where if os.path.exists(where) else None)
    student.provenance = provenance
    return student


def _load_image_processor(processor, path: str):
    if processor is not None and not isinstance(processor, str):
        return processor
    source = processor or path
    if processor is None and os.path.isdir(path) and not _has_processor_files(path):
        return None
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise OSError(
            f"Could not load an image processor from {source!r} ({err}): pass the student's processor with "
            "`--student-processor`."
        ) from err
