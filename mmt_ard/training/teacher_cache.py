"""Per-sample cache of clean-input teacher outputs (`cache_teacher_outputs=True`).

A teacher that sees clean images (the `clean` teacher of MMT-ARD, the `original` of FARE) gives the same output for
the same image every epoch, and teachers dominate the cost of a step (method.md section 7). With the cache, each
such teacher runs once per image: its image embedding is kept, on the teacher's device, under the row's `sample_id`
(the column `mmt_ard.data` adds; `add_sample_ids` adds it to any `datasets.Dataset`), and its logits are recomputed from the
embedding with its text head (one small matmul), which is what its forward pass does anyway.

Correctness:

* only teachers whose input is `clean` are cached, and only in training (adversarial inputs change every step);
* the key is the sample, not the batch position, so gradient accumulation, shuffling, `bad_samples='skip'` and
  resuming (the cache starts empty and refills; it is not saved in checkpoints) all see the right rows;
* preprocessing must be deterministic. Each entry keeps a two-number fingerprint of the pixels it was computed from;
  a row whose pixels no longer match (random augmentation, or two different images sharing an id) raises a
  `ValueError` instead of silently distilling from the wrong output;
* embeddings of bf16/fp16 teachers are stored in that dtype (lossless: the forward pass casts them to fp32 only at
  the end), others in fp32: about `D * 4` bytes per image and teacher (3 KB for a ViT-L/14 teacher);
* the trainer keeps them on the teacher's device (the GPU), so a cached step does no host round trip; on the CPU
  that is the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

from ..models import ZeroShotCLIP, ZeroShotOutput

SAMPLE_ID_KEY = "sample_id"  # the same column name as `mmt_ard.data.ID_COLUMN`
_FINGERPRINT_RTOL = 1e-4


def add_sample_ids(dataset, column: str = SAMPLE_ID_KEY):
    """A `datasets.Dataset` with an int `sample_id` column (the row index), as `cache_teacher_outputs` needs."""
    if column in getattr(dataset, "column_names", []):
        return dataset
    return dataset.map(lambda _, index: {column: index}, with_indices=True)


def sample_ids_of(inputs: dict, batch_size: int) -> list[Hashable]:
    """The batch's `sample_id`s as a list of ints/strings; a clear error when they are missing or malformed."""
    if SAMPLE_ID_KEY not in inputs:
        raise ValueError(
            f"`cache_teacher_outputs`=True needs a `{SAMPLE_ID_KEY}` per row; the batch has only {sorted(inputs)}: "
            "use `mmt_ard.data.ImageClassificationCollator` (it adds one), add one with "
            "`mmt_ard.training.teacher_cache.add_sample_ids(dataset)`, or set `cache_teacher_outputs=False`."
        )
    ids = inputs[SAMPLE_ID_KEY]
    if torch.is_tensor(ids):
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"`{SAMPLE_ID_KEY}` has dtype {ids.dtype}: use integer ids (or strings).")
        ids = ids.reshape(-1).tolist()
    elif isinstance(ids, (list, tuple)):
        ids = list(ids)
        if not all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in ids):
            raise TypeError(f"`{SAMPLE_ID_KEY}` holds {sorted({type(i).__name__ for i in ids})}: use ints or strings.")
    else:
        raise TypeError(f"`{SAMPLE_ID_KEY}` is a {type(ids).__name__}: give a tensor or list of ints (or strings).")
    if len(ids) != batch_size:
        raise ValueError(f"`{SAMPLE_ID_KEY}` has {len(ids)} entries for {batch_size} images: give one id per row.")
    return ids


def pixel_fingerprint(pixels: torch.Tensor) -> torch.Tensor:
    """`(B, 3, H, W)` -> `(B, 2)`: the sum and a fixed pseudo-random projection of each image (fp64, on CPU)."""
    flat = pixels.detach().flatten(1).double()  # (B, N)
    n = flat.shape[1]
    weights = torch.cos(torch.arange(n, device=flat.device, dtype=torch.float64) * 0.7071)  # fixed, not random
    return torch.stack([flat.sum(1), flat @ weights], dim=1).cpu()


class TeacherOutputCache:
    """Image embeddings of clean-input teachers, keyed by teacher name and sample id.

    Args:
        device: where the embeddings are kept: `"cpu"`, or `None` for the device the teacher's images are on (on a
            GPU: no host round trip per step, about `D * 2` bytes of GPU memory per image and bf16 teacher, e.g.
            2 GB for ImageNet-1k with a ViT-L/14 teacher).
    """

    def __init__(self, device: str | torch.device | None = "cpu"):
        self.device = device
        self._embeds: dict[str, dict[Hashable, torch.Tensor]] = {}
        self._fingerprints: dict[Hashable, tuple[float, float]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return sum(len(store) for store in self._embeds.values())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for store in self._embeds.values() for t in store.values())

    def clear(self) -> None:
        self._embeds.clear()
        self._fingerprints.clear()

    def _check_fingerprints(self, ids: list[Hashable], prints: torch.Tensor) -> None:
        for key, current in zip(ids, prints.tolist()):
            known = self._fingerprints.get(key)
            if known is None:
                self._fingerprints[key] = tuple(current)
            elif any(abs(a - b) > _FINGERPRINT_RTOL * (1 + abs(a)) for a, b in zip(known, current)):
                raise ValueError(
                    f"`{SAMPLE_ID_KEY}`={key!r} arrived with other pixels than when its teacher outputs were cached: "
                    "preprocessing is random (augmentation) or two images share an id. `cache_teacher_outputs` needs "
                    "deterministic preprocessing and unique ids; turn it off otherwise."
                )

    def outputs(
        self,
        teacher_name: str,
        module: ZeroShotCLIP,
        pixels: torch.Tensor,
        ids: list[Hashable],
        forward: Callable[[torch.Tensor], ZeroShotOutput],
    ) -> ZeroShotOutput:
        """The teacher's outputs for a batch, running `forward` only on the rows not cached yet.

        Args:
            teacher_name: the teacher's name (one store per teacher).
            module: the teacher (its text head turns cached embeddings into logits).
            pixels: `(B, 3, H, W)` clean images in [0,1].
            ids: `B` sample ids.
            forward: the teacher's forward on a batch of pixels (no gradient).
        """
        self._check_fingerprints(ids, pixel_fingerprint(pixels))
        store = self._embeds.setdefault(teacher_name, {})
        store_dtype = module.dtype if module.dtype in (torch.bfloat16, torch.float16) else torch.float32
        missing = [row for row, key in enumerate(ids) if key not in store]
        self.misses += len(missing)
        self.hits += len(ids) - len(missing)

        store_device = pixels.device if self.device is None else self.device

        def remember(rows: list[int], embeds: torch.Tensor) -> None:
            embeds = embeds.detach().to(store_device, store_dtype).clone()  # lossless for bf16/fp16 teachers
            for j, row in enumerate(rows):
                store[ids[row]] = embeds[j]  # rows of one tensor: one copy per batch, not one per row

        if len(missing) == len(ids):  # nothing cached: the teacher's own outputs, bit for bit
            out = forward(pixels)
            remember(missing, out.image_embeds)
            return out
        if missing:
            remember(missing, forward(pixels[missing]).image_embeds)
        embeds = torch.stack([store[key] for key in ids]).to(device=pixels.device, dtype=torch.float32)  # (B, D)
        with torch.no_grad():
            return ZeroShotOutput(logits=module.logits_from_embeds(embeds), image_embeds=embeds)
