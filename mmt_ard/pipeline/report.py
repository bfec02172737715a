"""What `mmt-ard-train` measures and reports: the robustness table, the teachers' confidence, `results.json`, the
printed summary, per-rank weight checksums and the list of skipped samples.

Every row of the table is measured the same way: `trainer.evaluate` (eval mode, fp32, input gradients) with PGD-CE
at each budget; models outside the training trainer (the teachers, the student before training) go through a
no-teacher `tecoa` trainer with the same evaluation settings (`evaluate_model`).
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import logging
import os
import platform
import re

import torch

from ..data import read_skip_logs
from ..training.config import MMTARDConfig
from ..training.model_card import MMTARD_SETTING_KEYS, family_summary, format_eps, robustness_table
from ..training.precision import describe as describe_precision
from ..training.trainer import MMTARDTrainer
from .arguments import ScriptArguments
from .inputs import SKIP_LOG_PATTERN, RunInputs

logger = logging.getLogger(__name__)

SKIPPED_SAMPLES_FILE = "skipped_samples.json"


# ---- the robustness table ----


def pgd_rows(trainer: MMTARDTrainer, eval_dataset, eps_list: list[float], label: str) -> list[dict]:
    """Clean and PGD-CE accuracy at each budget through `trainer.evaluate` (eval mode, fp32, input gradients); the
    step size scales with eps (`eval_attack_step_size / eval_attack_eps`)."""
    args = trainer.args
    saved = (args.eval_attack_eps, args.eval_attack_step_size)
    ratio = args.eval_attack_step_size / args.eval_attack_eps if args.eval_attack_eps else 0.25
    rows = []
    try:
        for eps in eps_list:
            args.eval_attack_eps, args.eval_attack_step_size = eps, ratio * eps
            metrics = trainer.evaluate(eval_dataset=eval_dataset)
            n = int(metrics.get("eval_num_samples", 0))
            rows.append(
                {
                    "model": label,
                    "attack": f"PGD-{args.eval_attack_steps} (CE)" if eps > 0 and args.eval_attack_steps else "none",
                    "eps": eps,
                    "clean_accuracy": float(metrics["eval_clean_accuracy"]),
                    "robust_accuracy": float(metrics["eval_adv_accuracy"]),
                    "num_clean": n,
                    "num_robust": n,
                }
            )
    finally:
        args.eval_attack_eps, args.eval_attack_step_size = saved
    return rows


def evaluate_model(model, processor, label: str, inputs: RunInputs, config: MMTARDConfig, eps_list) -> list[dict]:
    """`pgd_rows` of a model outside the training trainer (a teacher, or the student before training), through a
    no-teacher `tecoa` trainer of the same evaluation settings."""
    eval_args = MMTARDConfig(
        output_dir=config.output_dir,
        preset="tecoa",
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        use_cpu=config.use_cpu,
        report_to="none",
        disable_tqdm=config.disable_tqdm,
        seed=config.seed,
        attack_norm=config.attack_norm,
        eval_attack_eps=config.eval_attack_eps,
        eval_attack_steps=config.eval_attack_steps,
        eval_attack_step_size=config.eval_attack_step_size,
        logit_scale=config.logit_scale,
        use_model_logit_scale=config.use_model_logit_scale,
        prompt_templates=config.prompt_templates,
        dataloader_num_workers=config.dataloader_num_workers,
        dataloader_pin_memory=config.dataloader_pin_memory and torch.cuda.is_available(),
        log_level=config.log_level,
    )
    trainer = MMTARDTrainer(
        model=model,
        args=eval_args,
        processing_class=processor,
        class_names=inputs.class_names,
        data_collator=inputs.collator,
    )
    return pgd_rows(trainer, inputs.eval_dataset, eps_list, label)


def rows_before_training(inputs: RunInputs, sa: ScriptArguments, config: MMTARDConfig, eps_list) -> list[dict]:
    """The teachers' rows (always in the embedded default, else with `--eval_teachers`) and the student's "before"."""
    if inputs.eval_dataset is None:
        return []
    rows = []
    if sa.student is None or sa.eval_teachers:
        for label, (model, processor) in inputs.teacher_models.items():
            rows += evaluate_model(model, processor, label, inputs, config, eps_list)
    if sa.eval_before_training:
        # a separate no-teacher trainer with the evaluation settings, so the table's rows are all measured alike
        # (MMTARDTrainer.train also copes with an earlier `evaluate()` under DDP: it re-wraps the student)
        rows += evaluate_model(inputs.student, inputs.processor, "student (before)", inputs, config, eps_list)
    return rows


# ---- the teachers' confidence ----


@torch.no_grad()
def teacher_confidence_report(trainer: MMTARDTrainer, train_dataset, collator, max_samples: int = 512) -> dict:
    """Each teacher's confidence (cosine of its image embedding to the true class's text embedding) on clean
    training images: the `confidence` weighting multiplies its KL term by it, so negative values push the student
    *away* from that teacher."""
    from tqdm.auto import tqdm

    rows = itertools.islice(iter(train_dataset), max_samples)
    bar = tqdm(rows, desc="teacher confidence: reading images", disable=trainer.args.disable_tqdm, leave=False)
    examples = list(bar)
    if not examples:
        return {}
    batch = collator(examples)
    report = {}
    for spec, module in zip(trainer.teacher_specs, trainer.teacher_modules):
        device = next(module.parameters()).device
        x, y = batch["pixel_values"].to(device), batch["labels"].to(device)
        conf = torch.cat(
            [module.confidence(module(xb).image_embeds, yb) for xb, yb in zip(x.split(128), y.split(128))]
        )
        report[spec.name] = {
            "mean": round(float(conf.mean()), 4),
            "min": round(float(conf.min()), 4),
            "fraction_negative": round(float((conf < 0).float().mean()), 4),
            "num_samples": int(conf.numel()),
        }
        if trainer.weighting.needs_confidence and report[spec.name]["fraction_negative"] > 0.05:
            logger.warning(
                "Teacher `%s` has a negative confidence on %.0f%% of %d training images (mean %.3f): the `%s` "
                "weighting pushes the student away from it on those. Consider `--weighting sigmoid` or `fixed`, or a "
                "better teacher.",
                spec.name,
                100 * report[spec.name]["fraction_negative"],
                conf.numel(),
                conf.mean(),
                trainer.args.weighting,
            )
    return report


# ---- the machine and the weights ----


def hardware_description() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"CPU: {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"


def weights_checksum(module: torch.nn.Module) -> str:
    """SHA-256 of every parameter, in name order (identical replicas give identical hashes)."""
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_checksum(output_dir: str, config: MMTARDConfig, initial: str, final: str) -> None:
    """`checksum_rank<r>.json`: the student's weights hash on this process, before and after training."""
    rank = config.process_index
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, f"checksum_rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world_size": config.world_size, "initial": initial, "final": final}, f)


# ---- skipped samples ----


def collect_skipped_samples(output_dir: str) -> dict | None:
    """Merge every process's log of skipped samples (`bad_samples='skip'`) into `output_dir/skipped_samples.json`
    (`{"count", "samples": [{"sample", "reason"}]}`, each sample once) and remove the logs; None without logs.

    Call it on the main process once every process has finished reading data."""
    logs = sorted(glob.glob(os.path.join(output_dir, SKIP_LOG_PATTERN.format(rank="*"))))
    if not logs:
        return None
    merged = read_skip_logs(logs)
    summary = {"count": len(merged), "samples": [{"sample": k, "reason": v} for k, v in merged.items()]}
    with open(os.path.join(output_dir, SKIPPED_SAMPLES_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    for path in logs:
        os.remove(path)
    return summary


# ---- results ----


def collect_results(
    sa: ScriptArguments,
    config: MMTARDConfig,
    inputs: RunInputs,
    trainer: MMTARDTrainer,
    train_metrics: dict,
    rows: list[dict],
    confidences: dict,
    saved_as: str,
    num_skipped: int,
    hub_model_id: str | None,
) -> dict:
    """The `results.json` of a run, which the model card (`mmt_ard.training.model_card`) renders."""
    embedded = sa.student is None
    world = config.world_size
    teachers = inputs.descriptions["teachers"]
    step_ratio = config.eval_attack_step_size / config.eval_attack_eps if config.eval_attack_eps else 0
    num_images = rows[0]["num_clean"] if rows else 0
    same_images = (
        f"clean and robust accuracy are computed on the same {num_images} evaluation images; PGD is an upper bound "
        "on robust accuracy (APGD/AutoAttack is stronger)."
    )
    notes = [same_images]
    if confidences:
        notes.append(
            "teacher confidence on clean training images (mean / fraction negative): "
            + "; ".join(f"{k} {v['mean']:.3f} / {v['fraction_negative']:.2f}" for k, v in confidences.items())
        )
    return {
        "model_name": os.path.basename(os.path.normpath(config.output_dir)),
        "base_model": inputs.descriptions["base_model"],
        "base_model_id": None if embedded else sa.student,
        "model_family": family_summary(trainer.accelerator.unwrap_model(trainer.model).student),
        "hub_model_id": hub_model_id,
        "preset": config.preset,
        "tags": ["embedded-default"] if embedded else [],
        "teachers": [
            {
                "name": spec.name,
                "role": spec.role,
                "model": teachers.get(spec.role, ("-", "-"))[0],
                "processor": teachers.get(spec.role, ("-", "-"))[1],
                "input": spec.input,
                "match": spec.match,
                "coef": spec.coef,
                "confidence": confidences.get(spec.name),
            }
            for spec in trainer.teacher_specs
        ],
        "settings": {key: getattr(config, key) for key in MMTARD_SETTING_KEYS if hasattr(config, key)},
        "lora": (
            {
                "r": sa.lora_r,
                "alpha": sa.lora_alpha,
                "dropout": sa.lora_dropout,
                "target_modules": sa.lora_target_modules,
                "saved": saved_as,
            }
            if sa.lora_r > 0
            else None
        ),
        "dataset": {
            "train": inputs.descriptions["train"],
            "eval": inputs.descriptions["eval"],
            "train_id": inputs.descriptions.get("train_id"),
            "eval_id": inputs.descriptions.get("eval_id"),
            "num_train": _num_rows(inputs.train_dataset),
            "num_eval": _num_rows(inputs.eval_dataset) if inputs.eval_dataset is not None else 0,
            "num_classes": len(inputs.class_names),
            "class_names": inputs.class_names,
            "skipped": num_skipped,
        },
        "training": {
            "steps": trainer.state.global_step,
            "batch_size": config.per_device_train_batch_size * world * config.gradient_accumulation_steps,
            "images_per_second": train_metrics.get("train_samples_per_second"),
            "wall_clock_s": train_metrics.get("train_runtime"),
            "hardware": hardware_description(),
            "num_processes": world,
            "distributed_setup": trainer.distributed_setup(),  # what really ran, e.g. "FSDP2, 2 processes"
            "precision": describe_precision(config),
            "phases": {
                f"embedded {phase.replace('_', ' ')}": f"{info['description']}; "
                + ("reused from the cache" if info.get("cached") else f"trained in {info['train_runtime_s']:.1f} s")
                for phase, info in inputs.phases.items()
            },
        },
        "robustness": {
            "protocol": (
                f"zero-shot classification, L-inf PGD-CE, {config.eval_attack_steps} steps, step size "
                f"{step_ratio:.3g} x eps, uniform random start, eval mode, fp32, prompt {config.prompt_templates!r}"
            ),
            "rows": rows,
            "notes": notes,
        },
    }


def _num_rows(dataset) -> int | str:
    try:
        return len(dataset)
    except TypeError:
        return "streamed"


def print_summary(results: dict, output_dir: str) -> None:
    """The table, the student's before -> after at each budget, speed and where everything was saved."""
    rows = results["robustness"]["rows"]
    print()
    print(f"MMT-ARD ({results['preset']}): {results['base_model']}")
    print(f"Protocol: {results['robustness']['protocol']}")
    print(robustness_table(results["robustness"]))
    before = [r for r in rows if r["model"] == "student (before)"]
    after = [r for r in rows if r["model"] == "student (after)"]
    for b, a in zip(before, after):
        print(
            f"student at eps {format_eps(a['eps'])}: robust {100 * b['robust_accuracy']:.1f}% -> "
            f"{100 * a['robust_accuracy']:.1f}%, clean {100 * b['clean_accuracy']:.1f}% -> {100 * a['clean_accuracy']:.1f}%"
        )
    training = results["training"]
    print(
        f"{training['steps']} steps, {training.get('images_per_second') or 0:.1f} images/s, training "
        f"{training.get('wall_clock_s') or 0:.1f} s, whole run {training['total_wall_clock_s']:.1f} s on "
        f"{training['hardware']} ({training.get('distributed_setup', 'single process')})"
    )
    print(f"Saved the student, its processor and README.md (model card) in {os.path.abspath(output_dir)}")
    checkpoints = sorted(
        (d for d in os.listdir(output_dir) if re.fullmatch(r"checkpoint-\d+", d)), key=lambda d: int(d.split("-")[1])
    )
    if checkpoints:
        print(f"Step checkpoints (resume points; `--save_strategy no` writes none): {', '.join(checkpoints)}")
