"""Gradient-masking checks (method.md section 5), run on the first `check_samples` images of a dataset.

A robust accuracy is only as good as the attack behind it. These checks catch the usual ways an evaluation
overestimates robustness (Carlini et al. 2019, "On evaluating adversarial robustness"; Croce & Hein 2020):

* `eps_zero_equals_clean`: every attack at eps = 0 gives the clean predictions (catches randomised or train-mode
  models and a broken pipeline);
* `monotone_in_steps`: PGD with 4x the steps is not weaker than the short PGD;
* `monotone_in_eps`: robust accuracy does not rise with the budget (the protocol's own numbers from eps 0 = clean
  upwards, and short PGD at eps/2, eps, 2 eps);
* `apgd_at_least_as_strong_as_pgd`: APGD-CE, and the protocol's worst case, are not weaker than PGD;
* `noise_far_weaker_than_attack`: uniform noise of the same budget costs at most `noise_ratio` of what the attack
  costs, and fools at most 1 % of the images (at least one image) that the attack did not fool (an attack no
  better than noise is not following gradients);
* `nonzero_gradients`: no image has an all-zero input gradient of the margin loss `max_{c != y} z_c - z_y` (unlike
  the cross-entropy, this loss does not saturate on confident images, so a zero means a masked gradient).

Comparisons allow a slack of `max(check_tolerance, 3 / n)` in accuracy. Any failed check flags the result.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..attacks import eval_mode, random_start
from .attack_runner import LogitsModel, attacks_for, run_attack
from .protocols import Protocol, format_eps


def _acc(mask: torch.Tensor) -> float:
    return int(mask.sum()) / mask.numel() if mask.numel() else 0.0


def _check(passed: bool, message: str, **values) -> dict:
    return {"passed": bool(passed), "message": message, **values}


def margin_loss_gradients(zero_shot: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`(N,)` max-abs input gradient per image of the margin loss `max_{c != y} z_c - z_y`."""
    model = LogitsModel(zero_shot)
    out = []
    with eval_mode(zero_shot), torch.enable_grad():
        for start in range(0, len(y), batch_size):
            xb = x[start : start + batch_size].detach().clone().requires_grad_(True)
            yb = y[start : start + batch_size]
            logits = model(xb)  # (B, C)
            true = logits.gather(1, yb[:, None])[:, 0]
            other = logits.scatter(1, yb[:, None], float("-inf")).amax(1)
            (grad,) = torch.autograd.grad((other - true).sum(), xb)
            out.append(grad.flatten(1).abs().amax(1).detach().cpu())
    return torch.cat(out)


def uniform_noise(x: torch.Tensor, eps: float, norm: str, seed: int) -> torch.Tensor:
    """`x` plus uniform noise in the `eps`-ball (L-inf: per pixel in [-eps, eps]; L2: uniform in the ball)."""
    generator = torch.Generator().manual_seed(seed)
    return (x + random_start(x, eps, norm, generator)).clamp(0, 1)


def run_checks(
    zero_shot: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    protocol: Protocol,
    clean_correct: torch.Tensor,
    robust_masks: dict[str, torch.Tensor],
    full_results: dict | None = None,
    progress: bool = False,
) -> dict:
    """Run every check; returns `{"checks": {name: {...}}, "flagged": bool, "failed_checks": [names]}`.

    Args:
        zero_shot: the evaluated model, its text head set for this dataset.
        x: `(n, 3, H, W)` check images in [0,1]; y: `(n,)` labels.
        protocol: the protocol (its attacks, largest eps, check settings).
        clean_correct: `(n,)` clean correctness of these images from the main run.
        robust_masks: per eps key (`"2/255"`), `(n,)` worst-case robust masks of these images from the main run.
        full_results: the main run's `clean_accuracy`, `robust_accuracy` (eps key -> worst case) and
            `num_samples` on the whole subset (for the eps-monotonicity of the reported numbers).
        progress: print each check as it finishes.
    """
    n = len(y)
    tol = max(protocol.check_tolerance, 3.0 / max(n, 1))
    eps = max(protocol.eps)
    key = format_eps(eps)
    num_classes = int(zero_shot.num_classes) if hasattr(zero_shot, "num_classes") else None
    attacks, _ = attacks_for(protocol, num_classes or 10)
    clean = _acc(clean_correct)
    worst = _acc(robust_masks[key].cpu())
    checks: dict[str, dict] = {}

    # 1. eps = 0 gives the clean predictions, through every attack's code path
    eps0 = {a: run_attack(zero_shot, x, y, a, 0.0, protocol) for a in attacks}
    mismatches = {a: int((m != clean_correct.cpu()).sum()) for a, m in eps0.items()}
    allowed = n // 200  # near-ties may flip when batches are composed differently (GPU)
    checks["eps_zero_equals_clean"] = _check(
        all(v <= allowed for v in mismatches.values()),
        "accuracy at eps 0 equals clean accuracy",
        clean_accuracy=clean,
        eps0_accuracy={a: _acc(m) for a, m in eps0.items()},
        mismatched_images=mismatches,
    )

    # 2. more PGD steps are not weaker (Madry's step 2.5 eps / steps, same random starts)
    short_steps, long_steps = protocol.check_steps, 4 * protocol.check_steps
    pgd_short = run_attack(
        zero_shot, x, y, "pgd", eps, protocol, pgd_steps=short_steps, pgd_step_size=2.5 * eps / short_steps
    )
    pgd_long = run_attack(
        zero_shot, x, y, "pgd", eps, protocol, pgd_steps=long_steps, pgd_step_size=2.5 * eps / long_steps
    )
    acc_short, acc_long = _acc(pgd_short), _acc(pgd_long)
    checks["monotone_in_steps"] = _check(
        acc_long <= acc_short + tol,
        f"PGD-{long_steps} robust accuracy <= PGD-{short_steps} (+{tol:.3f})",
        **{f"pgd{short_steps}_accuracy": acc_short, f"pgd{long_steps}_accuracy": acc_long, "eps": key},
    )

    # 3. larger budgets are not weaker: the reported numbers, and short PGD at eps/2, eps, 2 eps
    sequence = []
    if full_results is not None:
        sequence = [("0", full_results["clean_accuracy"])] + list(full_results["robust_accuracy"].items())
    reported_ok = all(b <= a + tol for (_, a), (_, b) in itertools.pairwise(sequence))
    pgd_half = _acc(
        run_attack(
            zero_shot, x, y, "pgd", eps / 2, protocol, pgd_steps=short_steps, pgd_step_size=2.5 * eps / 2 / short_steps
        )
    )
    double = min(2 * eps, 1.0) if protocol.norm == "linf" else 2 * eps
    pgd_double = _acc(
        run_attack(
            zero_shot, x, y, "pgd", double, protocol, pgd_steps=short_steps, pgd_step_size=2.5 * double / short_steps
        )
    )
    pgd_ok = acc_short <= pgd_half + tol and pgd_double <= acc_short + tol
    checks["monotone_in_eps"] = _check(
        reported_ok and pgd_ok,
        "robust accuracy does not rise with eps",
        reported={k: v for k, v in sequence},
        pgd={format_eps(eps / 2): pgd_half, key: acc_short, format_eps(double): pgd_double},
    )

    # 4. APGD-CE and the protocol's worst case are at least as strong as PGD
    apgd_ce = _acc(run_attack(zero_shot, x, y, "apgd-ce", eps, protocol))
    best_pgd = min(acc_short, acc_long)
    checks["apgd_at_least_as_strong_as_pgd"] = _check(
        apgd_ce <= best_pgd + tol and worst <= best_pgd + tol,
        f"APGD-CE and the protocol's worst case <= best PGD (+{tol:.3f})",
        apgd_ce_accuracy=apgd_ce,
        protocol_worst_case_accuracy=worst,
        pgd_accuracy=best_pgd,
        eps=key,
    )

    # 5. uniform noise of the same budget hurts far less than the attack, and fools no image the attack could not
    with torch.no_grad(), eval_mode(zero_shot):
        survives = torch.ones(n, dtype=torch.bool)
        for draw in range(protocol.noise_draws):
            noisy = uniform_noise(x, eps, protocol.norm, protocol.seed + 7919 * (draw + 1))
            preds = torch.cat(
                [
                    LogitsModel(zero_shot)(noisy[s : s + protocol.batch_size]).argmax(-1).cpu()
                    for s in range(0, n, protocol.batch_size)
                ]
            )
            survives &= preds == y.cpu()
    noise_acc = _acc(survives)
    drop_noise, drop_attack = clean - noise_acc, clean - worst
    noise_only = int((robust_masks[key].cpu() & ~survives).sum())  # fooled by noise, not by the attack
    allowed_noise_only = max(1, int(0.01 * n))
    checks["noise_far_weaker_than_attack"] = _check(
        drop_noise <= protocol.noise_ratio * drop_attack + tol and noise_only <= allowed_noise_only,
        f"accuracy drop under uniform noise <= {protocol.noise_ratio} x drop under attack (+{tol:.3f}), and at most "
        f"{allowed_noise_only} image(s) fooled by noise but not by the attack",
        clean_accuracy=clean,
        noise_accuracy=noise_acc,
        attack_accuracy=worst,
        fooled_by_noise_only=noise_only,
        noise_draws=protocol.noise_draws,
        eps=key,
    )

    # 6. no zero input gradients (at the clean images and at a noisy point)
    grad_clean = margin_loss_gradients(zero_shot, x, y, protocol.batch_size)
    grad_noisy = margin_loss_gradients(
        zero_shot, uniform_noise(x, eps, protocol.norm, protocol.seed + 1), y, protocol.batch_size
    )
    zero = (grad_clean == 0) | (grad_noisy == 0)
    zero_fraction = _acc(zero)
    checks["nonzero_gradients"] = _check(
        zero_fraction <= protocol.max_zero_grad_fraction,
        f"fraction of images with an all-zero input gradient <= {protocol.max_zero_grad_fraction}",
        zero_gradient_fraction=zero_fraction,
        median_max_abs_gradient=float(grad_clean.median()) if n else 0.0,
    )

    failed = [name for name, c in checks.items() if not c["passed"]]
    if progress and failed:
        print(f"[mmt-ard-eval] gradient-masking checks failed: {failed}")
    return {
        "checks": checks,
        "flagged": bool(failed),
        "failed_checks": failed,
        "check_samples": n,
        "check_tolerance": tol,
    }
