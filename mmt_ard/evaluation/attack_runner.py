"""One attack on one batch, and batched runs of it: the building block of the evaluation and of its checks.

Random starts come from per-sample streams (`SampleKeys`): a sample's outcome does not depend on its batch.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attacks.auto_pgd import apgd_worst_case
from ..attacks.projected_gradient import ce_inner_loss, eval_mode, pgd
from ..attacks.random_streams import generators
from .protocols import Protocol
from .sample_keys import SampleKeys

MIN_CLASSES = {"apgd-t": 4, "apgd-dlr": 3}  # the DLR losses read the 3rd / 4th largest logits


class LogitsModel(nn.Module):
    """`ZeroShotCLIP` seen as a plain `pixels -> (B, C) logits` module (what APGD attacks)."""

    def __init__(self, zero_shot: nn.Module):
        super().__init__()
        self.zero_shot = zero_shot

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.zero_shot(pixels)
        return (out.logits if hasattr(out, "logits") else out).float()


def attack_batch(
    zero_shot: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: str,
    eps: float,
    protocol: Protocol,
    active: torch.Tensor | None = None,
    seed: int = 0,
    pgd_steps: int | None = None,
    pgd_step_size: float | None = None,
    n_iter: int | None = None,
    keys: SampleKeys | None = None,
) -> torch.Tensor:
    """Robust mask `(B,)` of one attack: True where the image is in `active` (default: all) and still correctly
    classified after the attack. Inactive images come back False and are not attacked.

    Args:
        zero_shot: the model (pixels in [0,1] -> output with `.logits`), its text head set.
        x: `(B, 3, H, W)` images in [0,1]; y: `(B,)` labels.
        attack: `pgd`, `apgd-ce`, `apgd-t` or `apgd-dlr`.
        eps: budget in [0,1] pixel units.
        protocol: iterations, restarts, targets, norm and PGD step of the protocol.
        active: `(B,)` bool, the images to attack.
        seed: seed of one random stream for the whole batch (only without `keys`: the outcome then depends on the
            batch).
        pgd_steps / pgd_step_size / n_iter: override the protocol's (used by the checks).
        keys: `(B,)` sample identities: each sample's random starts come from its own streams, keyed by
            `(seed, dataset, index, attack, eps)` and the restart, so its outcome does not depend on the batch.
    """
    if keys is not None and len(keys) != len(y):
        raise ValueError(f"{len(keys)} sample keys for a batch of {len(y)}: give one per sample.")
    active = torch.ones_like(y, dtype=torch.bool) if active is None else active.clone()
    robust = torch.zeros_like(active)
    idx = active.nonzero()[:, 0]
    if idx.numel() == 0:
        return robust
    xs, ys = x[idx], y[idx]
    seeds = None if keys is None else keys.subset(idx.tolist()).seeds(attack, eps)  # (n,) of the attacked samples
    steps = protocol.pgd_steps if pgd_steps is None else pgd_steps
    step_size = protocol.step_size(eps) if pgd_step_size is None else pgd_step_size
    logits_model = LogitsModel(zero_shot)
    if attack == "pgd":  # eps = 0 goes through the attack code too (it returns the clean images)
        x_adv = pgd(
            zero_shot,
            xs,
            ce_inner_loss(ys),
            eps=eps,
            step_size=step_size,
            steps=steps,
            norm=protocol.norm,
            random_init=True,
            generator=generators(seeds) if seeds is not None else torch.Generator(device=xs.device).manual_seed(seed),
        )
        survived = torch.ones_like(ys, dtype=torch.bool)
    else:
        x_adv, survived = apgd_worst_case(
            logits_model,
            xs,
            ys,
            eps=eps,
            norm=protocol.norm,
            attacks=(attack,),
            n_iter=protocol.n_iter if n_iter is None else n_iter,
            n_restarts=protocol.n_restarts,
            n_target_classes=protocol.n_target_classes,
            seed=seed,
            sample_seeds=seeds,
        )
    with torch.no_grad(), eval_mode(zero_shot):
        correct = logits_model(x_adv).argmax(-1) == ys
    robust[idx] = correct & survived.to(correct.device)
    return robust


def attacks_for(protocol: Protocol, num_classes: int) -> tuple[list[str], list[str]]:
    """The protocol's attacks that apply to a `num_classes`-way task, and the ones skipped."""
    used = [a for a in protocol.attacks if num_classes >= MIN_CLASSES.get(a, 2)]
    skipped = [a for a in protocol.attacks if a not in used]
    if not used:
        used = ["apgd-ce"]  # e.g. APGD-T alone on a 2-class set: APGD-CE is the standard fallback
    return used, skipped


@torch.no_grad()
def clean_predictions(zero_shot: nn.Module, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """`(N,)` predicted classes of the clean images `x` `(N, 3, H, W)` (on any device), in batches."""
    preds = []
    with eval_mode(zero_shot):
        for start in range(0, len(x), batch_size):
            preds.append(LogitsModel(zero_shot)(x[start : start + batch_size].to(device)).argmax(-1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def run_attack(
    zero_shot: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: str,
    eps: float,
    protocol: Protocol,
    keys: SampleKeys | None = None,
    **kwargs,
) -> torch.Tensor:
    """`attack_batch` over `x` in batches of `protocol.batch_size`; `(N,)` robust mask on the CPU.

    Args:
        keys: the samples' identities (default: numbered by position in `x`, dataset `""`, the protocol's seed);
            the outcome of each sample is the same for any `protocol.batch_size`.
        **kwargs: `attack_batch`'s overrides (`active`, `pgd_steps`, `pgd_step_size`, `n_iter`).
    """
    keys = keys if keys is not None else SampleKeys.of(protocol.seed, "", range(len(y)))
    active = kwargs.pop("active", None)
    masks = []
    for start in range(0, len(y), protocol.batch_size):
        end = start + protocol.batch_size
        part = None if active is None else active[start:end]
        masks.append(
            attack_batch(
                zero_shot,
                x[start:end],
                y[start:end],
                attack,
                eps,
                protocol,
                part,
                keys=keys.subset(range(start, min(end, len(y)))),
                **kwargs,
            ).cpu()
        )
    return torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool)
