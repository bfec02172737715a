"""`export_to_lvlm`: put a robust student's vision tower into a Hugging Face LVLM checkpoint.

>>> report = export_to_lvlm("runs/mmt-ard-vitl14", "llava-hf/llava-1.5-7b-hf", "llava-1.5-7b-mmt-ard")

Only the tower's tensors are rewritten, in copies of the shards that hold them; every other file (the other shards,
config, processor, tokenizer, chat template, generation config) is copied byte for byte, so a 7B LVLM is never loaded.
Every check runs before anything is written, and the output appears only once complete (`writing.atomic_directory`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..models.families import ModelFamily
from .families import LVLMFamily, lvlm_family, tower_family_of
from .model_card import read_front_matter, render_lvlm_card
from .position import grid_shape
from .safetensors_io import overwrite_tensors, read_tensor, tensor_layout
from .students import StudentTower, load_student
from .tower import (
    POSITION,
    ExportError,
    check_architecture,
    close,
    config_value,
    describe_tower,
    find_tower_prefix,
    fold_normalization,
    plan_tower,
)
from .writing import atomic_directory, check_output_dir, copy_tree


@dataclass
class ExportReport:
    """What `export_to_lvlm` did.

    Args:
        output_dir: the exported folder.
        architecture: the LVLM class.
        tower: `clip` or `siglip`.
        image_size: the LVLM's input size (unchanged).
        grid: the LVLM's patch grid side (unchanged; `[rows, columns]` for a rectangular grid).
        resized_from: the student's grid side (`[rows, columns]` if rectangular) when the position grid was resized,
            else None.
        normalization: `same`, or `adjusted` when the patch embedding was rewritten for the LVLM's mean/std.
        dtype: the checkpoint dtype the tower's tensors were written in.
        tower_tensors: number of tensors rewritten.
        rewritten_files: shards whose tower tensors were rewritten (other bytes unchanged).
        copied_files: every file copied from the LVLM.
        notes: the log lines.
        hub_url: where it was pushed, if it was.
    """

    output_dir: str
    architecture: str
    tower: str
    image_size: int | None
    grid: int | list[int] | None
    resized_from: int | list[int] | None
    normalization: str
    dtype: str
    tower_tensors: int
    rewritten_files: list[str]
    copied_files: list[str]
    notes: list[str] = field(default_factory=list)
    hub_url: str | None = None


def resolve_lvlm(into: str) -> str:
    """A local folder for `--into`: the folder itself, or a Hub snapshot (downloaded once into the HF cache)."""
    if os.path.isdir(into):
        return into
    if os.path.exists(into):
        raise ValueError(f"`--into` {into!r} is a file: give an LVLM folder (config.json + safetensors) or a Hub id.")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(into)
    except Exception as err:  # offline, unknown repository, no permission: all end the same way
        raise OSError(
            f"`--into` {into!r} is not a local folder and could not be downloaded from the Hub ({type(err).__name__}: "
            f"{err}). Give a local LVLM folder, or a Hub id reachable from this machine."
        ) from err


def _read_config(folder: str, where: str) -> dict:
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as err:
        raise FileNotFoundError(f"`--into` {where!r} has no config.json: is it a transformers LVLM folder?") from err


def lvlm_normalization(folder: str, kind: ModelFamily) -> tuple[tuple, tuple, str]:
    """Image mean/std of the LVLM's image processor (its family's default when it has none)."""
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(folder)
    except (OSError, ValueError, KeyError):
        return (
            kind.image_mean,
            kind.image_std,
            f"the {kind.title} default (the LVLM has no image processor)",
        )
    mean, std = getattr(processor, "image_mean", None), getattr(processor, "image_std", None)
    if mean is None or std is None:
        return kind.image_mean, kind.image_std, f"the {kind.title} default (its processor gives none)"
    return tuple(float(m) for m in mean), tuple(float(s) for s in std), "the LVLM's image processor"


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def export_to_lvlm(
    student,
    into: str,
    output_dir: str,
    *,
    student_processor=None,
    adjust_normalization: bool = False,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    hub_token: str | None = None,
    hub_private: bool | None = None,
    log: Callable[[str], None] | None = print,
    on_checked: Callable[[], None] | None = None,
) -> ExportReport:
    """Write a copy of an LVLM whose vision tower is the student's.

    Args:
        student: a training run's `output_dir`, a `CLIPModel` / `SiglipModel` folder or Hub id, an open_clip
            checkpoint `mmt_ard.load_clip` reads (FARE/TeCoA releases), or a loaded model.
        into: Hub id or folder of a supported LVLM (`mmt_ard.export.LVLM_FAMILIES`).
        output_dir: the new folder (must not exist or be empty, unless `overwrite`).
        student_processor: the student's processor (object, id or folder) when its folder has none.
        adjust_normalization: when the student's image mean/std differ from the LVLM processor's, rewrite the
            patch embedding so that the tower computes the student's function on the LVLM's normalised pixels
            (exact; `tower.fold_normalization`). Without it such a student is refused.
        overwrite: replace an existing `output_dir` (only once the new export is complete).
        push_to_hub: a Hub repository id to upload the exported folder to (with its model card).
        hub_token: Hub token for the upload (default: the logged-in one).
        hub_private: create the repository private.
        log: where the log lines go (`None`: silent); they are also in the report's `notes`.
        on_checked: called once every check has passed, before anything is written (the command uses it to tell
            refusals, exit status 2, from failures while writing, exit status 1).

    Returns:
        an `ExportReport`.

    Raises:
        ExportError (a ValueError): the student does not fit (other width, depth, patch size, head count, ...,
            another tower kind, another normalisation without `adjust_normalization`); nothing is written.
        ValueError: an unsupported LVLM class (the message lists the supported ones), overlapping paths.
        FileExistsError: `output_dir` exists and is not empty, without `overwrite`.
    """
    notes: list[str] = []

    def say(line: str) -> None:
        notes.append(line)
        if log is not None:
            log(f"[mmt-ard-export] {line}")

    # ---- everything that can refuse, before anything is written ----
    if not isinstance(into, str):
        raise TypeError(f"`into` must be a Hub id or a folder (a str), got {type(into).__name__}.")
    lvlm_dir = resolve_lvlm(into)
    config = _read_config(lvlm_dir, into)
    family: LVLMFamily = lvlm_family(config, into)
    vision_config = config.get("vision_config") or {}
    kind = tower_family_of(vision_config.get("model_type"), f"The vision tower of {into!r}")
    if kind.name not in family.towers:
        raise ExportError(f"{family.architecture} with a {kind.name} tower is not supported (known: {family.towers}).")
    sources = [lvlm_dir] + ([student] if isinstance(student, str) and os.path.exists(student) else [])
    check_output_dir(output_dir, overwrite, sources)

    st: StudentTower = load_student(student, student_processor)
    layout = tensor_layout(lvlm_dir)
    prefix = find_tower_prefix(layout, into, family.tower_keys)
    lvlm_positions = layout[prefix + POSITION].shape[0] if prefix + POSITION in layout else None
    student_positions = st.state_dict[POSITION].shape[0] if POSITION in st.state_dict else None
    student_desc = f"{st.kind.title} " + describe_tower(st.vision_config, student_positions, st.kind.class_token)
    lvlm_desc = f"{kind.title} " + describe_tower(vision_config, lvlm_positions, kind.class_token)
    if st.kind.name != kind.name:
        raise ExportError(
            f"The student is a {st.kind.title} tower ({student_desc}) but {family.architecture} {into!r} holds a "
            f"{kind.title} tower ({lvlm_desc}): give a {kind.title} student. Nothing was written."
        )
    check_architecture(st.vision_config, vision_config, student_desc, lvlm_desc)

    lvlm_mean, lvlm_std, lvlm_norm_source = lvlm_normalization(lvlm_dir, kind)
    state = st.state_dict
    normalization = "same"
    if not (close(st.image_mean, lvlm_mean) and close(st.image_std, lvlm_std)):
        if not adjust_normalization:
            raise ExportError(
                f"The student normalises images with mean {_fmt(st.image_mean)} / std {_fmt(st.image_std)} (from "
                f"{st.normalization_source}) but the LVLM's processor uses mean {_fmt(lvlm_mean)} / std "
                f"{_fmt(lvlm_std)} ({lvlm_norm_source}): the tower would see other inputs than it was trained on. "
                "Pass --adjust-normalization (Python: adjust_normalization=True) to fold the difference into the "
                "patch embedding exactly, or give the student's processor with --student-processor if it is wrong. "
                "Nothing was written."
            )
        state = fold_normalization(state, kind, st.image_mean, st.image_std, lvlm_mean, lvlm_std)
        normalization = "adjusted"
    plan = plan_tower(state, layout, prefix, kind, student_desc, lvlm_desc, st.vision_config, vision_config)

    # ---- the log lines and the model card say what happens to the tower ----
    image_size = config_value(vision_config, "image_size")
    lvlm_grid = None if lvlm_positions is None else grid_shape(vision_config, lvlm_positions, kind.class_token, "grid")
    grid = None if lvlm_grid is None else (lvlm_grid[0] if lvlm_grid[0] == lvlm_grid[1] else list(lvlm_grid))
    say(f"student {st.source!r}" + (f" (weights from {st.path!r})" if st.path and st.path != st.source else ""))
    say(f"LVLM {into!r}: {family.architecture}, {lvlm_desc}; tower tensors under `{prefix}`")
    if plan.resized:
        src, dst = plan.resized
        stretch = max(dst[0] / src[0], dst[1] / src[1])
        per_side = (
            f"{stretch:.2f}x per side"
            if dst[0] / src[0] == dst[1] / src[1]
            else f"{dst[0] / src[0]:.2f}x in height, {dst[1] / src[1]:.2f}x in width"
        )
        say(
            f"resized the student's position embeddings from a {src[0]}x{src[1]} to a {dst[0]}x{dst[1]} grid (bicubic"
            + (", class position kept" if kind.class_token else "")
            + f"), stretched {per_side}; the LVLM's image size ({image_size} px) and its {dst[0] * dst[1]} "
            "patch positions per crop are unchanged"
        )
        if stretch >= 2:
            say(
                f"the student's positions are stretched {stretch:.2f}x: it was trained at "
                f"{config_value(st.vision_config, 'image_size')} px and runs at {image_size} px here, where its "
                "robustness is not guaranteed; measure it with mmt-ard-eval-lvlm, or train the student at the "
                "LVLM's resolution"
            )
    if "default" in st.normalization_source or "default" in lvlm_norm_source:
        say(f"image normalisation: the student's from {st.normalization_source}, the LVLM's from {lvlm_norm_source}")
    if normalization == "adjusted":
        say(
            f"adjusted the patch embedding for the LVLM's normalisation (mean {_fmt(lvlm_mean)}, std {_fmt(lvlm_std)}; "
            f"the student was trained with mean {_fmt(st.image_mean)}, std {_fmt(st.image_std)}): exact"
        )
    if plan.dropped:
        say(f"student tensors the LVLM's tower has no place for, not exported: {', '.join(plan.dropped)}")
    dtypes = sorted({info.dtype for info in plan.infos.values()})
    say(f"{len(plan.tensors)} tower tensors written in the checkpoint's dtype ({', '.join(dtypes)})")

    changes = notes[2:]  # what was done to the tower (the first two lines name the student and the LVLM)
    card = render_lvlm_card(
        {
            "name": os.path.basename(os.path.abspath(output_dir)),
            "lvlm": into,
            "architecture": family.architecture,
            "prompt": family.prompt,
            "tower": kind.name,
            "student": st.source,
            "student_path": st.path,
            "license": read_front_matter(os.path.join(lvlm_dir, "README.md")),
            "changes": changes,
            "hub_model_id": push_to_hub,
            "provenance": st.provenance,
            "mmt_ard_version": _version(),
        }
    )

    # ---- writing: copy everything, rewrite the tower's byte ranges, write the card, rename into place ----
    if on_checked is not None:
        on_checked()
    by_file: dict[str, dict] = {}
    for key, tensor in plan.tensors.items():
        by_file.setdefault(plan.infos[key].file, {})[plan.infos[key]] = tensor
    with atomic_directory(output_dir, overwrite) as staging:
        copied = copy_tree(lvlm_dir, staging, skip={"README.md"})
        for name, tensors in by_file.items():
            overwrite_tensors(os.path.join(staging, name), tensors)
        for key, tensor in plan.tensors.items():  # read back what was written
            if not read_tensor(staging, plan.infos[key]).equal(tensor.to(plan.infos[key].torch_dtype)):
                raise RuntimeError(f"verification failed: {key} does not read back as written")
        with open(os.path.join(staging, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
    say(f"wrote {os.path.abspath(output_dir)} ({len(by_file)} shard(s) rewritten, {len(copied)} files copied)")
    report = ExportReport(
        output_dir=os.path.abspath(output_dir),
        architecture=family.architecture,
        tower=kind.name,
        image_size=image_size,
        grid=grid,
        resized_from=(plan.resized[0][0] if plan.resized[0][0] == plan.resized[0][1] else list(plan.resized[0]))
        if plan.resized
        else None,
        normalization=normalization,
        dtype=",".join(dtypes),
        tower_tensors=len(plan.tensors),
        rewritten_files=sorted(by_file),
        copied_files=copied,
        notes=notes,
    )
    if push_to_hub:
        from .hub import push_folder

        report.hub_url = push_folder(report.output_dir, push_to_hub, token=hub_token, private=hub_private)
        say(f"pushed to {report.hub_url}")
    return report


def _version() -> str:
    from .._version import __version__

    return __version__
