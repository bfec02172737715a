"""Per-sample random streams: random draws that belong to one sample, whatever batch it is evaluated in.

An evaluation attack draws random starts (and its checks draw noise). Drawn from one generator per batch, a sample's
draw depends on the batch size, on its place in the batch, on which other samples are attacked with it and on how
many processes share the work, so the robust count changes with any of them. Here every draw of a sample comes from
its own `torch.Generator`, seeded by a stable hash of a key that names the draw, e.g. `(seed, dataset, sample index,
attack, eps)` plus the restart:

>>> base = stable_seed(0, "cifar10", 1234, "apgd-ce", "2/255")   # one sample, one attack, one budget
>>> generators([base], stream=3)                                  # its 4th restart's generator

The hash is BLAKE2b of the key's JSON text (not Python's `hash`, which is salted per process), so keys give the same
streams in every process, on every machine and in every run. The generators live on the CPU: draws are made there,
stacked and then moved to the device, so a GPU run starts from the same points as a CPU run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch

_MASK = (1 << 63) - 1  # seeds in [0, 2^63): valid for `torch.Generator.manual_seed` and for JSON


def stable_seed(*parts) -> int:
    """A 63-bit seed from a key of ints, floats and strings; the same in every process and run.

    Args:
        *parts: the key, e.g. `(seed, dataset, index, attack, eps)`; JSON-serialisable values.
    """
    text = json.dumps(parts, separators=(",", ":"), default=str)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & _MASK


def generators(seeds: Sequence[int], stream: int | str = 0) -> list[torch.Generator]:
    """One CPU generator per sample: sample `i`'s is seeded by `stable_seed(seeds[i], stream)`.

    Args:
        seeds: `(B,)` per-sample base seeds (from `stable_seed`).
        stream: which of a sample's streams (e.g. the restart), so that restarts start from different points.
    """
    return [torch.Generator().manual_seed(stable_seed(int(s), stream)) for s in seeds]


def per_sample_rand(gens: Sequence[torch.Generator], shape: tuple[int, ...], normal: bool = False) -> torch.Tensor:
    """`(len(gens), *shape)` draws on the CPU, row `i` from `gens[i]`: uniform in [0, 1) or standard normal.

    Args:
        gens: one generator per sample (from `generators`).
        shape: the shape of one sample's draw.
        normal: draw from N(0, 1) instead of U[0, 1).
    """
    draw = torch.randn if normal else torch.rand
    if not gens:
        return torch.zeros((0, *shape))
    return torch.stack([draw(shape, generator=g) for g in gens])
