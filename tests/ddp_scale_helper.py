"""DDP runs for `test_training_scale.py`: launched on 2 CPU processes, or in-process as the one-process reference.

    accelerate launch --multi_gpu --num_processes 2 tests/ddp_scale_helper.py OUT

runs, one after the other in the same processes, and writes per process `OUT/<case>-rank<R>.json`:

* `metrics`: `mmt-ard` (confidence weighting, two teachers; the student and the robust teacher start from the tiny
  CLIP trained on the digits), global batch 8, 3 steps, a log every step, and a
  `RobustEvalCallback` (24 images, PGD-2) at step 3. Written: the log history; what the main process alone would
  have logged (its own means, taken just before each `log`); the callback's metrics, the images this process
  attacked, and the same evaluation of this process's student run unsharded on this process alone; then
  `evaluate_robustness(all_processes=False)` called by the main process only;
* `auto_batch`: `auto_find_batch_size` from a per-process batch of 8, where only process 1 runs out of memory above
  4 images (simulated in the student's forward): `tried` and the batch both processes end with. The preset is
  `mmt-ard-sigmoid`, whose weighting gathers the global batch (a collective inside the step).

Both runs use PGD without a random start (each process draws random starts from its own RNG, on purpose) and freeze
the attention key biases (as `fsdp_helper.py` does; their exact gradient is zero).
"""

from __future__ import annotations

import copy
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _eval_tiny import TEMPLATES, trained_tiny_clip

from mmt_ard import MMTARDConfig, MMTARDTrainer, Teacher
from mmt_ard.embedded.tiny import build_tiny_clip, digits_dataset
from mmt_ard.evaluation import (
    EvalGroup,
    RobustEvalCallback,
    ensure_fp32,
    evaluate_on_data,
    evaluate_robustness,
    sample_loop,
)
from mmt_ard.runtime.distributed import shutdown_process_group
from mmt_ard.training.step_metrics import means

GLOBAL_BATCH = 8
MAX_STEPS = 3
OOM_TEXT = "CUDA out of memory. Tried to allocate 2.00 GiB (simulated)"


def build_trainer(output_dir: str, num_processes: int = 1, trained: bool = False, **overrides) -> MMTARDTrainer:
    """The run for a global batch of 8 split over `num_processes`; `trained`: the student and the robust teacher
    start from the tiny CLIP trained on the digits (`_eval_tiny`), so that accuracies are neither 0 nor 1."""
    if trained:
        clip, processor = trained_tiny_clip()
        student, robust, robust_proc = copy.deepcopy(clip).requires_grad_(True), copy.deepcopy(clip), processor
        overrides.setdefault("prompt_templates", TEMPLATES)
    else:
        student, processor = build_tiny_clip(hidden=32, image_size=16, seed=0)
        robust, robust_proc = build_tiny_clip(hidden=48, image_size=16, seed=1)
    for name, param in student.named_parameters():
        if name.endswith("k_proj.bias"):
            param.requires_grad_(False)
    clean, clean_proc = build_tiny_clip(hidden=48, image_size=16, seed=2)
    kwargs = {
        "output_dir": output_dir,
        "preset": "mmt-ard",
        "attack_steps": 2,
        "attack_eps": 8 / 255,
        "attack_step_size": 4 / 255,
        "attack_random_init": False,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "max_steps": MAX_STEPS,
        "per_device_train_batch_size": GLOBAL_BATCH // num_processes,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": not torch.cuda.is_available(),
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 3,
    }
    kwargs.update(overrides)
    return MMTARDTrainer(
        model=student,
        args=MMTARDConfig(**kwargs),
        teachers=[
            Teacher(robust, role="robust", processor=robust_proc),
            Teacher(clean, role="clean", processor=clean_proc),
        ],
        processing_class=processor,
        train_dataset=digits_dataset(16).select(range(48)),
    )


def eval_callback(trainer: MMTARDTrainer) -> RobustEvalCallback:
    return RobustEvalCallback(
        digits_dataset(16, "test"), trainer=trainer, num_samples=24, eps=(8 / 255,), pgd_steps=2, batch_size=5,
        eval_steps=MAX_STEPS,
    )  # fmt: skip


def run_metrics(out: str, num_processes: int) -> dict:
    trainer = build_trainer(os.path.join(out, "metrics"), num_processes, trained=True)
    callback = eval_callback(trainer)
    trainer.add_callback(callback)
    local, real_log = [], trainer.log

    def log(logs, *args, **kwargs):  # what this process would log alone (the main process's, before)
        local.append(means(trainer._metrics["eval" if any(k.startswith("eval_") for k in logs) else "train"]))
        return real_log(logs, *args, **kwargs)

    trainer.log = log
    attacked, real_batch = [], sample_loop.evaluate_batch
    sample_loop.evaluate_batch = lambda *a, **k: attacked.extend(a[2]) or real_batch(*a, **k)
    try:
        trainer.train()
    finally:
        sample_loop.evaluate_batch = real_batch
    student = trainer.accelerator.unwrap_model(trainer.model).student
    alone = evaluate_on_data(
        ensure_fp32(student), callback._data, callback.protocol, progress=False, group=EvalGroup()
    )
    main_only = None
    if trainer.accelerator.is_main_process:  # the main process alone, the others waiting: no exchange may happen
        report = evaluate_robustness(
            ensure_fp32(student), {callback._data.name: callback._data}, protocol=callback.protocol,
            all_processes=False, output_dir=os.path.join(out, "main-only"), progress=False, verbose=False,
        )  # fmt: skip
        main_only = {"num_processes": report["num_processes"], **report["results"][0]["robust_accuracy"]["8/255"]}
    trainer.accelerator.wait_for_everyone()
    return {
        "main_only": main_only,
        "num_processes": trainer.accelerator.num_processes,
        "log_history": trainer.state.log_history,
        "local_means": local,
        "callback": callback.history,
        "attacked_positions": attacked,
        "alone": {"clean": alone["clean_accuracy"], "robust": alone["robust_accuracy"]["8/255"]["worst_case"]},
    }


def run_auto_batch(out: str, num_processes: int) -> dict:
    trainer = build_trainer(
        os.path.join(out, "auto"), num_processes, auto_find_batch_size=True, max_steps=2,
        per_device_train_batch_size=8, preset="mmt-ard-sigmoid",
    )  # fmt: skip
    rank = trainer.args.process_index

    def hook(module, args, kwargs):  # the student's training forward sees clean + adversarial images: 2 x batch
        pixels = kwargs.get("pixel_values", args[0] if args else None)
        if module.training and rank == 1 and pixels.shape[0] > 2 * 4:
            raise torch.OutOfMemoryError(OOM_TEXT)

    trainer.model.register_forward_pre_hook(hook, with_kwargs=True)
    trainer.train()
    return {
        "tried": trainer._batch_search.tried,
        "batch": trainer._train_batch_size,
        "steps": trainer.state.global_step,
        "checksum": float(sum(p.detach().double().sum() for p in trainer.model.parameters())),
    }


def main(out: str) -> None:
    torch.set_num_threads(1)
    n = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    for case, fn in (("metrics", run_metrics), ("auto_batch", run_auto_batch)):
        result = fn(out, n)
        with open(os.path.join(out, f"{case}-rank{rank}.json"), "w") as f:
            json.dump(result, f, indent=1)
    shutdown_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
