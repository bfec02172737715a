"""A SigLIP student distilled from a CLIP and a SigLIP teacher under FSDP2 (`test_families_training.py`):

    accelerate launch --config_file examples/accelerate_configs/fsdp.yaml --num_processes 2 \\
        tests/fsdp_family_helper.py OUT

2 steps (global batch 8), then `save_model(OUT/final)`; rank 0 writes `OUT/report.json` (the setup, the layer classes wrapped,
the losses).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from mmt_ard import MMTARDConfig, MMTARDTrainer, Teacher
from mmt_ard.embedded.tiny import DIGIT_NAMES, build_tiny_clip, build_tiny_siglip, digits_dataset
from mmt_ard.runtime.distributed import shutdown_process_group


def main(out: str) -> None:
    student, processor = build_tiny_siglip(hidden=32, image_size=16, seed=0, words=DIGIT_NAMES)
    robust, robust_proc = build_tiny_clip(hidden=48, projection_dim=40, image_size=20, seed=1)
    clean, clean_proc = build_tiny_siglip(hidden=48, image_size=12, seed=2, words=DIGIT_NAMES)
    args = MMTARDConfig(
        output_dir=out,
        preset="mmt-ard",
        feature_weight=0.5,
        attack_steps=2,
        max_steps=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_model_logit_scale=True,  # the SigLIP scale and bias (shape (1,), sharded) are read in every forward
    )
    trainer = MMTARDTrainer(
        model=student,
        args=args,
        teachers=[
            Teacher(robust, role="robust", processor=robust_proc),
            Teacher(clean, role="clean", processor=clean_proc),
        ],
        processing_class=processor,
        train_dataset=digits_dataset(16),
    )
    trainer.train()
    trainer.save_model(os.path.join(out, "final"))
    if trainer.args.process_index == 0:
        report = {
            "setup": trainer.distributed_setup(),
            "wrapped": trainer.accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap,
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        }
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(report, f)
    shutdown_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
