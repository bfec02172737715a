"""Projected gradient descent (Madry et al., ICLR 2018) in [0,1] pixel space, as pure functions.

Threat models: L-inf and L2 balls of radius `eps` around `x`, intersected with the image box [0,1]. Options: uniform
random start inside the ball, and the sign-momentum update of the MMT-ARD authors' code
(`v <- m v + sign(g); v <- sign(v); delta <- delta + alpha v`, m = 0.9).

The attacked model is any module mapping `(B, 3, H, W)` pixels in [0,1] to a `ZeroShotOutput`-like object (with
`.logits`) or to plain `(B, C)` logits, the same convention as `mmt_ard.attacks.auto_pgd` (see `models.logits_of`); the inner
loss is a callable `(output) -> (B,)` per-sample loss to *maximise* (see the `*_inner_loss` factories below).
Gradients are taken with `torch.autograd.grad` w.r.t. the perturbation only, so parameter `.grad` stays untouched; the
model is put in eval mode for the attack and its mode restored afterwards; it works under `torch.no_grad()` (e.g.
inside `Trainer.evaluate`).

>>> x_adv = pgd(student, x, ce_inner_loss(labels), eps=2 / 255, step_size=1 / 255, steps=10)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models import logits_of
from .random_streams import per_sample_rand

NORMS = ("linf", "l2")

InnerLoss = Callable[[object], torch.Tensor]


def check_attack_args(eps: float, step_size: float, steps: int, norm: str, prefix: str = "attack_") -> None:
    """Raise a clear `ValueError` for an invalid threat model."""
    if norm not in NORMS:
        raise ValueError(f"`{prefix}norm`={norm!r} is not supported: use one of {list(NORMS)}.")
    if not (0.0 <= float(eps) <= 1.0) and norm == "linf":
        raise ValueError(
            f"`{prefix}eps`={eps} is outside [0, 1]: budgets are in [0,1] pixel units, e.g. 2/255 = {2 / 255:.5f}."
        )
    if float(eps) < 0:
        raise ValueError(f"`{prefix}eps`={eps} is negative: use a budget >= 0.")
    if int(steps) < 0:
        raise ValueError(f"`{prefix}steps`={steps} is negative: use 0 (no attack) or a positive number of steps.")
    if float(step_size) < 0:
        raise ValueError(f"`{prefix}step_size`={step_size} is negative: use a positive step, e.g. eps / 4.")


def _lp_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project `delta` onto the `eps`-ball of `norm`, then so that `x + delta` stays in [0,1]."""
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * torch.clamp(eps / _lp_norm(delta), max=1.0)
    return (x + delta).clamp(0, 1) - x


def random_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | Sequence[torch.Generator] | None = None
) -> torch.Tensor:
    """A uniformly random perturbation in the ball (L2: uniform direction, radius `eps * u^(1/d)`).

    With one `generator` (or none: the device RNG of `x`, seeded by the Trainer and saved in its checkpoints), the
    noise is drawn where the generator lives, so on a GPU nothing is drawn on the CPU or copied from host memory.
    With a sequence of generators, one per sample (`random_streams.generators`, what evaluation uses), sample `i`'s
    noise comes from `generator[i]` alone, on the CPU, and is then moved to `x`'s device: a sample starts from the
    same point whatever batch it is in.
    """
    per_sample = generator is not None and not isinstance(generator, torch.Generator)
    if per_sample and len(generator) != x.shape[0]:
        raise ValueError(f"{len(generator)} per-sample generators for a batch of {x.shape[0]}: give one per sample.")

    def draw(shape: tuple[int, ...], normal: bool = False) -> torch.Tensor:  # (B, *shape)
        if per_sample:
            return per_sample_rand(generator, shape, normal)
        device = generator.device if generator is not None else x.device
        return (torch.randn if normal else torch.rand)((x.shape[0], *shape), generator=generator, device=device)

    if norm == "linf":
        delta = (draw(tuple(x.shape[1:])) * 2 - 1) * eps
    else:
        d = x[0].numel()
        direction = draw(tuple(x.shape[1:]), normal=True)
        radius = draw(()) ** (1.0 / d) * eps  # (B,)
        delta = direction / _lp_norm(direction) * radius.view(-1, 1, 1, 1)
    return project(delta.to(device=x.device, dtype=x.dtype), x, eps, norm)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put `model` in eval mode and restore its (and its submodules') train flags afterwards."""
    flags = {m: m.training for m in model.modules()} if isinstance(model, nn.Module) else {}
    if isinstance(model, nn.Module):
        model.eval()
    try:
        yield model
    finally:
        for m, flag in flags.items():
            m.training = flag


def pgd(
    model: Callable,
    x: torch.Tensor,
    inner_loss: InnerLoss,
    *,
    eps: float,
    step_size: float,
    steps: int,
    norm: str = "linf",
    random_init: bool = True,
    momentum: float | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Maximise `inner_loss(model(x + delta))` over the `eps`-ball.

    Args:
        model: maps `(B, 3, H, W)` pixels in [0,1] to an output that `inner_loss` reads.
        x: `(B, 3, H, W)` clean images in [0,1].
        inner_loss: `(output) -> (B,)` per-sample loss to maximise.
        eps: radius of the ball in [0,1] pixel units (0 returns `x` unchanged).
        step_size: `alpha`, the step per iteration.
        steps: number of iterations.
        norm: `"linf"` (signed steps) or `"l2"` (normalised-gradient steps).
        random_init: start from a uniform random point of the ball.
        momentum: `None` for plain PGD; a float `m` for the authors' sign-momentum update.
        generator: `torch.Generator` for the random start, best on `x`'s device (the device's global RNG otherwise),
            or one CPU generator per sample (evaluation: each sample's start independent of its batch).
        autocast_dtype: run the forward passes under autocast in this dtype (training only; never in evaluation).

    Returns:
        `(B, 3, H, W)` adversarial images in [0,1], detached, with `||x_adv - x|| <= eps`.
    """
    check_attack_args(eps, step_size, steps, norm)
    x = x.detach()
    if eps == 0 or steps == 0:
        return x.clone()
    delta = random_start(x, eps, norm, generator) if random_init else torch.zeros_like(x)
    velocity = torch.zeros_like(x)
    device_type = x.device.type
    autocast = (
        torch.autocast(device_type=device_type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with eval_mode(model), torch.enable_grad():
        for _ in range(int(steps)):
            delta.requires_grad_(True)
            with autocast:
                loss = inner_loss(model(x + delta)).float().sum()
            (grad,) = torch.autograd.grad(loss, delta)
            grad = grad.float()
            with torch.no_grad():
                if norm == "linf":
                    direction = grad.sign()
                else:
                    direction = grad / _lp_norm(grad)
                if momentum is not None:
                    # the authors' update keeps the *signed* velocity: v <- sign(m v + sign(g))
                    velocity = momentum * velocity + direction
                    velocity = velocity.sign() if norm == "linf" else velocity / _lp_norm(velocity)
                    direction = velocity
                delta = project(delta.detach() + step_size * direction.to(delta.dtype), x, eps, norm)
    return (x + delta).detach()


# ---- inner losses: (model output) -> (B,) to maximise ----


def kl_inner_loss(target_probs: torch.Tensor, temperature: float = 1.0) -> InnerLoss:
    """`KL(target || softmax(z / tau))` per sample: push the prediction away from a target distribution `(B, C)`."""
    target = target_probs.detach()

    def loss(out) -> torch.Tensor:
        log_q = F.log_softmax(logits_of(out).float() / temperature, dim=-1)
        return (target * (target.clamp_min(1e-12).log() - log_q)).sum(-1)

    return loss


def ce_inner_loss(labels: torch.Tensor) -> InnerLoss:
    """Cross-entropy to the true labels `(B,)`, per sample."""

    def loss(out) -> torch.Tensor:
        return F.cross_entropy(logits_of(out).float(), labels, reduction="none")

    return loss


def embedding_l2_inner_loss(target_embeds: torch.Tensor) -> InnerLoss:
    """Squared L2 distance of the (unnormalised) image embedding to a target `(B, D)` (FARE's inner loss)."""
    target = target_embeds.detach().float()

    def loss(out) -> torch.Tensor:
        if not hasattr(out, "image_embeds"):
            raise TypeError(
                f"The `embedding-l2` inner loss needs a model output with `image_embeds`, got {type(out).__name__}: "
                "attack a `ZeroShotCLIP` (or use the `kl`/`ce` inner loss, which also take plain logits)."
            )
        return (out.image_embeds.float() - target).pow(2).sum(-1)

    return loss
