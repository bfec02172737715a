"""The embedded default: a run that needs no network and no download (`recipe`), and the tiny seeded CLIP and SigLIP
models and scikit-learn digits it is made of (`tiny`; the test suite and the CPU benchmarks build theirs with it too).
"""

from .recipe import (
    DEFAULT_CACHE_DIR,
    DISTILLATION_DEFAULTS,
    QUICK_DEFAULTS,
    QUICK_MAX_EVAL_SAMPLES,
    QUICK_RECIPE,
    EmbeddedRecipe,
    build_embedded_models,
    digits_splits,
    simplex_text_head,
    train_zero_shot,
)

__all__ = [
    "DEFAULT_CACHE_DIR",
    "DISTILLATION_DEFAULTS",
    "QUICK_DEFAULTS",
    "QUICK_MAX_EVAL_SAMPLES",
    "QUICK_RECIPE",
    "EmbeddedRecipe",
    "build_embedded_models",
    "digits_splits",
    "simplex_text_head",
    "train_zero_shot",
]
