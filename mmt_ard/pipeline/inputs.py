"""What `mmt-ard-train` trains on: the embedded default (no `--student`) or the user's models and data.

>>> inputs = load_run_inputs(script_args, config)   # student, teachers, datasets, class names, collator
>>> trainer = MMTARDTrainer(model=inputs.student, args=config, teachers=inputs.teachers, ...)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from ..data import (
    ImageClassificationCollator,
    check_labels_in_classes,
    is_webdataset_source,
    open_image_source,
    prepare_dataset,
    resolve_class_names,
)
from ..data.sources import hub_data_files
from ..data.stream import STREAM_FORMATS, ShardedStream
from ..training.config import MMTARDConfig
from ..training.lora import apply_lora
from ..training.teachers import Teacher
from .arguments import ScriptArguments

logger = logging.getLogger(__name__)

SKIP_LOG_PATTERN = "skipped_samples.rank{rank}.jsonl"  # per process, in output_dir; merged at the end


@dataclass
class RunInputs:
    """The models and data of a run.

    Args:
        student: the student `CLIPModel` (a peft model with LoRA).
        processor: the student's processor.
        teachers: the `Teacher`s the preset uses.
        train_dataset: the prepared training set (`prepare_dataset`).
        eval_dataset: the prepared evaluation set, or None (no evaluation).
        class_names: class names in label-id order.
        collator: the `ImageClassificationCollator` of both sets.
        descriptions: `base_model`, `teachers` (role -> (model, processor)), `train`, `eval`, dataset ids.
        teacher_models: label -> (CLIPModel, processor) of the teachers to evaluate.
        phases: the embedded default's phases (trained or read from its cache).
    """

    student: torch.nn.Module
    processor: object
    teachers: list
    train_dataset: object
    eval_dataset: object
    class_names: list[str]
    collator: ImageClassificationCollator
    descriptions: dict
    teacher_models: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)


def load_run_inputs(sa: ScriptArguments, config: MMTARDConfig) -> RunInputs:
    """The embedded default when no `--student` is given, else the models and data the arguments name."""
    return prepare_embedded(sa, config) if sa.student is None else prepare_from_args(sa, config)


def skip_log_path(config: MMTARDConfig) -> str | None:
    """This process's log of skipped samples (`bad_samples='skip'`), or None. A stale one is removed unless the run
    resumes, so the merged `skipped_samples.json` lists this run's samples."""
    if config.bad_samples != "skip":
        return None
    path = os.path.join(config.output_dir, SKIP_LOG_PATTERN.format(rank=config.process_index))
    if os.path.exists(path) and not config.resume_from_checkpoint:
        os.remove(path)
    return path


def _maybe_lora(student, sa: ScriptArguments, seed: int):
    if sa.lora_r <= 0:
        return student
    return apply_lora(student, sa.lora_r, sa.lora_alpha, sa.lora_dropout, sa.lora_target_modules, seed=seed)


def prepare_embedded(sa: ScriptArguments, config: MMTARDConfig) -> RunInputs:
    """Tiny CLIP teachers and student on scikit-learn's digits (`mmt_ard.embedded`), trained or read from the cache."""
    from ..embedded.recipe import (
        QUICK_MAX_EVAL_SAMPLES,
        QUICK_RECIPE,
        EmbeddedRecipe,
        build_embedded_models,
        digits_splits,
    )
    from ..embedded.tiny import DIGIT_NAMES

    overrides = dict(QUICK_RECIPE) if sa.quick else {}
    for key in ("clean", "robust", "student"):
        value = getattr(sa, f"embedded_{key}_steps")
        if value is not None:
            overrides[f"{key}_steps"] = value
    recipe = EmbeddedRecipe(seed=config.seed, **overrides)
    cache = None if sa.embedded_cache_dir.lower() == "none" else os.path.expanduser(sa.embedded_cache_dir)
    train_ds, test_ds = digits_splits(recipe.image_size, recipe.seed)
    built = build_embedded_models(
        recipe,
        cache,
        train_dataset=train_ds,
        use_cpu=config.use_cpu,
        disable_tqdm=config.disable_tqdm,
        logging_steps=max(1, min(config.logging_steps, 50)),
        log_level=config.log_level,
    )
    student, processor = built["student"]
    student = _maybe_lora(student, sa, config.seed)
    clean, robust = built["clean_teacher"], built["robust_teacher"]
    teachers = [
        Teacher(model=robust[0], role="robust", processor=robust[1]),
        Teacher(model=clean[0], role="clean", processor=clean[1]),
    ]
    max_eval = sa.max_eval_samples or (QUICK_MAX_EVAL_SAMPLES if sa.quick else None)
    train_ds = prepare_dataset(train_ds, "pixel_values", "labels", max_samples=sa.max_train_samples, seed=config.seed)
    test_ds = prepare_dataset(test_ds, "pixel_values", "labels", max_samples=max_eval, seed=config.seed)
    collator = ImageClassificationCollator(
        recipe.image_size,
        DIGIT_NAMES,
        image_column="pixel_values",
        label_column="labels",
        bad_samples=config.bad_samples,
        skip_log=skip_log_path(config),
    )
    descriptions = {
        "base_model": f"embedded tiny CLIP student ({recipe.describe('student')})",
        "teachers": {
            "robust": (f"embedded robust teacher ({recipe.describe('robust_teacher')})", "its own"),
            "clean": (f"embedded clean teacher ({recipe.describe('clean_teacher')})", "its own"),
        },
        "train": f"scikit-learn digits, train split ({recipe.image_size} px)",
        "eval": f"scikit-learn digits, test split ({recipe.image_size} px)",
        "cache": built["cache_path"] or "not cached",
    }
    return RunInputs(
        student=student,
        processor=processor,
        teachers=teachers,
        train_dataset=train_ds,
        eval_dataset=test_ds,
        class_names=list(DIGIT_NAMES),
        collator=collator,
        descriptions=descriptions,
        teacher_models={"robust teacher": robust, "clean teacher": clean},
        phases=built["phases"],
    )


def load_training_data(sa: ScriptArguments, config: MMTARDConfig):
    """`(train, evaluation or None, class names)`: both splits through `open_image_source`, prepared and subsampled."""
    if sa.dataset_name and os.path.isfile(sa.dataset_name):
        raise ValueError(
            f"`dataset_name`={sa.dataset_name!r} is a file: pass files with `--train_files` / `--eval_files`."
        )
    train_source = sa.train_files or sa.dataset_name
    if not train_source:
        raise ValueError(
            "No training data: give `--dataset_name` (Hub id or local directory) or `--train_files` (parquet/arrow); "
            "or leave out `--student` for the embedded default."
        )
    if sa.streaming and config.max_steps <= 0:
        raise ValueError("`--streaming` reads datasets without a length: set `--max_steps` (e.g. 5000).")
    kwargs = {"config_name": sa.dataset_config_name, "streaming": sa.streaming, "cache_dir": sa.dataset_cache_dir}
    names = {"class_names": sa.class_names, "class_names_file": sa.class_names_file}
    train = _open_source(sa, train_source, sa.train_split, **names, **kwargs)
    if train.class_names is None:
        resolve_class_names(train.dataset, sa.label_column)  # raises the error that says how to name the classes
    if config.bad_samples == "raise" and train.class_names_source not in ("ClassLabel", "folder names"):
        # a label outside the names would stop the run at its first batch, after the models are loaded: say it now
        described = {
            "class_names": f"--class_names={sa.class_names!r}",
            "class_names_file": f"--class_names_file={sa.class_names_file!r}",
        }.get(train.class_names_source, f"the {train.class_names_source} of {train.name!r}")
        check_labels_in_classes(train.dataset, train.label_column, train.class_names, described)
    if train.class_names_source not in ("class_names", "class_names_file", "ClassLabel", "folder names"):
        logger.info("Class names from the %s of %s: %s", train.class_names_source, train.name, train.class_names)
    eval_source = None if sa.eval_split.lower() == "none" else (sa.eval_files or sa.dataset_name)
    evaluation = _open_source(sa, eval_source, sa.eval_split, **kwargs).dataset if eval_source else None
    stream_files = (train.files, train.format) if train.format in STREAM_FORMATS and train.files else None
    if sa.streaming and train.format == "hub":
        stream_files = hub_data_files(train_source, sa.train_split, sa.dataset_config_name)
    if sa.streaming and stream_files is not None:
        # a seekable stream: resumes from the position a checkpoint saved, without replay (`data.stream`)
        prepared = ShardedStream(
            stream_files[0],
            stream_files[1],
            sa.image_column,
            sa.label_column,
            label_json_field=sa.label_json_field,
            seed=config.seed,
            max_samples=sa.max_train_samples,
            features=getattr(train.dataset, "features", None),
        )
    else:
        if sa.streaming:
            logger.warning(
                "%s is streamed through `datasets` (not parquet, arrow or webdataset files): a resumed run replays "
                "the batches already done.",
                train.name,
            )
        prepared = prepare_dataset(
            train.dataset, sa.image_column, sa.label_column, max_samples=sa.max_train_samples, seed=config.seed
        )
    if evaluation is not None:
        # a streamed evaluation set is not shuffled: its first `max_eval_samples` rows are used (a shuffle buffer
        # would read 10,000 images to yield the first one)
        evaluation = prepare_dataset(
            evaluation,
            sa.image_column,
            sa.label_column,
            max_samples=sa.max_eval_samples,
            seed=config.seed,
            shuffle=not sa.streaming,
        )
    return prepared, evaluation, train.class_names


def _open_source(sa: ScriptArguments, source, split: str, **kwargs):
    """`open_image_source` with the run's columns; webdataset shards have their columns named by file extension
    (`jpg`, `cls`, ...), found and renamed to `--image_column` / `--label_column` (map-style data)."""
    if not is_webdataset_source(source):
        columns = {"image_column": sa.image_column, "label_column": sa.label_column}
        return open_image_source(source, split, **columns, **kwargs)
    label = sa.label_column if sa.label_json_field else None
    opened = open_image_source(source, split, label_column=label, label_json_field=sa.label_json_field, **kwargs)
    renames = {opened.image_column: sa.image_column, opened.label_column: sa.label_column}
    renames = {k: v for k, v in renames.items() if k != v}
    if renames:
        opened.dataset = opened.dataset.rename_columns(renames)
        opened.image_column, opened.label_column = sa.image_column, sa.label_column
    return opened


def prepare_from_args(sa: ScriptArguments, config: MMTARDConfig) -> RunInputs:
    """The student, teachers and data the arguments name (Hub ids or local paths)."""
    from ..models import base_model, family_of, load_clip

    given = {"robust": sa.robust_teacher, "clean": sa.clean_teacher}
    missing = [role for role in config.preset_required_roles if not given.get(role)]
    if missing:
        flags = " and ".join(f"`--{role}_teacher`" for role in missing)
        raise ValueError(f"`--preset {config.preset}` needs {flags} (Hub ids or local paths).")
    train, evaluation, class_names = load_training_data(sa, config)
    student, processor = load_clip(sa.student, sa.student_processor)
    student = _maybe_lora(student, sa, config.seed)
    teachers, teacher_models, described = [], {}, {}
    for role in ("robust", "clean"):
        name_or_path = given[role]
        if not name_or_path:
            continue
        if role not in config.preset_roles:
            # one config file can serve several presets: a teacher the preset has no role for is left out
            logger.warning("`--preset %s` uses no %s teacher: ignoring `--%s_teacher`.", config.preset, role, role)
            continue
        processor_id = getattr(sa, f"{role}_teacher_processor")
        model, teacher_processor = load_clip(name_or_path, processor_id)
        teachers.append(Teacher(model=model, role=role, processor=teacher_processor))
        teacher_models[f"{role} teacher"] = (model, teacher_processor)
        described[role] = (name_or_path, processor_id or name_or_path)
    family, _ = family_of(student, processor)
    image_size = family.pixel_layout(base_model(student), processor).size  # the data is decoded at the student's size
    collator = ImageClassificationCollator(
        image_size,
        class_names,
        sa.image_column,
        sa.label_column,
        bad_samples=config.bad_samples,
        skip_log=skip_log_path(config),
    )
    train_name = sa.dataset_name or ", ".join(sa.train_files or [])
    descriptions = {
        "base_model": sa.student,
        "teachers": described,
        "train": f"{train_name} [{sa.train_split}]",
        "eval": f"{sa.dataset_name or ', '.join(sa.eval_files or [])} [{sa.eval_split}]"
        if evaluation is not None
        else "-",
        "train_id": sa.dataset_name,
        "eval_id": sa.dataset_name,
    }
    return RunInputs(
        student=student,
        processor=processor,
        teachers=teachers,
        train_dataset=train,
        eval_dataset=evaluation,
        class_names=class_names,
        collator=collator,
        descriptions=descriptions,
        teacher_models=teacher_models if sa.eval_teachers else {},
    )
