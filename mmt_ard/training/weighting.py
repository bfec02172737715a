"""Teacher weighting strategies: per-teacher, per-sample weights of the KL terms.

Each strategy maps confidences `c (K, B)` (each teacher's raw cosine similarity to the true class's text embedding
on its own input) and coefficients `beta (K,)` to weights `(K, B)`. Strategies with state expose
`state_dict()` / `load_state_dict()`; the trainer saves that state in every checkpoint.

* `fixed`      : `w_k[b] = beta_k`.
* `confidence` : `w_k[b] = beta_k * c_k[b]` (the authors' code).
* `sigmoid`    : `w_k[b] = beta_k * 2 * sigmoid(gamma * (c_k[b] - mu_k) / (sigma_k + 1e-6))` with EMA statistics
  `mu_k, sigma_k` of each teacher's confidence (our reconstruction of the abstract's adaptive sigmoid weighting).
* `mtard`      : MTARD's loss balancing, `w_k <- w_k - lr * (w_k - r_k / sum_j r_j)`, `r_k = L_k(t) / L_k(0)`,
  starting from `1/K` each; `w_k[b] = beta_k * w_k`.
"""

from __future__ import annotations

import torch


class WeightingStrategy:
    """Base class: stateless `fixed` weighting.

    Attributes:
        name: the strategy's name in configs.
        needs_confidence: whether `weights` reads the confidences (else the trainer may skip computing them).
    """

    name = "fixed"
    needs_confidence = False

    def weights(self, confidences: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        """`(K, B)` confidences, `(K,)` coefficients -> `(K, B)` weights (no gradient)."""
        return coefs.view(-1, 1).to(confidences) * torch.ones_like(confidences)

    def update(self, confidences: torch.Tensor, per_teacher_losses: torch.Tensor) -> None:
        """Observe one training step (after the loss was computed). Stateless strategies ignore it."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FixedWeighting(WeightingStrategy):
    name = "fixed"


class ConfidenceWeighting(WeightingStrategy):
    name = "confidence"
    needs_confidence = True

    def weights(self, confidences, coefs):
        return coefs.view(-1, 1).to(confidences) * confidences


class SigmoidWeighting(WeightingStrategy):
    """Adaptive sigmoid weighting with running confidence statistics.

    Args:
        gamma: sharpness of the sigmoid.
        momentum: EMA momentum of the running mean and std (0.99: slow).
    """

    name = "sigmoid"
    needs_confidence = True

    def __init__(self, gamma: float = 1.0, momentum: float = 0.99):
        self.gamma = float(gamma)
        self.momentum = float(momentum)
        self.mean: torch.Tensor | None = None  # (K,)
        self.std: torch.Tensor | None = None  # (K,)
        self.steps = 0

    def _observe(self, confidences: torch.Tensor) -> None:
        c = confidences.detach().float().cpu()
        mean, std = c.mean(1), c.std(1, unbiased=False)  # (K,)
        if self.mean is None or self.mean.shape != mean.shape:
            self.mean, self.std = mean, std
        else:
            m = self.momentum
            self.mean = m * self.mean + (1 - m) * mean
            self.std = m * self.std + (1 - m) * std
        self.steps += 1

    def weights(self, confidences, coefs):
        if self.mean is None or self.mean.shape[0] != confidences.shape[0]:
            self._observe(confidences)  # the first batch initialises the statistics (a no-op EMA after it)
        mean = self.mean.to(confidences).view(-1, 1)
        std = self.std.to(confidences).view(-1, 1)
        z = self.gamma * (confidences - mean) / (std + 1e-6)
        return coefs.view(-1, 1).to(confidences) * 2 * torch.sigmoid(z)

    def update(self, confidences, per_teacher_losses):
        self._observe(confidences)

    def state_dict(self):
        return {
            "gamma": self.gamma,
            "momentum": self.momentum,
            "mean": None if self.mean is None else self.mean.tolist(),
            "std": None if self.std is None else self.std.tolist(),
            "steps": self.steps,
        }

    def load_state_dict(self, state):
        self.gamma = float(state.get("gamma", self.gamma))
        self.momentum = float(state.get("momentum", self.momentum))
        self.mean = None if state.get("mean") is None else torch.tensor(state["mean"])
        self.std = None if state.get("std") is None else torch.tensor(state["std"])
        self.steps = int(state.get("steps", 0))


class MTARDWeighting(WeightingStrategy):
    """MTARD's normalised-loss balancing of teachers (Zhao et al., 2022), for any number of teachers.

    Args:
        lr: the balancing rate (0.025 in MTARD).
    """

    name = "mtard"

    def __init__(self, lr: float = 0.025):
        self.lr = float(lr)
        self.balance: torch.Tensor | None = None  # (K,) sums to 1
        self.initial_losses: torch.Tensor | None = None  # (K,) L_k(0)

    def weights(self, confidences, coefs):
        k = confidences.shape[0]
        if self.balance is None or self.balance.shape[0] != k:
            self.balance = torch.full((k,), 1.0 / k)
        return (coefs.view(-1).to(confidences) * self.balance.to(confidences)).view(-1, 1) * torch.ones_like(
            confidences
        )

    def update(self, confidences, per_teacher_losses):
        losses = per_teacher_losses.detach().float().cpu()
        if self.initial_losses is None:
            self.initial_losses = losses.clamp_min(1e-12)
            return
        ratio = losses / self.initial_losses  # r_k
        target = ratio / ratio.sum().clamp_min(1e-12)
        self.balance = self.balance - self.lr * (self.balance - target)

    def state_dict(self):
        return {
            "lr": self.lr,
            "balance": None if self.balance is None else self.balance.tolist(),
            "initial_losses": None if self.initial_losses is None else self.initial_losses.tolist(),
        }

    def load_state_dict(self, state):
        self.lr = float(state.get("lr", self.lr))
        self.balance = None if state.get("balance") is None else torch.tensor(state["balance"])
        self.initial_losses = None if state.get("initial_losses") is None else torch.tensor(state["initial_losses"])


WEIGHTINGS = {cls.name: cls for cls in (FixedWeighting, ConfidenceWeighting, SigmoidWeighting, MTARDWeighting)}


def make_weighting(name: str, **kwargs) -> WeightingStrategy:
    """Build a strategy by name; `kwargs` go to its constructor (unknown ones are dropped)."""
    if name not in WEIGHTINGS:
        raise ValueError(f"`weighting`={name!r} is not a weighting strategy: use one of {sorted(WEIGHTINGS)}.")
    cls = WEIGHTINGS[name]
    import inspect

    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted and v is not None})
