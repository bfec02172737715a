"""The settings of an LVLM robustness evaluation (RobustVLM's protocol by default) and their fingerprint."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from ..protocols import format_eps

CAPTION_PROMPT = "Provide a short caption for this image."
VQA_PROMPT = "{question}\nAnswer the question using a single word or phrase."
# fields that do not change the numbers (a finished result is reused whatever they are)
_NON_RESULT_FIELDS = ("batch_size", "description")


@dataclass
class LVLMProtocol:
    """How `mmt-ard-eval-lvlm` attacks and scores an LVLM.

    Args:
        eps: L-inf budgets in [0, 1] pixel units, applied before the processor's normalisation.
        n_iter: APGD iterations per attack (RobustVLM: 100).
        num_samples: samples per dataset (a seeded subset; None: all).
        seed: seed of the subset and of the random starts.
        max_references: untargeted attacks per sample, one per reference caption / answer (RobustVLM: 5).
        vqa_extra_targets: VQA only: strings forced by extra targeted attacks within the worst case (RobustVLM:
            `maybe`, `Word`).
        refine: one more APGD per sample from its worst image, with the reference that produced it.
        stop_below_captioning: a sample whose CIDEr (x100) is at most this is not attacked further.
        stop_below_vqa: the same for VQA accuracy (%).
        caption_prompt: the captioning instruction.
        vqa_prompt: the VQA instruction, with `{question}`.
        caption_max_new_tokens: generation length for captions (RobustVLM: 20).
        vqa_max_new_tokens: generation length for answers (RobustVLM: 5; TextVQA 10).
        target_strings: targeted attacks (forcing each string) run on the first `targeted_num_samples` samples;
            reported as success rates. Empty: none.
        targeted_n_iter: APGD iterations of the targeted attacks.
        targeted_num_samples: samples the targeted attacks run on.
        batch_size: samples per attack batch (does not change the numbers).
        description: free text printed with the results.
    """

    eps: tuple[float, ...] = (2 / 255, 4 / 255)
    n_iter: int = 100
    num_samples: int | None = 500
    seed: int = 0
    max_references: int = 5
    vqa_extra_targets: tuple[str, ...] = ("maybe", "Word")
    refine: bool = True
    stop_below_captioning: float = 10.0
    stop_below_vqa: float = 0.0
    caption_prompt: str = CAPTION_PROMPT
    vqa_prompt: str = VQA_PROMPT
    caption_max_new_tokens: int = 20
    vqa_max_new_tokens: int = 5
    target_strings: tuple[str, ...] = ()
    targeted_n_iter: int = 10000
    targeted_num_samples: int = 25
    batch_size: int = 1
    description: str = "RobustVLM protocol: APGD on the LM loss of each reference, worst case per sample"

    def __post_init__(self):
        self.eps = tuple(float(e) for e in self.eps)
        self.vqa_extra_targets = tuple(self.vqa_extra_targets)
        self.target_strings = tuple(self.target_strings)
        for e in self.eps:
            if not 0.0 <= e <= 1.0:
                raise ValueError(f"`eps`={e!r}: budgets are in [0, 1] pixel units, e.g. 2/255 (not 2).")
        for name in (
            "n_iter",
            "max_references",
            "batch_size",
            "targeted_n_iter",
            "caption_max_new_tokens",
            "vqa_max_new_tokens",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}`={value!r}: must be an int >= 1.")
        if self.num_samples is not None and (not isinstance(self.num_samples, int) or self.num_samples < 1):
            raise ValueError(f"`num_samples`={self.num_samples!r}: must be an int >= 1 (or None for all).")
        if "{question}" not in self.vqa_prompt:
            raise ValueError(f"`vqa_prompt`={self.vqa_prompt!r}: it needs a `{{question}}` placeholder.")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["eps_255"] = [format_eps(e) for e in self.eps]
        return out

    def fingerprint(self, model_source: str, dataset_source: str) -> str:
        """Hash of everything that changes the numbers of one (model, dataset) pair."""
        data = {k: v for k, v in self.to_dict().items() if k not in _NON_RESULT_FIELDS}
        data.update({"model": model_source, "dataset": dataset_source})
        return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def summary(self) -> str:
        eps = ", ".join(format_eps(e) for e in self.eps)
        samples = "all" if self.num_samples is None else str(self.num_samples)
        targeted = (
            f"; targeted ({', '.join(repr(t) for t in self.target_strings)}): APGD-{self.targeted_n_iter} on "
            f"{self.targeted_num_samples} samples"
            if self.target_strings
            else ""
        )
        return (
            f"LVLM robustness: L-inf eps {eps}; APGD-{self.n_iter} on the LM cross-entropy of up to "
            f"{self.max_references} references per sample (+ targets {list(self.vqa_extra_targets)} on VQA"
            f"{', + refinement' if self.refine else ''}), worst case per sample; {samples} samples per dataset "
            f"(seed {self.seed}){targeted}"
        )
