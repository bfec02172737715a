"""Robust zero-shot evaluation: PGD / APGD-CE / APGD-T worst case, protocol presets, gradient-masking checks,
a multi-model multi-dataset benchmark (`evaluate_robustness`, the `mmt-ard-eval` command) and a training callback.
Every image's random draws are its own, so results do not depend on the batch size or the number of processes; each
image's outcome is recorded (per-sample files), which makes evaluations resumable and shardable. See
docs/evaluation.md."""

import os

from .attack_runner import attack_batch, run_attack
from .callback import RobustEvalCallback
from .checks import run_checks
from .datasets import EvalData, load_eval_data, subset_indices
from .protocols import PROTOCOLS, Protocol, format_eps, get_protocol
from .report import markdown_table, plot_robustness, write_reports
from .robust_eval import ensure_fp32, evaluate_robustness, load_eval_model
from .sample_keys import SampleKeys
from .sample_loop import EvaluationPreempted, evaluate_on_data
from .samples import SampleFile, read_records
from .sharding import EvalGroup, init_eval_group

METRIC_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "metrics", "robust_accuracy")
"""Directory of the `evaluate` metric module: `evaluate.load(METRIC_PATH)` (works offline)."""

__all__ = [
    "METRIC_PATH",
    "PROTOCOLS",
    "EvalData",
    "EvalGroup",
    "EvaluationPreempted",
    "Protocol",
    "RobustEvalCallback",
    "SampleFile",
    "SampleKeys",
    "attack_batch",
    "ensure_fp32",
    "evaluate_on_data",
    "evaluate_robustness",
    "format_eps",
    "get_protocol",
    "init_eval_group",
    "load_eval_data",
    "load_eval_model",
    "markdown_table",
    "plot_robustness",
    "read_records",
    "run_attack",
    "run_checks",
    "subset_indices",
    "write_reports",
]
