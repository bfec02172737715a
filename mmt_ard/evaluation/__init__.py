"""Robust zero-shot evaluation: PGD / APGD-CE / APGD-T worst case, protocol presets, gradient-masking checks,
a multi-model multi-dataset benchmark (`evaluate_robustness`, the `mmt-ard-eval` command) and a training callback.
Every image's random draws are its own, so results do not depend on the batch size or the number of processes; each
image's outcome is recorded (per-sample files), which makes evaluations resumable and shardable. See
docs/evaluation.md."""

import os

from .._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (mmt_ard/_lazy.py)
_EXPORTS = {
    "attack_batch": ".attack_runner",
    "run_attack": ".attack_runner",
    "RobustEvalCallback": ".callback",
    "run_checks": ".checks",
    "EvalData": ".datasets",
    "load_eval_data": ".datasets",
    "subset_indices": ".datasets",
    "PROTOCOLS": ".protocols",
    "Protocol": ".protocols",
    "format_eps": ".protocols",
    "get_protocol": ".protocols",
    "markdown_table": ".report",
    "plot_robustness": ".report",
    "write_reports": ".report",
    "ensure_fp32": ".robust_eval",
    "evaluate_robustness": ".robust_eval",
    "load_eval_model": ".robust_eval",
    "SampleKeys": ".sample_keys",
    "EvaluationPreempted": ".sample_loop",
    "evaluate_on_data": ".sample_loop",
    "SampleFile": ".samples",
    "read_records": ".samples",
    "EvalGroup": ".sharding",
    "init_eval_group": ".sharding",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

METRIC_PATH = os.path.join(os.path.dirname(os.path.dirname(__file__)), "metrics", "robust_accuracy")
"""Directory of the `evaluate` metric module: `evaluate.load(METRIC_PATH)` (works offline)."""

__all__ = sorted([*_EXPORTS, 'METRIC_PATH'])
