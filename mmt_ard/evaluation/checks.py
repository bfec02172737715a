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

`check_measurements` computes one value per image (every random draw from the image's own stream), which
`judge_checks` turns into the checks; between the two, the images may be split over processes (`evaluate_on_data`).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..attacks.projected_gradient import eval_mode, random_start
from ..attacks.random_streams import generators
from .attack_runner import LogitsModel, attacks_for, run_attack
from .protocols import Protocol, format_eps
from .sample_keys import SampleKeys


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


def uniform_noise(
    x: torch.Tensor, eps: float, norm: str, seed: int | None = None, generator: list[torch.Generator] | None = None
) -> torch.Tensor:
    """`x` plus uniform noise in the `eps`-ball (L-inf: per pixel in [-eps, eps]; L2: uniform in the ball).

    Args:
        seed: one stream for the whole batch; or
        generator: one generator per image (`random_streams.generators`): each image's noise its own.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(seed or 0)
    return (x + random_start(x, eps, norm, generator)).clamp(0, 1)


# the per-sample measurements the checks are decided on; every key holds an `(n,)` tensor
def check_measurements(
    zero_shot: nn.Module, x: torch.Tensor, y: torch.Tensor, *, protocol: Protocol, keys: SampleKeys | None = None
) -> dict[str, torch.Tensor]:
    """Run the checks' attacks, noise and gradients on `x`; one value per image (what `judge_checks` reads).

    Each image's result depends on the image alone (its random draws come from its `keys`), so the measurements of
    a dataset can be split over processes and batches and put back together in any order.

    Args:
        zero_shot: the evaluated model, its text head set for this dataset.
        x: `(n, 3, H, W)` check images in [0,1]; y: `(n,)` labels.
        protocol: the protocol (its attacks, largest eps, check settings).
        keys: the images' identities (default: numbered by position, dataset `""`).
    """
    n = len(y)
    keys = keys if keys is not None else SampleKeys.of(protocol.seed, "", range(n))
    eps = max(protocol.eps)
    num_classes = int(zero_shot.num_classes) if hasattr(zero_shot, "num_classes") else None
    attacks, _ = attacks_for(protocol, num_classes or 10)
    out: dict[str, torch.Tensor] = {}
    # 1. eps = 0 through every attack's code path
    for a in attacks:
        out[f"eps0/{a}"] = run_attack(zero_shot, x, y, a, 0.0, protocol, keys)
    # 2. PGD, short and 4x longer (Madry's step 2.5 eps / steps; same random starts: the keys of eps)
    short_steps, long_steps = protocol.check_steps, 4 * protocol.check_steps
    for name, steps in (("pgd_short", short_steps), ("pgd_long", long_steps)):
        out[name] = run_attack(
            zero_shot, x, y, "pgd", eps, protocol, keys, pgd_steps=steps, pgd_step_size=2.5 * eps / steps
        )
    # 3. short PGD at eps / 2 and 2 eps
    double = min(2 * eps, 1.0) if protocol.norm == "linf" else 2 * eps
    for name, budget in (("pgd_half", eps / 2), ("pgd_double", double)):
        out[name] = run_attack(
            zero_shot,
            x,
            y,
            "pgd",
            budget,
            protocol,
            keys,
            pgd_steps=short_steps,
            pgd_step_size=2.5 * budget / short_steps,
        )
    # 4. APGD-CE
    out["apgd_ce"] = run_attack(zero_shot, x, y, "apgd-ce", eps, protocol, keys)
    # 5. uniform noise of the same budget: an image survives if it survives every draw
    noise_seeds = keys.seeds("uniform-noise", eps)
    with torch.no_grad(), eval_mode(zero_shot):
        survives = torch.ones(n, dtype=torch.bool)
        for draw in range(protocol.noise_draws):
            noisy = uniform_noise(x, eps, protocol.norm, generator=generators(noise_seeds, stream=draw))
            preds = (
                torch.cat(
                    [
                        LogitsModel(zero_shot)(noisy[s : s + protocol.batch_size]).argmax(-1).cpu()
                        for s in range(0, n, protocol.batch_size)
                    ]
                )
                if n
                else torch.zeros(0, dtype=torch.long)
            )
            survives &= preds == y.cpu()
    out["noise_survives"] = survives
    # 6. input gradients of the margin loss, at the clean images and at a noisy point
    out["grad_clean"] = margin_loss_gradients(zero_shot, x, y, protocol.batch_size)
    noisy = uniform_noise(x, eps, protocol.norm, generator=generators(keys.seeds("gradient-noise", eps)))
    out["grad_noisy"] = margin_loss_gradients(zero_shot, noisy, y, protocol.batch_size)
    return out


def judge_checks(
    measured: dict[str, torch.Tensor],
    *,
    protocol: Protocol,
    clean_correct: torch.Tensor,
    robust_masks: dict[str, torch.Tensor],
    full_results: dict | None = None,
    progress: bool = False,
) -> dict:
    """Decide every check from the per-image `measured` values (`check_measurements`, all check images, in order).

    Returns `{"checks": {name: {...}}, "flagged": bool, "failed_checks": [names], "check_samples", "check_tolerance"}`.
    """
    n = len(clean_correct)
    tol = max(protocol.check_tolerance, 3.0 / max(n, 1))
    eps = max(protocol.eps)
    key = format_eps(eps)
    clean_correct = clean_correct.cpu()
    clean = _acc(clean_correct)
    worst = _acc(robust_masks[key].cpu())
    checks: dict[str, dict] = {}

    # 1. eps = 0 gives the clean predictions, through every attack's code path
    eps0 = {name.split("/", 1)[1]: m for name, m in measured.items() if name.startswith("eps0/")}
    mismatches = {a: int((m != clean_correct).sum()) for a, m in eps0.items()}
    allowed = n // 200  # near-ties may flip when batches are composed differently (GPU)
    checks["eps_zero_equals_clean"] = _check(
        all(v <= allowed for v in mismatches.values()),
        "accuracy at eps 0 equals clean accuracy",
        clean_accuracy=clean,
        eps0_accuracy={a: _acc(m) for a, m in eps0.items()},
        mismatched_images=mismatches,
    )

    # 2. more PGD steps are not weaker
    short_steps, long_steps = protocol.check_steps, 4 * protocol.check_steps
    acc_short, acc_long = _acc(measured["pgd_short"]), _acc(measured["pgd_long"])
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
    pgd_half, pgd_double = _acc(measured["pgd_half"]), _acc(measured["pgd_double"])
    double = min(2 * eps, 1.0) if protocol.norm == "linf" else 2 * eps
    pgd_ok = acc_short <= pgd_half + tol and pgd_double <= acc_short + tol
    checks["monotone_in_eps"] = _check(
        reported_ok and pgd_ok,
        "robust accuracy does not rise with eps",
        reported={k: v for k, v in sequence},
        pgd={format_eps(eps / 2): pgd_half, key: acc_short, format_eps(double): pgd_double},
    )

    # 4. APGD-CE and the protocol's worst case are at least as strong as PGD
    apgd_ce = _acc(measured["apgd_ce"])
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
    survives = measured["noise_survives"]
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
    grad_clean = measured["grad_clean"]
    zero = (grad_clean == 0) | (measured["grad_noisy"] == 0)
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
    keys: SampleKeys | None = None,
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
        keys: the images' identities for their random streams (default: numbered by position).
    """
    measured = check_measurements(zero_shot, x, y, protocol=protocol, keys=keys)
    return judge_checks(
        measured,
        protocol=protocol,
        clean_correct=clean_correct,
        robust_masks=robust_masks,
        full_results=full_results,
        progress=progress,
    )
