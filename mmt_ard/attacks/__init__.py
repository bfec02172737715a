"""Attacks in [0,1] pixel space, as pure functions: PGD (`pgd`), Auto-PGD (`apgd`) and the per-sample random
streams that make their random starts independent of batch size and process count (`random_streams`).

They need only a model that maps pixels to logits (`models.logits_of`); nothing here knows about training or
evaluation.
"""

from .auto_pgd import apgd, apgd_ce, apgd_objective, apgd_t, apgd_worst_case
from .projected_gradient import (
    ce_inner_loss,
    check_attack_args,
    embedding_l2_inner_loss,
    eval_mode,
    kl_inner_loss,
    pgd,
    project,
    random_start,
)
from .random_streams import generators, per_sample_rand, stable_seed

__all__ = [
    "apgd",
    "apgd_ce",
    "apgd_objective",
    "apgd_t",
    "apgd_worst_case",
    "ce_inner_loss",
    "check_attack_args",
    "embedding_l2_inner_loss",
    "eval_mode",
    "generators",
    "kl_inner_loss",
    "per_sample_rand",
    "pgd",
    "project",
    "random_start",
    "stable_seed",
]
