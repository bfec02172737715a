"""Presets: MMT-ARD and the baselines it is compared against, as defaults of one trainer.

A preset fills every `MMTARDConfig` field the user left unset (`None`); a field set explicitly always wins. `roles`
gives the defaults of each teacher role (which input it sees, which student output it is matched to, its coefficient
and losses); `required_roles` are the teachers the preset cannot run without; `make_original` asks the trainer to
build the frozen "original" teacher from the student's initial weights.
"""

from __future__ import annotations

import copy

_COMMON = dict(
    attack_eps=2 / 255,
    attack_step_size=1 / 255,
    attack_steps=10,
    attack_norm="linf",
    attack_momentum=0.0,
    attack_random_init=True,
    feature_weight=0.0,
    feature_loss="cosine",
    ce_weight=0.0,
    self_kl_weight=0.0,
    temperature=1.0,
    kl_reduction="sum",
    logit_scale=100.0,
    prompt_templates=["This is a photo of a {}"],
    learning_rate=2e-5,
    weight_decay=1e-4,
    warmup_steps=0.07,
    lr_scheduler_type="cosine",
    robust_coef=1.0,
    clean_coef=1.0,
    original_coef=1.0,
)

_DUAL_ROLES = {
    "robust": dict(input="adversarial", match="adversarial", coef_field="robust_coef"),
    "clean": dict(input="clean", match="clean", coef_field="clean_coef"),
}

PRESETS: dict[str, dict] = {
    "mmt-ard": dict(
        _COMMON,
        description="MMT-ARD as released: robust teacher on x_adv and clean teacher on x, confidence weights 50/5.",
        attack_momentum=0.9,
        attack_loss="kl",
        attack_target="clean",
        weighting="confidence",
        robust_coef=50.0,
        clean_coef=5.0,
        kl_reduction="class_mean",
        roles=_DUAL_ROLES,
        required_roles=("robust", "clean"),
    ),
    "mmt-ard-sigmoid": dict(
        _COMMON,
        description="MMT-ARD with the adaptive sigmoid weighting (our reconstruction of the abstract).",
        attack_momentum=0.9,
        attack_loss="kl",
        attack_target="clean",
        weighting="sigmoid",
        robust_coef=50.0,
        clean_coef=5.0,
        kl_reduction="class_mean",
        roles=_DUAL_ROLES,
        required_roles=("robust", "clean"),
    ),
    "single-teacher": dict(
        _COMMON,
        description="ARD/RSLAD-style single teacher: KL(z_R(x) || z_S(x_adv)), batch mean.",
        attack_loss="kl",
        attack_target="robust",
        weighting="fixed",
        roles={"robust": dict(input="clean", match="adversarial", coef_field="robust_coef")},
        required_roles=("robust",),
    ),
    "tecoa": dict(
        _COMMON,
        description="TeCoA: zero-shot CE on adversarial images, no teacher.",
        attack_loss="ce",
        attack_target=None,
        weighting="fixed",
        ce_weight=1.0,
        roles={},
        required_roles=(),
        max_teachers=0,
    ),
    "fare": dict(
        _COMMON,
        description="FARE: ||f_S(x_adv) - f_orig(x)||^2 to a frozen copy of the initial student.",
        attack_loss="embedding-l2",
        attack_target="original",
        weighting="fixed",
        feature_loss="l2",
        roles={
            "original": dict(
                input="clean", match="adversarial", coef_field="original_coef", kl=False, feature_weight=1.0
            )
        },
        required_roles=(),
        make_original=True,
    ),
    "pmg-aft": dict(
        _COMMON,
        description="PMG-AFT: CE(z_S(x_adv)) + KL(S(x_adv) || orig(x_adv)) + KL(S(x_adv) || S(x)).",
        attack_loss="ce",
        attack_target=None,
        weighting="fixed",
        ce_weight=1.0,
        self_kl_weight=1.0,
        roles={
            "original": dict(
                input="adversarial", match="adversarial", coef_field="original_coef", kl_direction="student_teacher"
            )
        },
        required_roles=(),
        make_original=True,
    ),
    "mtard": dict(
        _COMMON,
        description="MTARD: clean + robust teacher with normalised-loss balancing, no confidence.",
        attack_loss="ce",
        attack_target=None,
        weighting="mtard",
        roles=_DUAL_ROLES,
        required_roles=("robust", "clean"),
    ),
}

ATTACK_LOSSES = ("kl", "ce", "embedding-l2")


def get_preset(name: str) -> dict:
    """A deep copy of preset `name`; a clear `ValueError` listing the valid ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"`preset`={name!r} is not a preset: use one of {sorted(PRESETS)}.")
    return copy.deepcopy(PRESETS[name])
