"""Distillation losses as pure tensor functions.

`fused_distillation_loss` combines any number of teachers: each teacher's KL term (weighted per sample by the
weighting strategy), its optional feature term, and the optional CE / self-consistency terms used by the baseline
presets. It returns a dict whose `*_loss` entries sum to `"loss"`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KL_REDUCTIONS = ("class_mean", "sum")
FEATURE_LOSSES = ("cosine", "l2")


def kl_per_sample(
    target_logits: torch.Tensor, logits: torch.Tensor, temperature: float = 1.0, reduction: str = "class_mean"
) -> torch.Tensor:
    """`KL(softmax(target / tau) || softmax(logits / tau))` per sample, times `tau^2`.

    Args:
        target_logits: `(B, C)` logits of the distribution distilled from (no gradient is needed through it).
        logits: `(B, C)` logits being trained.
        temperature: `tau`.
        reduction: `"class_mean"` divides the class sum by `C` (the authors' code takes the mean of the elementwise KL
            over the `(B, C)` tensor); `"sum"` is the textbook KL.

    Returns:
        `(B,)` per-sample divergences.
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"`kl_reduction`={reduction!r} is not supported: use one of {list(KL_REDUCTIONS)}.")
    log_p = F.log_softmax(target_logits.float() / temperature, dim=-1)  # (B, C)
    log_q = F.log_softmax(logits.float() / temperature, dim=-1)  # (B, C)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1) * temperature**2  # (B,)
    return kl / logits.shape[-1] if reduction == "class_mean" else kl


def ce_per_sample(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample, `(B,)`."""
    return F.cross_entropy(logits.float(), labels, reduction="none")


def feature_loss_per_sample(student_feats: torch.Tensor, teacher_feats: torch.Tensor, kind: str = "cosine"):
    """Feature matching per sample, `(B,)`: `1 - cos(s, t)` (`"cosine"`) or `||s - t||^2` (`"l2"`, FARE)."""
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(student_feats.float(), teacher_feats.float(), dim=-1)
    if kind == "l2":
        return (student_feats.float() - teacher_feats.float()).pow(2).sum(-1)
    raise ValueError(f"`feature_loss`={kind!r} is not supported: use one of {list(FEATURE_LOSSES)}.")


@dataclass
class TeacherTerm:
    """One teacher's contribution, as tensors.

    Args:
        name: used in the loss keys (`kl_<name>_loss`, `feat_<name>_loss`).
        teacher_logits: `(B, C)` teacher logits on its input (or None when the teacher has no KL term).
        student_logits: `(B, C)` student logits it is matched to.
        weights: `(B,)` per-sample weights from the weighting strategy (coefficient included).
        kl_direction: `"teacher_student"` for `KL(p_T || p_S)`, `"student_teacher"` for `KL(p_S || p_T)`.
        teacher_feats: `(B, D_T)` teacher image embeddings, for the feature term.
        student_feats: `(B, D_T)` (projected) student embeddings, for the feature term.
        feature_weight: `lambda_feat` of this teacher (0 disables the feature term).
        feature_kind: `"cosine"` or `"l2"`.
    """

    name: str
    teacher_logits: torch.Tensor | None
    student_logits: torch.Tensor | None
    weights: torch.Tensor | None
    kl_direction: str = "teacher_student"
    teacher_feats: torch.Tensor | None = None
    student_feats: torch.Tensor | None = None
    feature_weight: float = 0.0
    feature_kind: str = "cosine"


def fused_distillation_loss(
    terms: list[TeacherTerm],
    *,
    temperature: float = 1.0,
    kl_reduction: str = "class_mean",
    labels: torch.Tensor | None = None,
    student_adv_logits: torch.Tensor | None = None,
    student_clean_logits: torch.Tensor | None = None,
    ce_weight: float = 0.0,
    self_kl_weight: float = 0.0,
    normalizer: float | torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The multi-teacher training loss.

    `L = 1/N * sum_b [ sum_k w_k[b] KL_k[b] + sum_k lambda_k F_k[b] + ce * CE[b] + self_kl * KL(S_adv||S_cln)[b] ]`

    Args:
        terms: one `TeacherTerm` per teacher.
        temperature: KL temperature `tau`.
        kl_reduction: see `kl_per_sample`.
        labels: `(B,)` labels, for the CE term.
        student_adv_logits: `(B, C)` student logits on adversarial images (CE and self-KL terms).
        student_clean_logits: `(B, C)` student logits on clean images (self-KL term).
        ce_weight: weight of `CE(z_S(x_adv), y)`.
        self_kl_weight: weight of `KL(p_S(x_adv) || p_S(x))` (PMG-AFT's consistency term).
        normalizer: `N`, the number of samples the per-sample sum is divided by (`B` when None; the number of samples
            in the whole accumulated batch under gradient accumulation).

    Returns:
        dict with `"loss"` (scalar), each named `*_loss` term (scalars that sum to `"loss"`), and
        `"per_teacher_kl"` `(K,)` batch-mean unweighted KL per teacher (detached; read by `mtard` weighting).
    """
    batch = None
    per_sample: dict[str, torch.Tensor] = {}
    raw_kl = []
    for term in terms:
        if term.teacher_logits is not None and term.student_logits is not None:
            if term.kl_direction == "teacher_student":
                kl = kl_per_sample(term.teacher_logits, term.student_logits, temperature, kl_reduction)
            else:
                kl = kl_per_sample(term.student_logits, term.teacher_logits, temperature, kl_reduction)
            raw_kl.append(kl.detach().mean())
            weights = term.weights if term.weights is not None else torch.ones_like(kl)
            per_sample[f"kl_{term.name}_loss"] = weights.float() * kl
            batch = kl.shape[0]
        else:
            raw_kl.append(None)
        if term.feature_weight and term.teacher_feats is not None:
            feat = feature_loss_per_sample(term.student_feats, term.teacher_feats, term.feature_kind)
            per_sample[f"feat_{term.name}_loss"] = term.feature_weight * feat
            batch = feat.shape[0]
    if ce_weight:
        if labels is None or student_adv_logits is None:
            raise ValueError("`ce_weight` > 0 needs labels and the student's adversarial logits.")
        per_sample["ce_loss"] = ce_weight * ce_per_sample(student_adv_logits, labels)
        batch = labels.shape[0]
    if self_kl_weight:
        per_sample["self_kl_loss"] = self_kl_weight * kl_per_sample(
            student_adv_logits, student_clean_logits, temperature, kl_reduction
        )
        batch = student_adv_logits.shape[0]
    if not per_sample:
        raise ValueError("The loss has no term: give at least one teacher with a KL or feature term, or `ce_weight`.")
    n = batch if normalizer is None else normalizer
    out = {key: value.sum() / n for key, value in per_sample.items()}
    out["loss"] = torch.stack(list(out.values())).sum()
    present = [k for k in raw_kl if k is not None]
    out["per_teacher_kl"] = (
        torch.stack([k if k is not None else present[0] * 0 for k in raw_kl]) if present else torch.zeros(len(terms))
    )
    return out
