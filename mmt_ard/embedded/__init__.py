"""The embedded default: a run that needs no network and no download (`recipe`), and the tiny seeded CLIP and SigLIP
models and scikit-learn digits it is made of (`tiny`; the test suite and the CPU benchmarks build theirs with it too).
"""

from .._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (mmt_ard/_lazy.py)
_EXPORTS = {
    "DEFAULT_CACHE_DIR": ".recipe",
    "DISTILLATION_DEFAULTS": ".recipe",
    "QUICK_DEFAULTS": ".recipe",
    "QUICK_MAX_EVAL_SAMPLES": ".recipe",
    "QUICK_RECIPE": ".recipe",
    "EmbeddedRecipe": ".recipe",
    "build_embedded_models": ".recipe",
    "digits_splits": ".recipe",
    "simplex_text_head": ".recipe",
    "train_zero_shot": ".recipe",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted([*_EXPORTS])
