"""Training: `MMTARDTrainer` and what only training uses.

- `trainer`: the `transformers.Trainer` subclass (attack in the loop, fused multi-teacher distillation);
- `config`, `presets`, `validation`: `MMTARDConfig`, the named recipes, and the checks of its fields and batches;
- `teachers`, `teacher_cache`: frozen teachers and the cache of clean-teacher outputs;
- `losses`, `weighting`: the distillation loss and the per-sample / adaptive weightings (pure functions);
- `lora`, `precision`, `memory`, `nonfinite`, `step_metrics`: LoRA students, mixed precision, the batch-size search,
  the non-finite-loss guard, per-step timings;
- `checkpointing`, `model_card`: atomic checkpoint folders, and the saved student's card with its robustness table.
"""

from .._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (mmt_ard/_lazy.py)
_EXPORTS = {
    "MMTARDConfig": ".config",
    "PRESETS": ".presets",
    "Teacher": ".teachers",
    "MMTARDTrainer": ".trainer",
    "StudentBundle": ".trainer",
    "WEIGHTINGS": ".weighting",
    "make_weighting": ".weighting",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted([*_EXPORTS])
