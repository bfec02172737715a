"""Which samples a batch holds, as keys of their random streams: `(seed, dataset, sample index)` each.

Every random draw of an evaluation (PGD and APGD random starts, each restart, the gradient-masking checks' noise)
comes from the stream of `(seed, dataset, index, attack, eps)` plus the restart (`mmt_ard.attacks.random_streams`), so a
sample's outcome is the same for any batch size, order, subset, number of processes, and after a resume.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..attacks.random_streams import stable_seed
from .protocols import format_eps


@dataclass(frozen=True)
class SampleKeys:
    """The identity of each sample of a batch (or of a whole dataset).

    Args:
        seed: the protocol's seed.
        dataset: the dataset's name (a result key).
        indices: each sample's row in the split (`EvalData.indices`).
    """

    seed: int
    dataset: str
    indices: tuple[int, ...]

    @classmethod
    def of(cls, seed: int, dataset: str, indices: Iterable[int]) -> SampleKeys:
        return cls(int(seed), str(dataset), tuple(int(i) for i in indices))

    def __len__(self) -> int:
        return len(self.indices)

    def seeds(self, draw: str, eps: float) -> list[int]:
        """`(B,)` base seeds of one kind of draw (an attack's name, `"noise"`, ...) at budget `eps`."""
        key = format_eps(eps)
        return [stable_seed(self.seed, self.dataset, i, draw, key) for i in self.indices]

    def subset(self, positions: Iterable[int]) -> SampleKeys:
        """The keys of the samples at `positions` (in that order)."""
        return SampleKeys(self.seed, self.dataset, tuple(self.indices[int(p)] for p in positions))
