"""Auto-PGD (APGD) white-box attacks as pure functions.

Reference:
    F. Croce and M. Hein, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML 2020 (arXiv:2003.01690).

Threat model:
    White-box, untargeted evasion. Inputs are pixels in [0, 1] of shape (B, 3, H, W);
    the adversary may add a perturbation ``delta`` with ``||delta||_p <= eps``
    (p = inf for ``norm="linf"``, p = 2 for ``norm="l2"``) and the result is clipped
    back to [0, 1]. ``model`` maps such pixels to logits (B, C) or to an object
    with ``.logits`` such as a ``ZeroShotCLIP`` output (the ``attacks.projected_gradient`` convention); any input
    normalisation must live inside the model. An image counts as robust only if the
    model classifies it correctly at every point the attack visits.

Algorithm (defaults follow the paper / AutoAttack "standard"):
    * random start in the eps-ball, initial step size ``2 * eps``;
    * momentum ``alpha = 0.75`` (no momentum on the first step);
    * checkpoints ``w_j = ceil(p_j * n_iter)`` with ``p_0 = 0``, ``p_1 = 0.22`` and
      ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``. At a checkpoint the step
      size of a sample is halved, and its iterate reset to its best point so far, if
      (1) fewer than ``rho`` (0.75) of the steps since the last checkpoint increased
      the loss, or (2) the step size was not halved at the previous checkpoint and the
      best loss has not improved since then;
    * losses: cross-entropy (APGD-CE, 100 iterations) and the targeted DLR loss
      ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` (APGD-T, 100 iterations,
      the top 9 non-true classes as targets, 1 restart each).

Everything runs in fp32 with autocast disabled, gradients are taken with
``torch.autograd.grad`` w.r.t. the input only (parameter ``.grad`` is untouched),
and the random start uses a local ``torch.Generator`` (the global RNG is untouched).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models import logits_of
from .random_streams import generators, per_sample_rand

__all__ = ["apgd", "apgd_ce", "apgd_objective", "apgd_t", "apgd_worst_case"]

_NORMS = ("linf", "l2")
_LOSSES = ("ce", "dlr", "dlr-targeted")
_ATTACKS = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted"}
_MOMENTUM = 0.75


def _checkpoints(n_iter: int) -> list[int]:
    """Iterations ``w_j`` (1-based, <= n_iter) at which the step size is reviewed."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    ws = {math.ceil(round(pj * n_iter, 6)) for pj in p}
    return sorted(w for w in ws if 0 < w <= n_iter)


def _dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Per-sample (targeted) DLR loss, higher = more adversarial. logits (B, C) -> (B,)."""
    z_sorted = logits.sort(dim=1, descending=True).values  # (B, C), z_pi1 >= z_pi2 >= ...
    z_y = logits.gather(1, y[:, None])[:, 0]  # (B,)
    if target is None:  # untargeted: strongest other class, denominator z_pi1 - z_pi3
        z_other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -float("inf")).amax(1)
        return -(z_y - z_other) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)
    z_t = logits.gather(1, target[:, None])[:, 0]  # (B,)
    return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12)


def _project(x_new: torch.Tensor, x0: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project onto the eps-ball around x0, then clip to [0, 1] (stays in the ball)."""
    delta = x_new - x0
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x0.dim() - 1))  # (n, 1, 1, 1)
        delta = delta * torch.clamp(eps / (n + 1e-12), max=1.0)
    return (x0 + delta).clamp(0.0, 1.0)


def _random_start(x0, eps, norm, gen, idx, full_shape, sample_gens=None):
    """Random point in the eps-ball. With one generator the noise is drawn for the full batch and indexed, so a
    sample's start does not depend on which other samples are still attacked; with `sample_gens` (one CPU generator
    per attacked sample, `random_streams`) it does not depend on the batch at all."""
    if sample_gens is not None:
        noise = per_sample_rand(sample_gens, tuple(full_shape[1:]), normal=norm != "linf")  # (n, 3, H, W) on the CPU
    elif norm == "linf":
        noise = torch.rand(full_shape, generator=gen, device=gen.device)[idx.to(gen.device)]
    else:
        noise = torch.randn(full_shape, generator=gen, device=gen.device)[idx.to(gen.device)]
    if norm == "linf":
        noise = (2 * noise - 1) * eps
    else:
        noise = noise * eps / (noise.flatten(1).norm(dim=1).view(-1, *[1] * (len(full_shape) - 1)) + 1e-12)
    return (x0 + noise.to(x0.device)).clamp(0.0, 1.0)


def _single_run(model, x0, y, target, *, eps, norm, loss, n_iter, rho, x_start, loss_fn=None):
    """One APGD run on a sub-batch. Returns (x_best, best_loss, x_fool, fooled).

    ``loss_fn`` (optional) replaces the classifier objective: a per-sample loss ``x_adv (n, 3, H, W) -> (n,)`` to
    maximise (``model``, ``y``, ``target`` and ``loss`` are then unused). Such an objective has no notion of a fooled
    sample, so ``fooled`` stays all False and every iteration runs.
    """
    n = x0.shape[0]
    shape = (n,) + (1,) * (x0.dim() - 1)  # broadcast per-sample scalars to (n, 1, 1, 1)

    def loss_and_grad(x_adv):
        x_adv = x_adv.detach().requires_grad_(True)
        if loss_fn is not None:
            per_sample = loss_fn(x_adv).float()  # (n,)
            fooled = torch.zeros(n, dtype=torch.bool, device=x0.device)
        else:
            logits = logits_of(model(x_adv)).float()  # (n, C)
            if loss == "ce":
                per_sample = F.cross_entropy(logits, y, reduction="none")  # (n,)
            else:
                per_sample = _dlr_loss(logits, y, target)  # (n,)
            fooled = logits.argmax(1) != y
        (grad,) = torch.autograd.grad(per_sample.sum(), [x_adv])
        return per_sample.detach(), grad.detach(), fooled

    x_cur = x_start
    cur_loss, grad, fooled = loss_and_grad(x_cur)
    x_fool = torch.where(fooled.view(shape), x_cur, x0)  # first point that fools the model
    x_best, best_loss, grad_best = x_cur.clone(), cur_loss.clone(), grad.clone()
    x_prev = x_cur.clone()
    step = torch.full(shape, 2.0 * eps, device=x0.device)  # (n, 1, 1, 1)

    ckpts = _checkpoints(n_iter)
    last_ckpt = 0
    n_increase = torch.zeros(n, device=x0.device)  # successful steps since last checkpoint
    best_at_ckpt = best_loss.clone()
    reduced_at_ckpt = torch.zeros(n, dtype=torch.bool, device=x0.device)

    for i in range(n_iter):
        with torch.no_grad():
            if norm == "linf":
                direction = grad.sign()
            else:
                direction = grad / (grad.flatten(1).norm(dim=1).view(shape) + 1e-12)
            z = _project(x_cur + step * direction, x0, eps, norm)
            alpha = 1.0 if i == 0 else _MOMENTUM
            x_new = _project(x_cur + alpha * (z - x_cur) + (1 - alpha) * (x_cur - x_prev), x0, eps, norm)

        new_loss, grad, fooled_now = loss_and_grad(x_new)
        newly = fooled_now & ~fooled
        x_fool[newly] = x_new[newly]
        fooled |= fooled_now
        n_increase += (new_loss > cur_loss).float()
        improved = new_loss > best_loss
        x_best[improved], grad_best[improved] = x_new[improved], grad[improved]
        best_loss = torch.where(improved, new_loss, best_loss)
        x_prev, x_cur, cur_loss = x_cur, x_new, new_loss

        if ckpts and i + 1 == ckpts[0]:
            period = ckpts.pop(0) - last_ckpt
            last_ckpt += period
            cond1 = n_increase < rho * period
            cond2 = ~reduced_at_ckpt & (best_loss <= best_at_ckpt)
            reduce = cond1 | cond2  # (n,)
            step[reduce] /= 2.0
            # restart halved samples from their best point, without momentum
            x_cur, x_prev = x_cur.clone(), x_prev.clone()
            x_cur[reduce] = x_best[reduce]
            x_prev[reduce] = x_best[reduce]
            grad[reduce] = grad_best[reduce]
            cur_loss = torch.where(reduce, best_loss, cur_loss)
            reduced_at_ckpt, best_at_ckpt = reduce, best_loss.clone()
            n_increase.zero_()
        if fooled.all():  # early exit: every sample already fooled
            break
    return x_best, best_loss, x_fool, fooled


def _validate(x, y, eps, norm, loss, n_iter, n_restarts, n_target_classes, rho):
    if norm not in _NORMS:
        raise ValueError(f"norm={norm!r} is invalid: use one of {_NORMS}.")
    # Linf: eps in [0, 1]; L2: eps in [0, sqrt(D)], the diameter of [0, 1]^D (D = 3*H*W)
    eps_max = 1.0 if norm == "linf" else max(1.0, math.sqrt(math.prod(x.shape[1:])))
    try:
        eps_ok = 0.0 <= float(eps) <= eps_max
    except (TypeError, ValueError):
        eps_ok = False
    if not eps_ok:
        raise ValueError(
            f"eps={eps!r} is invalid for norm={norm!r}: eps must be a float in [0, {eps_max:.4g}] "
            "in pixel units of inputs in [0, 1]; e.g. pass eps=4/255 rather than eps=4."
        )
    if loss not in _LOSSES:
        raise ValueError(f"loss={loss!r} is invalid: use one of {_LOSSES}.")
    if not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter={n_iter!r} is invalid: n_iter must be an int >= 1.")
    if not isinstance(n_restarts, int) or n_restarts < 1:
        raise ValueError(f"n_restarts={n_restarts!r} is invalid: must be an int >= 1.")
    if not isinstance(n_target_classes, int) or n_target_classes < 1:
        raise ValueError(f"n_target_classes={n_target_classes!r} is invalid: must be an int >= 1.")
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho={rho!r} is invalid: rho must be in (0, 1].")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, 3, H, W), got {tuple(x.shape)}.")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}.")
    if x.numel() and (x.min() < 0.0 or x.max() > 1.0 or not torch.isfinite(x).all()):
        raise ValueError(
            f"x must hold pixels in [0, 1] (got range [{x.min().item():.4g}, "
            f"{x.max().item():.4g}]); normalise inside the model, not before the attack."
        )


def _apgd_impl(
    model,
    x,
    y,
    *,
    eps,
    norm,
    loss,
    n_iter,
    n_restarts,
    n_target_classes,
    rho,
    seed,
    verbose,
    active=None,
    sample_seeds=None,
):
    """Run APGD and return ``(x_adv, robust)`` with x_adv (B, 3, H, W) and robust (B,) bool.

    ``active`` (B,) bool restricts the attack to a subset; the others come back unchanged
    and not robust. Random starts are drawn for the whole batch, so a sample's trajectory
    does not depend on which other samples are attacked; with ``sample_seeds`` (B,) each
    sample's start of run ``j`` (target ``t``, restart ``r``) comes from its own stream
    ``(sample_seeds[i], loss, j)``, so it does not depend on the batch either.
    """
    x = x.detach().float().clone()  # clone: inputs made under inference_mode become normal
    y = y.detach().to(x.device).long().clone()
    _validate(x, y, eps, norm, loss, n_iter, n_restarts, n_target_classes, rho)
    if sample_seeds is not None:
        sample_seeds = [int(s) for s in sample_seeds]
        if len(sample_seeds) != x.shape[0]:
            raise ValueError(
                f"sample_seeds has {len(sample_seeds)} seeds for {x.shape[0]} images: give one per image."
            )
    eps = float(eps)
    with torch.no_grad():
        logits = logits_of(model(x)).float()  # (B, C)
    robust = logits.argmax(1) == y  # (B,) misclassified clean images are never robust
    if active is not None:
        robust &= active
    n_classes = logits.shape[1]
    if loss == "dlr-targeted":
        if n_classes < 4:
            raise ValueError(
                f"APGD-T (targeted DLR loss) needs >= 4 classes but the model has "
                f"{n_classes}; use apgd_ce / loss='ce' (n_target_classes={n_target_classes} "
                "cannot apply)."
            )
        others = logits.masked_fill(F.one_hot(y, n_classes).bool(), -float("inf"))
        ranked = others.argsort(dim=1, descending=True)[:, : min(n_target_classes, n_classes - 1)]
        targets = list(ranked.T)  # k-th entry: (B,) k-th most likely non-true class
    elif loss == "dlr" and n_classes < 3:
        raise ValueError(f"the DLR loss needs >= 3 classes but the model has {n_classes}; use loss='ce'.")
    else:
        targets = [None]
    x_adv = x.clone()
    if eps == 0.0 or not robust.any():
        return x_adv, robust

    gen = torch.Generator(device=x.device).manual_seed(seed)  # local generator on x's device: global RNG untouched
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)  # (B,)
    for t_idx, target in enumerate(targets):
        for restart in range(n_restarts):
            idx = robust.nonzero()[:, 0]  # attack only samples that are still robust
            if idx.numel() == 0:
                break
            sample_gens = None
            if sample_seeds is not None:  # run j of sample i: its own stream, whatever else is in the batch
                run = f"{loss}/{t_idx * n_restarts + restart}"
                sample_gens = generators([sample_seeds[i] for i in idx.tolist()], stream=run)
            x_start = _random_start(x[idx], eps, norm, gen, idx, x.shape, sample_gens)
            x_b, loss_b, x_f, fooled = _single_run(
                model,
                x[idx],
                y[idx],
                None if target is None else target[idx],
                eps=eps,
                norm=norm,
                loss=loss,
                n_iter=n_iter,
                rho=rho,
                x_start=x_start,
            )
            better = ~fooled & (loss_b > best_loss[idx])
            x_adv[idx[better]], best_loss[idx[better]] = x_b[better], loss_b[better]
            x_adv[idx[fooled]] = x_f[fooled]
            robust[idx[fooled]] = False
            if verbose:
                print(
                    f"[apgd {loss}/{norm}] target {t_idx} restart {restart}: "
                    f"robust acc {robust.float().mean().item():.2%}"
                )
    return x_adv, robust


def _run_safely(fn, model, x):
    """Run fn() with model in eval mode, grad enabled (also inside no_grad/inference_mode)
    and autocast off; restore every submodule's training flag afterwards."""
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, nn.Module) else []
    if isinstance(model, nn.Module):
        model.eval()
    try:
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device_type=x.device.type, enabled=False),
        ):
            return fn()
    finally:
        for m, mode in modes:
            m.training = mode


def apgd(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    loss: str = "ce",
    n_iter: int = 100,
    n_restarts: int = 1,
    n_target_classes: int = 9,
    rho: float = 0.75,
    seed: int = 0,
    verbose: bool = False,
    sample_seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """Auto-PGD attack (Croce & Hein, 2020).

    Args:
        model: callable mapping pixels in [0, 1] (B, 3, H, W) to logits (B, C). If it is an
            ``nn.Module`` it runs in eval mode during the attack; its modes are restored.
        x: clean images (B, 3, H, W) in [0, 1]; cast to float32.
        y: true labels (B,).
        eps: perturbation budget in pixel units: in [0, 1] for Linf, in [0, sqrt(3*H*W)]
            for L2; ``eps == 0`` returns ``x``.
        norm: ``"linf"`` or ``"l2"``.
        loss: ``"ce"`` (APGD-CE), ``"dlr"`` (untargeted DLR) or ``"dlr-targeted"`` (APGD-T).
        n_iter: iterations per run (>= 1).
        n_restarts: random restarts (per target class for APGD-T).
        n_target_classes: APGD-T only: number of target classes, the most likely non-true
            classes on the clean input (capped at C - 1).
        rho: step-size halving threshold on the fraction of successful steps.
        seed: seed of the local generator used for random starts.
        verbose: print robust accuracy after each run.
        sample_seeds: (B,) per-sample seeds (`random_streams.stable_seed`) instead of `seed`:
            each image's random starts come from its own streams, so its result does not depend
            on the batch it is attacked in (what `mmt_ard.evaluation` uses).

    Returns:
        x_adv (B, 3, H, W) float32 in [0, 1]: per sample, the first point found that is
        misclassified, otherwise the highest-loss point (the input itself for images that
        are misclassified already).
    """
    return _run_safely(
        lambda: _apgd_impl(
            model,
            x,
            y,
            eps=eps,
            norm=norm,
            loss=loss,
            n_iter=n_iter,
            n_restarts=n_restarts,
            n_target_classes=n_target_classes,
            rho=rho,
            seed=seed,
            verbose=verbose,
            sample_seeds=sample_seeds,
        )[0],
        model,
        x,
    )


def apgd_ce(model, x, y, **kwargs) -> torch.Tensor:
    """APGD with the cross-entropy loss; see :func:`apgd` for the arguments."""
    return apgd(model, x, y, **{**kwargs, "loss": "ce"})


def apgd_t(model, x, y, **kwargs) -> torch.Tensor:
    """APGD-T: targeted DLR loss over the top non-true classes; see :func:`apgd`.

    Raises:
        ValueError: if the model has fewer than 4 classes (use :func:`apgd_ce`).
    """
    return apgd(model, x, y, **{**kwargs, "loss": "dlr-targeted"})


def apgd_worst_case(
    model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    attacks: Sequence[str] = ("apgd-ce", "apgd-t"),
    n_iter: int = 100,
    n_restarts: int = 1,
    n_target_classes: int = 9,
    rho: float = 0.75,
    seed: int = 0,
    verbose: bool = False,
    sample_seeds: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample worst case over several APGD attacks (AutoAttack-style cascade).

    Each attack runs only on the samples that every previous attack failed to fool.

    Args:
        model, x, y, eps, norm, n_iter, n_restarts, n_target_classes, rho, seed, verbose, sample_seeds:
            as in :func:`apgd` (each attack draws its own streams from ``sample_seeds``).
        attacks: names from ``"apgd-ce"``, ``"apgd-t"``, ``"apgd-dlr"``, run in order.

    Returns:
        (x_adv, robust_mask): x_adv (B, 3, H, W) float32 holds the fooling point where one
        was found, else the last attack's highest-loss point; robust_mask (B,) bool is True
        iff the clean image is correct and no attack fooled the model.
    """
    unknown = [a for a in attacks if a not in _ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"attacks={tuple(attacks)!r} is invalid: use a non-empty subset of {tuple(_ATTACKS)}.")

    def run():
        x_adv, robust = None, None
        for name in attacks:
            x_a, rob_a = _apgd_impl(
                model,
                x,
                y,
                eps=eps,
                norm=norm,
                loss=_ATTACKS[name],
                n_iter=n_iter,
                n_restarts=n_restarts,
                n_target_classes=n_target_classes,
                rho=rho,
                seed=seed,
                verbose=verbose,
                active=robust,
                sample_seeds=sample_seeds,
            )
            if robust is None:
                x_adv, robust = x_a, rob_a
            else:  # only the samples still robust were attacked
                x_adv[robust] = x_a[robust]
                robust = rob_a
        return x_adv, robust

    return _run_safely(run, model, x)


def apgd_objective(
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    n_iter: int = 100,
    rho: float = 0.75,
    x_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD (the same step-size schedule, momentum and checkpoints) maximising any per-sample objective.

    For models that are not classifiers, e.g. the language-model loss of a vision-language model: pass a callable
    that maps pixels to one loss per sample. To force an output (a targeted attack), maximise its negative loss.

    Args:
        loss_fn: ``x_adv (B, 3, H, W) in [0, 1] -> (B,)`` losses to maximise, differentiable w.r.t. ``x_adv``.
            It runs with gradients enabled; the caller owns the model's mode and precision.
        x: clean images (B, 3, H, W) in [0, 1]; cast to float32 (the attack state stays fp32).
        eps: perturbation budget in pixel units (as in :func:`apgd`); ``eps == 0`` returns ``x``.
        norm: ``"linf"`` or ``"l2"``.
        n_iter: iterations (>= 1).
        rho: step-size halving threshold on the fraction of successful steps.
        x_start: where the run starts (e.g. a seeded random point, or a previous attack's best point); projected
            onto the eps-ball around ``x`` and [0, 1]. Default: ``x`` itself.

    Returns:
        ``(x_best, best_loss)``: per sample the highest-loss point visited (B, 3, H, W) float32 in [0, 1] and within
        the budget, and its loss (B,).
    """
    x = x.detach().float().clone()
    _validate(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), eps, norm, "ce", n_iter, 1, 1, rho)
    eps = float(eps)
    if x_start is None:
        x_start = x.clone()
    elif x_start.shape != x.shape:
        raise ValueError(f"x_start has shape {tuple(x_start.shape)}: it must match x, {tuple(x.shape)}.")
    x_start = _project(x_start.detach().float().to(x.device), x, eps, norm)
    with torch.inference_mode(False), torch.enable_grad():
        if eps == 0.0:
            with torch.no_grad():
                return x, loss_fn(x).detach().float()
        x_best, best_loss, _, _ = _single_run(
            None,
            x,
            None,
            None,
            eps=eps,
            norm=norm,
            loss="ce",
            n_iter=n_iter,
            rho=rho,
            x_start=x_start,
            loss_fn=loss_fn,
        )
    return x_best, best_loss
