"""The training run of `mmt-ard-train`, callable from Python: load, evaluate, train, evaluate, save, push.

>>> from mmt_ard.pipeline import ScriptArguments, run_training
>>> from mmt_ard.training import MMTARDConfig
>>> config = MMTARDConfig(output_dir="runs/b32", preset="mmt-ard", max_steps=1000, ...)
>>> results = run_training(ScriptArguments(student="openai/clip-vit-base-patch32", ...), config)

`mmt-ard-train` (`mmt_ard.cli.train`) parses its flags into the same two objects, checks them
(`mmt_ard.cli.train_checks`), and calls `run_training`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .arguments import ScriptArguments, parse_eps

if TYPE_CHECKING:
    from ..training.config import MMTARDConfig
    from ..training.trainer import MMTARDTrainer

__all__ = ["configure_logging", "run_training"]

logger = logging.getLogger("mmt_ard.train")


def run_training(
    script_args: ScriptArguments,
    config: MMTARDConfig,
    explicit: set[str] | frozenset = frozenset(),
    on_start: Callable[[], None] | None = None,
) -> dict:
    """Load the models and data, evaluate them, train, evaluate, save, push; returns the results dictionary (also
    written to `output_dir/results.json`, and rendered as the model card `output_dir/README.md`).

    Args:
        script_args: models, data, evaluation, LoRA, the embedded default (no `student`: the embedded default).
        config: the training arguments (`output_dir`, `resume_from_checkpoint`, `push_to_hub`, ...).
        explicit: the options the user set (recorded in `results.json` as `explicit_arguments`).
        on_start: called once the trainer is built, before anything in `output_dir` is changed: from then on an
            error is a failure of the run, not of its arguments (`mmt-ard-train` passes its error path's `running`).

    An `output_dir` holding another run (without `overwrite_output_dir` or `resume_from_checkpoint`), or a checkpoint
    to resume that is not there, raise a `RunFolderError` (a `ValueError`) before anything is loaded or written."""
    # imported here, not at the top: `from mmt_ard.pipeline import ScriptArguments` stays quick
    from ..training.model_card import save_model_card
    from ..training.trainer import MMTARDTrainer
    from .inputs import load_run_inputs
    from .publish import push_to_hub, save_student
    from .report import (
        collect_results,
        collect_skipped_samples,
        pgd_rows,
        print_summary,
        rows_before_training,
        teacher_confidence_report,
        weights_checksum,
        write_checksum,
    )
    from .run_dir import RunSettingsCallback, check_output_dir, resume_value, run_settings, write_run_settings

    start = time.perf_counter()
    sa = script_args
    config.resume_from_checkpoint = resume_value(config.resume_from_checkpoint)
    check_output_dir(config.output_dir, config.resume_from_checkpoint, sa.overwrite_output_dir)
    _setup(sa, config)
    push, config.push_to_hub = config.push_to_hub, False  # the Trainer would create the repo at init: push at the end
    hub_model_id = config.hub_model_id or os.path.basename(os.path.normpath(config.output_dir))

    # models and data: the embedded default (no --student) or the ones the arguments name
    eps_list = [parse_eps(e) for e in sa.eval_eps] if sa.eval_eps else [config.eval_attack_eps]
    inputs = load_run_inputs(sa, config)
    rows = rows_before_training(inputs, sa, config, eps_list)

    # training
    trainer = MMTARDTrainer(
        model=inputs.student,
        args=config,
        teachers=inputs.teachers,
        class_names=inputs.class_names,
        processing_class=inputs.processor,
        train_dataset=inputs.train_dataset,
        eval_dataset=inputs.eval_dataset,
        data_collator=inputs.collator,
    )
    settings = run_settings(sa, config)
    trainer.add_callback(RunSettingsCallback(settings))
    if on_start is not None:
        on_start()  # the checks are done: from here on an error is a failure of the run (exit status 1)
    _prepare_output_dir(trainer, sa, config, settings)
    confidences = teacher_confidence_report(trainer, inputs.train_dataset, inputs.collator) if inputs.teachers else {}
    student_module = trainer.accelerator.unwrap_model(trainer.model).student
    initial_checksum = weights_checksum(student_module)
    train_result = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    if inputs.eval_dataset is not None:
        rows += pgd_rows(trainer, inputs.eval_dataset, eps_list, "student (after)")

    # saving: the student, its checksums, the skipped samples, results.json and the model card
    output_dir = config.output_dir
    saved_as = save_student(trainer, output_dir, lora=sa.lora_r > 0, merged=sa.save_merged)
    if sa.dump_checksums:
        write_checksum(output_dir, config, initial_checksum, weights_checksum(student_module))
    trainer.accelerator.wait_for_everyone()  # every process has read its last sample
    skipped = collect_skipped_samples(output_dir) if trainer.is_world_process_zero() else None
    num_skipped = skipped["count"] if skipped else inputs.collator.num_skipped
    pushed_as = hub_model_id if push else None
    metrics = train_result.metrics
    results = collect_results(
        sa, config, inputs, trainer, metrics, rows, confidences, saved_as, num_skipped, pushed_as
    )
    results["training"]["total_wall_clock_s"] = round(time.perf_counter() - start, 1)
    results["explicit_arguments"] = sorted(explicit)
    if trainer.is_world_process_zero():
        write_run_settings(output_dir, settings)
        save_model_card(results, output_dir)
        with open(os.path.join(output_dir, "results.json"), "w") as f:
            json.dump(results, f, indent=2, default=str)
        print_summary(results, output_dir)

    # pushing, once everything is saved
    if push and trainer.is_world_process_zero():
        url = push_to_hub(output_dir, hub_model_id, token=config.hub_token, private=config.hub_private_repo)
        logger.info("Pushed to %s", url)
        results["pushed_to"] = url
    return results


def _prepare_output_dir(trainer: MMTARDTrainer, sa: ScriptArguments, config: MMTARDConfig, settings: dict) -> None:
    """`--overwrite_output_dir`: delete the earlier run now that this one starts; `--resume_from_checkpoint`: warn
    about settings that differ from the checkpoint's."""
    from .run_dir import check_resume, clear_run, warn_settings_changes

    if trainer.is_world_process_zero():
        if sa.overwrite_output_dir:
            clear_run(config.output_dir)
        if config.resume_from_checkpoint:
            warn_settings_changes(check_resume(config.output_dir, config.resume_from_checkpoint), settings)
    trainer.accelerator.wait_for_everyone()


def _setup(sa: ScriptArguments, config: MMTARDConfig) -> None:
    """Logging, torch threads (1 for the embedded default's tiny matrices) and the seed."""
    import torch
    from transformers import set_seed

    configure_logging()
    logger.setLevel(config.get_process_log_level())
    threads = sa.num_threads or (1 if sa.student is None else None)
    if threads:
        torch.set_num_threads(threads)
    set_seed(config.seed)


def configure_logging() -> None:
    """Log lines as `HH:MM:SS LEVEL name: message` at INFO (a no-op if the root logger is already configured)."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
