"""Training: `MMTARDTrainer` and what only training uses.

- `trainer`: the `transformers.Trainer` subclass (attack in the loop, fused multi-teacher distillation);
- `config`, `presets`, `validation`: `MMTARDConfig`, the named recipes, and the checks of its fields and batches;
- `teachers`, `teacher_cache`: frozen teachers and the cache of clean-teacher outputs;
- `losses`, `weighting`: the distillation loss and the per-sample / adaptive weightings (pure functions);
- `lora`, `precision`, `memory`, `nonfinite`, `step_metrics`: LoRA students, mixed precision, the batch-size search,
  the non-finite-loss guard, per-step timings;
- `checkpointing`, `model_card`: atomic checkpoint folders, and the saved student's card with its robustness table.
"""

from .config import MMTARDConfig
from .presets import PRESETS
from .teachers import Teacher
from .trainer import MMTARDTrainer, StudentBundle
from .weighting import WEIGHTINGS, make_weighting

__all__ = ["MMTARDConfig", "MMTARDTrainer", "PRESETS", "StudentBundle", "Teacher", "WEIGHTINGS", "make_weighting"]
