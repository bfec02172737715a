"""FSDP2 runs for `test_fsdp.py`: launched on 2 CPU processes with the shipped `fsdp.yaml`, or in-process as the
one-process reference.

    accelerate launch --config_file examples/accelerate_configs/fsdp.yaml --num_processes 2 \\
        tests/fsdp_helper.py OUT

runs three cases one after the other in the same processes and writes what the test checks under OUT:

* `full/`: the student evaluated before training, then 4 steps (global batch 8) with evaluation and a checkpoint
  every 2 steps, then `save_model(full/final)`; `full/report.json` (rank 0): the setup, the sharding seen on every
  rank, teachers and optimizer, the log history;
* `full-resumed/`: the same run resumed from `full/checkpoint-2` (copied), `full-resumed/final` saved at the end;
* `lora/`, `lora-resumed/`: the same two with a LoRA student (its final save is the adapter).

The runs use `mmt-ard` with a feature term (so projection heads exist), PGD-2 without a random start (each process
draws its random starts from its own RNG, so a random start would differ from a one-process run on purpose), and
frozen attention key biases (see `build_trainer`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from mmt_ard import MMTARDConfig, MMTARDTrainer, Teacher
from mmt_ard.embedded.tiny import build_tiny_clip, digits_dataset
from mmt_ard.runtime.distributed import shutdown_process_group
from mmt_ard.training.lora import apply_lora

GLOBAL_BATCH = 8
MAX_STEPS = 4


def build_trainer(output_dir: str, num_processes: int = 1, lora: bool = False, **overrides) -> MMTARDTrainer:
    """The run of every case, for a global batch of 8 split over `num_processes`."""
    student, processor = build_tiny_clip(hidden=32, image_size=16, seed=0)
    for name, param in student.named_parameters():
        # the attention key biases get an exactly-zero gradient (softmax ignores a shift shared by all keys), i.e.
        # rounding noise that AdamW's normalisation turns into +-lr steps, different for any other summation order
        if name.endswith("k_proj.bias"):
            param.requires_grad_(False)
    if lora:
        student = apply_lora(student, r=4, alpha=8, dropout=0.0)
    robust, robust_proc = build_tiny_clip(hidden=48, projection_dim=40, image_size=20, seed=1)
    clean, clean_proc = build_tiny_clip(hidden=48, projection_dim=44, image_size=12, seed=2)
    data = digits_dataset(16)
    kwargs = {
        "output_dir": output_dir,
        "preset": "mmt-ard",
        "feature_weight": 0.5,
        "attack_steps": 2,
        "attack_eps": 8 / 255,
        "attack_step_size": 4 / 255,
        "attack_random_init": False,
        "eval_attack_steps": 1,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "max_steps": MAX_STEPS,
        "per_device_train_batch_size": GLOBAL_BATCH // num_processes,
        "per_device_eval_batch_size": GLOBAL_BATCH // num_processes,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "save_strategy": "steps",
        "save_steps": 2,
        "logging_steps": 1,
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
        train_dataset=data.select(range(48)),
        eval_dataset=data.select(range(48, 64)),
    )


def sharding_report(trainer: MMTARDTrainer) -> dict:
    """What this rank holds: which student parameters are DTensors and how much of them is local; the teachers."""
    from torch.distributed.tensor import DTensor

    params = dict(trainer.model.named_parameters())
    dtensors = {n: p for n, p in params.items() if isinstance(p, DTensor)}
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    teacher_params = [p for module in trainer.teacher_modules for p in module.parameters()]
    return {
        "model_class": type(trainer.model).__name__,
        "plain": sorted(set(params) - set(dtensors)),
        "num_dtensors": len(dtensors),
        "local_numel": sum(p.to_local().numel() for p in dtensors.values()),
        "full_numel": sum(p.numel() for p in dtensors.values()),
        "teachers_dtensors": sum(isinstance(p, DTensor) for p in teacher_params),
        "teachers_trainable": sum(p.requires_grad for p in teacher_params),
        "teachers_in_optimizer": sum(id(p) in optimized for p in teacher_params),
        "projection_heads": sorted(trainer.model.projections.keys()),
    }


def run_case(out: str, num_processes: int, case: str = "full") -> MMTARDTrainer:
    """Evaluate, train 4 steps (evaluation and checkpoint every 2), save `<case>/final`, report (rank 0)."""
    trainer = build_trainer(os.path.join(out, case), num_processes, lora=case == "lora")
    before = trainer.evaluate()  # before train(): the student is still whole on every process
    trainer.train()
    trainer.save_model(os.path.join(out, case, "final"))
    report = {
        "setup": trainer.distributed_setup(),
        "unsharded_copy_diff": unsharded_copy_diff(trainer, os.path.join(out, case, "final")),
        "eval_before": before,
        "log_history": trainer.state.log_history,
        "sharding": gather_reports(trainer),
    }
    if trainer.accelerator.is_main_process:
        with open(os.path.join(out, case, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
    return trainer


def unsharded_copy_diff(trainer: MMTARDTrainer, final_dir: str) -> float | None:
    """Max |w - w_saved| of `distributed.unsharded_copy` of the trained student, on every process (plain students)."""
    import safetensors.torch

    from mmt_ard.runtime.distributed import is_sharded, unsharded_copy

    clip = trainer.model.student.clip
    if not is_sharded(trainer.model) or hasattr(clip, "peft_config"):
        return None
    from torch.distributed.tensor import DTensor

    copy = unsharded_copy(clip, trainer.model, prefix="student.clip.")  # collective: every process
    assert not any(isinstance(p, DTensor) for p in copy.parameters())
    trainer.accelerator.wait_for_everyone()  # rank 0 has written final_dir
    saved = safetensors.torch.load_file(os.path.join(final_dir, "model.safetensors"))
    return max(float((copy.state_dict()[k] - v).abs().max()) for k, v in saved.items())


def gather_reports(trainer: MMTARDTrainer) -> list[dict]:
    mine = sharding_report(trainer)
    if trainer.accelerator.num_processes == 1:
        return [mine]
    reports = [None] * trainer.accelerator.num_processes
    torch.distributed.all_gather_object(reports, mine)
    return reports


def run_resumed(out: str, num_processes: int, case: str = "full") -> MMTARDTrainer:
    """The case resumed from a copy of its `checkpoint-2`, in `<case>-resumed`, saved to `<case>-resumed/final`."""
    resumed_dir = os.path.join(out, f"{case}-resumed")
    trainer = build_trainer(resumed_dir, num_processes, lora=case == "lora")
    if trainer.accelerator.is_main_process:
        shutil.copytree(os.path.join(out, case, "checkpoint-2"), os.path.join(resumed_dir, "checkpoint-2"))
    trainer.accelerator.wait_for_everyone()
    trainer.train(resume_from_checkpoint=True)
    trainer.save_model(os.path.join(resumed_dir, "final"))
    return trainer


def main(out: str) -> None:
    torch.set_num_threads(1)
    n = int(os.environ.get("WORLD_SIZE", "1"))
    for case in ("full", "lora"):
        run_case(out, n, case)
        run_resumed(out, n, case)
    shutdown_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
