#!/usr/bin/env python
"""Make a CLIP image encoder adversarially robust with MMT-ARD (or a baseline preset), evaluate it, save it.

With no model arguments it runs the **embedded default**, offline: tiny CLIP teachers (a clean one, and a robust
one adversarially fine-tuned from it) and a smaller student are trained on scikit-learn's bundled digits (or taken
from `--embedded_cache_dir`), the student is distilled with the `mmt-ard` preset, and a table of clean and PGD
accuracy of both teachers and of the student before and after is printed and saved with the student.

    python examples/run_mmt_ard.py                                  # embedded default, 1-2 min on 2 CPU cores
    python examples/run_mmt_ard.py my_run.yaml --max_steps 100      # a YAML/JSON config; flags override it
    python examples/run_mmt_ard.py --config my_run.json --preset single-teacher
    accelerate launch --config_file examples/accelerate_configs/multi_gpu_ddp.yaml examples/run_mmt_ard.py \\
        --student openai/clip-vit-base-patch32 \\
        --robust_teacher LEAF-CLIP/CLIP-ViT-L-FARE2 --robust_teacher_processor openai/clip-vit-large-patch14 \\
        --clean_teacher openai/clip-vit-large-patch14 \\
        --dataset_name ILSVRC/imagenet-1k --eval_split validation --streaming --max_steps 5000 ...

`python examples/run_mmt_ard.py --help` lists every option: `ScriptArguments` and every `MMTARDConfig` /
`TrainingArguments` field. See docs/quickstart.md and docs/configuration.md.

The application lives in the package, `mmt_ard.cli.train`, which is also the console command `mmt-ard-train`; this
file only runs it. Its pieces, for the same run from Python:

    from mmt_ard.cli.train import main, make_parser

    script_args, config, explicit = make_parser().parse_args_and_config(["--output_dir", "runs/digits"])
    results = main(script_args, config, explicit)   # check, load, evaluate, train, evaluate, save, push

`main` checks the arguments (mmt_ard/cli/train_checks.py) and runs the library's
`mmt_ard.pipeline.run_training` (mmt_ard/pipeline/run.py), which reads as the run's summary: `load_run_inputs`
(mmt_ard/pipeline/inputs.py: the embedded default or your models and data), `rows_before_training`,
`MMTARDTrainer(...).train()`, `pgd_rows` (mmt_ard/pipeline/report.py), `save_student`, `push_to_hub`
(mmt_ard/pipeline/publish.py).
"""

import sys

from mmt_ard.cli.train import HubPushError, ScriptArguments, cli, main, make_parser, parse_args

__all__ = ["HubPushError", "ScriptArguments", "main", "make_parser", "parse_args"]

if __name__ == "__main__":
    sys.exit(cli())
