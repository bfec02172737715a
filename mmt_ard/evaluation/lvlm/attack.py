"""Attacks on an LVLM's own output, RobustVLM's protocol: APGD on the language model's cross-entropy.

* untargeted: maximise the loss of a reference caption / answer (one APGD run per reference), keep per sample the
  adversarial image whose generated reply scores worst (`worst_case_batch`);
* targeted: minimise the loss of a chosen string so that the LVLM says it (`targeted_batch`).

The APGD itself is the library's (`mmt_ard.attacks.auto_pgd.apgd_objective`, the same step loop as the classifier attacks); the
attack state is fp32 in [0, 1] pixel space, before the processor's normalisation. Random starts are seeded per
sample (`sample_start`), so a sample's attack does not depend on the batch it is in, and a resumed run repeats it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...attacks.auto_pgd import apgd_objective
from ...attacks.random_streams import generators, per_sample_rand, stable_seed
from .model import LVLMAdapter


def sample_start(x: torch.Tensor, eps: float, seed: int, keys: list[str]) -> torch.Tensor:
    """A uniform random start in the L-inf eps-ball, clipped to [0, 1], drawn per sample from the stream of
    `(seed, key)` (`mmt_ard.attacks.random_streams`, as the classifier evaluation's starts)."""
    gens = generators([stable_seed(seed, key) for key in keys])
    noise = (2 * per_sample_rand(gens, tuple(x.shape[1:])) - 1) * eps  # (B, 3, H, W) on the CPU
    return (x + noise.to(device=x.device, dtype=x.dtype)).clamp(0.0, 1.0)


def text_attack(
    adapter: LVLMAdapter,
    x: torch.Tensor,
    prompts: list[str],
    texts: list[str],
    *,
    eps: float,
    n_iter: int,
    seed: int,
    keys: list[str],
    targeted: bool = False,
    x_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD (L-inf) on the LM cross-entropy of `texts[i]` after `prompts[i]`.

    Args:
        adapter: the LVLM.
        x: clean images `(B, 3, H, W)` in [0, 1].
        prompts: chat prompts.
        texts: per sample, the reference (untargeted: its loss is maximised) or the target (targeted: minimised).
        eps: L-inf budget in [0, 1] pixel units.
        n_iter: APGD iterations.
        seed: seed of the random starts.
        keys: per-sample identities for the random starts (sample id and attack name).
        targeted: minimise instead of maximise.
        x_init: start here instead of a random point (e.g. a previous attack's best image).

    Returns:
        `(x_adv, loss)`: `(B, 3, H, W)` fp32 within the budget and [0, 1], and the per-sample cross-entropy of the
        texts there `(B,)`.
    """
    sign = -1.0 if targeted else 1.0
    x = x.to(adapter.device).float()

    def objective(x_adv: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B,)
        return sign * adapter.loss(x_adv, prompts, texts)

    start = x_init.to(x.device) if x_init is not None else sample_start(x, eps, seed, keys)
    x_adv, best = apgd_objective(objective, x, eps=eps, norm="linf", n_iter=n_iter, x_start=start)
    return x_adv, sign * best


@dataclass
class WorstCase:
    """Per sample of a batch, the worst reply found so far.

    Args:
        x: `(B, 3, H, W)` the image that produced it (the clean image until an attack does worse).
        predictions: the replies.
        scores: their scores (CIDEr or VQA accuracy, x100).
        attacks: which attack produced each (`clean`, `ref0`, ..., `target:maybe`, `refine`).
        references: index of the reference that attack used (-1: none).
    """

    x: torch.Tensor
    predictions: list[str]
    scores: list[float]
    attacks: list[str]
    references: list[int]


def worst_case_batch(
    adapter: LVLMAdapter,
    x: torch.Tensor,
    prompts: list[str],
    references: list[list[str]],
    clean_predictions: list[str],
    clean_scores: list[float],
    score: Callable[[list[int], list[str]], list[float]],
    *,
    eps: float,
    n_iter: int,
    seed: int,
    keys: list[str],
    max_references: int,
    extra_targets: tuple[str, ...] = (),
    refine: bool = True,
    stop_below: float = 0.0,
    max_new_tokens: int = 20,
    postprocess: Callable[[str], str] = lambda s: s,
) -> WorstCase:
    """RobustVLM's ensemble on one batch: per sample, the lowest score over the clean image and every attack.

    The attacks run in order: APGD on reference 0, 1, ..., `max_references - 1`; then one targeted APGD per string
    of `extra_targets` (VQA: forcing `maybe` or `Word` makes most answers wrong); then, with `refine`, one more APGD
    from each sample's worst image so far with the reference that produced it. A sample leaves the ensemble once its
    score is at most `stop_below` (it cannot get worse in a way that counts).

    Args:
        score: `(positions in the batch, replies) -> scores`; the caller closes over the dataset (CIDEr's idf).
        (others): as in `text_attack`; `references[i]` are sample i's references.
    """
    n = x.shape[0]
    worst = WorstCase(x.detach().cpu().clone(), list(clean_predictions), list(clean_scores), ["clean"] * n, [-1] * n)
    plan: list[tuple[str, list[str | None], bool, list[int]]] = []
    for k in range(max_references):
        texts = [refs[k] if k < len(refs) else None for refs in references]
        plan.append((f"ref{k}", texts, False, [k] * n))
    for target in extra_targets:
        plan.append((f"target:{target}", [target] * n, True, [-1] * n))

    def run(name, texts, targeted, ref_index, x_init=None):
        idx = [i for i in range(n) if worst.scores[i] > stop_below and texts[i] is not None]
        if not idx:
            return
        x_adv, _ = text_attack(
            adapter,
            x[idx],
            [prompts[i] for i in idx],
            [texts[i] for i in idx],
            eps=eps,
            n_iter=n_iter,
            seed=seed,
            keys=[f"{keys[i]}|{name}" for i in idx],
            targeted=targeted,
            x_init=None if x_init is None else x_init[idx],
        )
        replies = [postprocess(r) for r in adapter.generate(x_adv, [prompts[i] for i in idx], max_new_tokens)]
        new_scores = score(idx, replies)
        for j, i in enumerate(idx):
            if new_scores[j] < worst.scores[i]:
                worst.x[i] = x_adv[j].detach().cpu()
                worst.predictions[i], worst.scores[i] = replies[j], float(new_scores[j])
                worst.attacks[i], worst.references[i] = name, ref_index[i]

    for name, texts, targeted, ref_index in plan:
        run(name, texts, targeted, ref_index)
    if refine:
        texts = [references[i][worst.references[i]] if worst.references[i] >= 0 else None for i in range(n)]
        run("refine", texts, False, list(worst.references), x_init=worst.x.to(x.device))
    return worst


def targeted_batch(
    adapter: LVLMAdapter,
    x: torch.Tensor,
    prompts: list[str],
    target: str,
    *,
    eps: float,
    n_iter: int,
    seed: int,
    keys: list[str],
    max_new_tokens: int,
) -> tuple[list[str], list[bool]]:
    """Targeted APGD forcing `target`: the replies on the adversarial images and, per sample, whether the reply
    contains the target (case-insensitive; RobustVLM's success criterion)."""
    x_adv, _ = text_attack(
        adapter, x, prompts, [target] * x.shape[0], eps=eps, n_iter=n_iter, seed=seed, keys=keys, targeted=True
    )
    replies = adapter.generate(x_adv, prompts, max_new_tokens)
    return replies, [target.lower() in r.lower() for r in replies]
