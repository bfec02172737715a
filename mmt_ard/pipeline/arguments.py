"""The arguments of a training run that are not training arguments (`ScriptArguments`: models, data, the final
evaluation, the embedded default, LoRA), beside `mmt_ard.training.MMTARDConfig`, and the evaluation budgets they give.

`mmt-ard-train` parses both from its flags and config file (`mmt_ard.cli.train_args`); from Python, build them
directly:

>>> script_args = ScriptArguments(student="openai/clip-vit-base-patch32", dataset_name="cifar10", eval_eps=["2/255"])
>>> parse_eps("2/255")
0.00784313725490196
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction

__all__ = ["ScriptArguments", "parse_eps"]


@dataclass
class ScriptArguments:
    """Arguments of a training run (`run_training`, `mmt-ard-train`, `examples/run_mmt_ard.py`) that are not training
    arguments (those live in `MMTARDConfig`).

    Args:
        config: a `.yaml`/`.yml`/`.json` file of arguments (script and `MMTARDConfig` fields); flags override it.
            It may also be given as the first positional argument.
        student: the student `CLIPModel`: Hub id or local path. Unset: the embedded default (tiny CLIPs on digits).
        student_processor: where the student's processor lives if not with the model.
        robust_teacher: the robust teacher (sees adversarial images): Hub id or local path.
        robust_teacher_processor: its processor's Hub id or path (e.g. `openai/clip-vit-large-patch14` for
            `LEAF-CLIP/CLIP-ViT-L-FARE2`, whose repository has none).
        clean_teacher: the clean teacher (sees clean images): Hub id or local path.
        clean_teacher_processor: its processor's Hub id or path.
        lora_r: LoRA rank of the student's vision attention projections (0: full fine-tuning of the vision tower).
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        lora_target_modules: module names inside the vision tower that get LoRA adapters.
        save_merged: with LoRA, save the student with the adapters merged into its weights (a plain `CLIPModel`;
            the adapter goes to `output_dir/lora_adapter`); otherwise save the adapter only.
        dataset_name: a Hub dataset id, or a local directory (image folder, parquet/arrow files, `save_to_disk`).
        dataset_config_name: the Hub dataset's configuration.
        train_files: local `.parquet`/`.arrow` training files, or webdataset `.tar` shards (brace patterns such as
            `shards/{00000..00099}.tar` allowed), instead of `dataset_name`.
        eval_files: local `.parquet`/`.arrow` evaluation files or `.tar` shards.
        train_split: training split of `dataset_name`.
        eval_split: evaluation split of `dataset_name` (`none`: no evaluation).
        image_column: the column holding images (encoded bytes, an `Image` feature, paths or arrays).
        label_column: the column holding integer labels (or class names).
        label_json_field: webdataset shards: take the label from this field of each sample's `.json` instead of its
            `.cls` file.
        class_names: class names in label-id order (default: the label column's `ClassLabel`, else a JSON sidecar
            `foo.json` next to a data file `foo.parquet`, else the built-in names of a known dataset such as
            `cifar10`; see `mmt_ard.data.open_image_source`).
        class_names_file: a file of class names: one per line, a JSON list, or JSON with a `classes` list.
        streaming: stream the datasets (`IterableDataset`; needs `--max_steps`).
        max_train_samples: use this many training samples (a seeded random subset).
        max_eval_samples: evaluate on this many samples (a seeded random subset).
        dataset_cache_dir: the `datasets` cache directory.
        eval_eps: L-inf budgets of the final PGD evaluation, as fractions (`2/255 4/255`) or floats; default: the
            config's `eval_attack_eps`. Step size scales with eps (`eval_attack_step_size / eval_attack_eps`).
        eval_before_training: also evaluate the student before training (the "before" rows of the table).
        eval_teachers: also evaluate the teachers (always on in the embedded default).
        embedded_cache_dir: where the embedded default keeps its trained teachers and student (`none`: no cache).
        quick: the embedded default with a handful of steps and 64 evaluation images (a smoke test).
        embedded_clean_steps: clean-teacher steps of the embedded default (default 300).
        embedded_robust_steps: robust-teacher fine-tuning steps of the embedded default (default 200).
        embedded_student_steps: student pre-training steps of the embedded default (default 200).
        num_threads: CPU threads of torch (default: torch's own, 1 for the embedded default, whose tiny matrices
            run fastest single-threaded, above all on a busy machine).
        dump_checksums: write `checksum_rank<r>.json` (a hash of the student's weights on each process) to
            `output_dir`: identical files on every rank show that DDP kept the replicas in sync.
        overwrite_output_dir: start a new run in an `output_dir` that holds another one (its checkpoints, weights,
            model card and results are deleted when training starts); without it such a folder is refused unless
            `--resume_from_checkpoint` continues the run.
    """

    config: str | None = field(
        default=None, metadata={"help": "A .yaml/.yml/.json file of arguments; flags override it."}
    )
    student: str | None = field(
        default=None, metadata={"help": "Student CLIP / SigLIP / SigLIP 2 model (Hub id or path). Unset: the offline embedded default."}
    )
    student_processor: str | None = field(default=None, metadata={"help": "Student processor id/path if elsewhere."})
    robust_teacher: str | None = field(default=None, metadata={"help": "Robust teacher CLIP / SigLIP model (Hub id or path)."})
    robust_teacher_processor: str | None = field(
        default=None, metadata={"help": "Robust teacher's processor (e.g. openai/clip-vit-large-patch14 for FARE2)."}
    )
    clean_teacher: str | None = field(default=None, metadata={"help": "Clean teacher CLIP / SigLIP model (Hub id or path)."})
    clean_teacher_processor: str | None = field(default=None, metadata={"help": "Clean teacher's processor id/path."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the student's vision tower (0: full fine-tune)."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"],
        metadata={"help": "Vision-tower module names given LoRA adapters."},
    )
    save_merged: bool = field(
        default=False, metadata={"help": "With LoRA: save merged weights (a plain model) instead of the adapter."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id or local dir (image folder / parquet / arrow / save_to_disk)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_files: list[str] | None = field(
        default=None,
        metadata={"help": "Local .parquet/.arrow training files or .tar shards (brace patterns allowed)."},
    )
    eval_files: list[str] | None = field(
        default=None, metadata={"help": "Local .parquet/.arrow evaluation files or .tar shards."}
    )
    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: str = field(default="validation", metadata={"help": "Evaluation split ('none': no evaluation)."})
    image_column: str = field(default="image", metadata={"help": "Image column."})
    label_column: str = field(default="label", metadata={"help": "Label column (ints or class names)."})
    label_json_field: str | None = field(
        default=None, metadata={"help": "Webdataset shards: label from this field of each sample's .json (not .cls)."}
    )
    class_names: list[str] | None = field(default=None, metadata={"help": "Class names in label order."})
    class_names_file: str | None = field(
        default=None, metadata={"help": "Class names file: one per line, a JSON list, or JSON with 'classes'."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the datasets (needs --max_steps)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use a seeded subset of this size."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on a seeded subset of this size."})
    dataset_cache_dir: str | None = field(default=None, metadata={"help": "datasets cache directory."})
    eval_eps: list[str] | None = field(
        default=None, metadata={"help": "Final PGD budgets, e.g. 2/255 4/255 (default: eval_attack_eps)."}
    )
    eval_before_training: bool = field(default=True, metadata={"help": "Also evaluate the student before training."})
    eval_teachers: bool = field(default=False, metadata={"help": "Also evaluate the teachers (on in embedded mode)."})
    embedded_cache_dir: str = field(
        default=os.path.join("~", ".cache", "mmt_ard", "embedded"),
        metadata={"help": "Cache of the embedded default's teachers and student ('none': no cache)."},
    )
    quick: bool = field(default=False, metadata={"help": "Embedded default with a few steps (smoke test)."})
    embedded_clean_steps: int | None = field(default=None, metadata={"help": "Embedded clean-teacher steps (300)."})
    embedded_robust_steps: int | None = field(default=None, metadata={"help": "Embedded robust-teacher steps (200)."})
    embedded_student_steps: int | None = field(default=None, metadata={"help": "Embedded student pre-training (200)."})
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads (embedded default: 1)."})
    dump_checksums: bool = field(
        default=False, metadata={"help": "Write checksum_rank<r>.json of the student's weights per process."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start over in an output_dir that holds another run (its run files are deleted)."},
    )


def parse_eps(text: str | float) -> float:
    """`"2/255"` -> 0.00784; `"0.01"` -> 0.01."""
    try:
        value = float(Fraction(str(text).strip()))
    except (ValueError, ZeroDivisionError) as err:
        raise ValueError(f"`eval_eps` value {text!r} is not a number or a fraction like 2/255.") from err
    if not 0 <= value <= 1:
        raise ValueError(f"`eval_eps` value {text!r} = {value:g} is outside [0, 1]: budgets are in [0,1] pixel units.")
    return value
