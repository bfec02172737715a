"""Attacks in [0,1] pixel space, as pure functions: PGD (`pgd`), Auto-PGD (`apgd`) and the per-sample random
streams that make their random starts independent of batch size and process count (`random_streams`).

They need only a model that maps pixels to logits (`models.logits_of`); nothing here knows about training or
evaluation.
"""

from .._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (mmt_ard/_lazy.py)
_EXPORTS = {
    "apgd": ".auto_pgd",
    "apgd_ce": ".auto_pgd",
    "apgd_objective": ".auto_pgd",
    "apgd_t": ".auto_pgd",
    "apgd_worst_case": ".auto_pgd",
    "ce_inner_loss": ".projected_gradient",
    "check_attack_args": ".projected_gradient",
    "embedding_l2_inner_loss": ".projected_gradient",
    "eval_mode": ".projected_gradient",
    "kl_inner_loss": ".projected_gradient",
    "pgd": ".projected_gradient",
    "project": ".projected_gradient",
    "random_start": ".projected_gradient",
    "generators": ".random_streams",
    "per_sample_rand": ".random_streams",
    "stable_seed": ".random_streams",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted([*_EXPORTS])
