"""Run under `accelerate launch`: evaluate() then train() on 2 ranks; each rank writes a checksum of its student."""

import json
import os
import sys

import torch

from mmt_ard import MMTARDConfig, MMTARDTrainer, Teacher
from mmt_ard.embedded.tiny import build_tiny_clip, digits_dataset

torch.set_num_threads(1)
out = sys.argv[1]
student, processor = build_tiny_clip(hidden=32, layers=1, seed=0)
teacher, teacher_processor = build_tiny_clip(hidden=32, layers=1, seed=1)
data = digits_dataset(split="train").select(range(64))
args = MMTARDConfig(
    output_dir=out,
    preset="single-teacher",
    max_steps=3,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=8,
    attack_steps=1,
    eval_attack_steps=1,
    learning_rate=1e-3,
    use_cpu=True,
    report_to="none",
    save_strategy="no",
    disable_tqdm=True,
    seed=0,
    data_seed=0,
)
trainer = MMTARDTrainer(
    model=student,
    args=args,
    teachers=[Teacher(teacher, role="robust", processor=teacher_processor)],
    train_dataset=data,
    eval_dataset=data.select(range(16)),
    processing_class=processor,
)
trainer.evaluate()
trainer.train()
rank = int(os.environ.get("RANK", "0"))
wrapped = type(trainer.model_wrapped).__name__
vision = trainer.model.student.base.vision_model
checksum = float(sum(p.double().sum() for p in vision.parameters()))
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"checksum": checksum, "wrapped": wrapped}, f)
