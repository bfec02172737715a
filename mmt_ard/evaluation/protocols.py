"""Evaluation protocols: which attacks, budgets, samples and prompts a robust accuracy was measured with.

Two protocol families exist in the robust-CLIP literature and their numbers are not comparable (method.md section 5),
so every result carries its protocol and every report prints it:

* `robustvlm`: the FARE / RobustVLM family that MMT-ARD reports: L-inf eps 2/255 and 4/255, the AutoAttack subset
  APGD-CE + APGD-T (100 iterations, 9 target classes, 1 restart; APGD-CE alone on sets with fewer than 4 classes),
  1000 seeded samples per zero-shot set (5000 for ImageNet), per-dataset prompt ensembles.
* `tecoa`: the TeCoA / PMG-AFT family: L-inf eps 1/255, PGD-100 with step 1/255, one prompt, full test sets.
* `quick`: PGD-10 at 2/255 on 100 samples, for development only.

Every field can be overridden: `get_protocol("robustvlm", eps=(1/255,), num_samples=500)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

from ..data.known_datasets import normalize_template

ATTACKS = ("pgd", "apgd-ce", "apgd-t", "apgd-dlr")
NORMS = ("linf", "l2")
TEMPLATE_MODES = ("ensemble", "single")

# the 13 zero-shot sets of the FARE / RobustVLM protocol (method.md section 5), plus ImageNet
ROBUSTVLM_DATASETS = (
    "imagenet",
    "cifar10",
    "stl10",
    "cifar100",
    "cars",
    "caltech101",
    "pets",
    "flowers",
    "dtd",
    "eurosat",
    "fgvc_aircraft",
    "pcam",
    "imagenet-r",
    "imagenet-sketch",
)
# TeCoA's zero-shot sets that have a public Hub copy in the clip-benchmark collection
TECOA_DATASETS = (
    "imagenet",
    "cifar10",
    "cifar100",
    "stl10",
    "caltech101",
    "pets",
    "flowers",
    "fgvc_aircraft",
    "cars",
    "sun397",
    "food101",
    "eurosat",
    "dtd",
    "pcam",
)


def format_eps(eps: float) -> str:
    """`2/255` for whole multiples of 1/255, the float otherwise (`0.5`); used as result keys."""
    scaled = eps * 255
    if abs(scaled - round(scaled)) < 1e-6:
        return f"{round(scaled)}/255"
    return f"{eps:.6g}"


@dataclass
class Protocol:
    """A robust zero-shot evaluation protocol. Budgets are in [0,1] pixel units.

    Args:
        name: preset name (`robustvlm`, `tecoa`, `quick`) or `custom`.
        description: one line on where the protocol comes from.
        eps: attack budgets, e.g. `(2/255, 4/255)`.
        norm: `linf` or `l2`.
        attacks: attacks run in order, from `pgd`, `apgd-ce`, `apgd-t`, `apgd-dlr`. An image is robust only if it is
            classified correctly and every attack fails on it (per-sample worst case).
        n_iter: APGD iterations per run.
        n_restarts: APGD restarts (per target class for APGD-T).
        n_target_classes: APGD-T target classes (capped at C - 1; APGD-T is skipped on sets with fewer than 4 classes).
        pgd_steps: PGD iterations.
        pgd_step_size: PGD step; `None` means `eps / 4`.
        num_samples: samples per dataset (a seeded random subset); `None` uses the whole split.
        dataset_num_samples: per-dataset overrides of `num_samples`, e.g. `{"imagenet": 5000}`.
        datasets: default datasets when none are given.
        templates: `ensemble` (per-dataset prompt ensemble) or `single` (`single_template` only); a custom prompt
            with `{}` (or `{c}`) for the class name stands for `single` with that prompt.
        single_template: the template of `templates="single"`.
        logit_scale: fixed zero-shot logit scale (100 as CLIP); `None` uses each model's own `logit_scale.exp()`.
        seed: seed of the subset and of the attacks' random starts.
        batch_size: images per attack batch.
        split: dataset split.
        cascade: run each attack only on the images every earlier attack failed on (AutoAttack's cascade; the
            per-attack numbers are then cumulative). `False` runs every attack on every image.
        checks: run the gradient-masking checks.
        check_samples: images (the first of the subset) the checks run on.
        check_steps: PGD steps of the short run of the checks (the long run has 4x as many).
        check_tolerance: accuracy slack of the checks' comparisons (the larger of it and 3 / n is used).
        noise_ratio: the noise check passes when the accuracy drop under noise is at most this fraction of the drop
            under attack (plus the tolerance).
        noise_draws: uniform-noise draws per image (an image survives noise only if it survives every draw).
        max_zero_grad_fraction: largest tolerated fraction of images with an all-zero input gradient.
        modified: the preset's fields that were overridden (filled by `replace`, printed in the summary).
    """

    name: str = "custom"
    description: str = ""
    eps: tuple[float, ...] = (2 / 255,)
    norm: str = "linf"
    attacks: tuple[str, ...] = ("pgd",)
    n_iter: int = 100
    n_restarts: int = 1
    n_target_classes: int = 9
    pgd_steps: int = 10
    pgd_step_size: float | None = None
    num_samples: int | None = 100
    dataset_num_samples: dict[str, int] = field(default_factory=dict)
    datasets: tuple[str, ...] = ("cifar10",)
    templates: str = "ensemble"
    single_template: str = "This is a photo of a {}"
    logit_scale: float | None = 100.0
    seed: int = 0
    batch_size: int = 64
    split: str = "test"
    cascade: bool = True
    checks: bool = True
    check_samples: int = 200
    check_steps: int = 10
    check_tolerance: float = 0.02
    noise_ratio: float = 0.5
    noise_draws: int = 3
    max_zero_grad_fraction: float = 0.0
    modified: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.eps, (int, float)):
            self.eps = (float(self.eps),)
        self.eps = tuple(sorted(float(e) for e in self.eps))
        if isinstance(self.attacks, str):
            self.attacks = tuple(a.strip() for a in self.attacks.split(",") if a.strip())
        self.attacks = tuple(a.lower() for a in self.attacks)
        if isinstance(self.datasets, str):
            self.datasets = (self.datasets,)
        self.datasets = tuple(self.datasets)
        self.modified = tuple(self.modified)
        if self.templates not in TEMPLATE_MODES and ("{}" in self.templates or "{c}" in self.templates):
            self.templates, self.single_template = "single", normalize_template(self.templates)  # a custom prompt
        self.validate()

    def validate(self) -> None:
        """Raise a `ValueError` naming the field, the value and the fix."""
        if self.norm not in NORMS:
            raise ValueError(f"`norm`={self.norm!r} is not supported: use one of {list(NORMS)}.")
        if not self.eps:
            raise ValueError("`eps` is empty: give at least one budget, e.g. `eps=(2/255,)`.")
        for e in self.eps:
            if e < 0 or (self.norm == "linf" and e > 1):
                raise ValueError(
                    f"`eps` holds {e}: budgets are in [0,1] pixel units (2/255 = {2 / 255:.5f}), not in 0-255 units."
                )
        if not self.attacks:
            raise ValueError(f"`attacks` is empty: use a non-empty subset of {list(ATTACKS)}.")
        unknown = [a for a in self.attacks if a not in ATTACKS]
        if unknown:
            raise ValueError(f"`attacks` holds {unknown}: use names from {list(ATTACKS)}.")
        for name in ("n_iter", "n_restarts", "n_target_classes", "pgd_steps", "batch_size", "check_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"`{name}`={getattr(self, name)} must be >= 1.")
        if self.pgd_step_size is not None and self.pgd_step_size <= 0:
            raise ValueError(f"`pgd_step_size`={self.pgd_step_size} must be > 0 (or None for eps / 4).")
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"`num_samples`={self.num_samples} must be >= 1 (or None for the whole split).")
        if self.templates not in TEMPLATE_MODES:
            raise ValueError(
                f"`templates`={self.templates!r}: use one of {list(TEMPLATE_MODES)} or a prompt with '{{}}' for the "
                "class name."
            )
        if "{}" not in self.single_template:
            raise ValueError(f"`single_template`={self.single_template!r} needs one '{{}}' for the class name.")
        if self.logit_scale is not None and self.logit_scale <= 0:
            raise ValueError(f"`logit_scale`={self.logit_scale} must be > 0 (or None for the model's own).")
        if self.check_samples < 1:
            raise ValueError(f"`check_samples`={self.check_samples} must be >= 1.")
        if not 0 <= self.check_tolerance < 1:
            raise ValueError(f"`check_tolerance`={self.check_tolerance} must be in [0, 1).")
        if not 0 < self.noise_ratio <= 1:
            raise ValueError(f"`noise_ratio`={self.noise_ratio} must be in (0, 1].")
        if self.noise_draws < 1:
            raise ValueError(f"`noise_draws`={self.noise_draws} must be >= 1.")
        if not 0 <= self.max_zero_grad_fraction < 1:
            raise ValueError(f"`max_zero_grad_fraction`={self.max_zero_grad_fraction} must be in [0, 1).")

    # ---- derived ----
    def step_size(self, eps: float) -> float:
        """The PGD step at budget `eps`."""
        return float(self.pgd_step_size) if self.pgd_step_size is not None else eps / 4

    def samples_for(self, dataset: str) -> int | None:
        return self.dataset_num_samples.get(dataset, self.num_samples)

    def replace(self, **overrides) -> Protocol:
        """A copy with some fields changed (unknown fields raise)."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"Unknown protocol fields {unknown}: valid fields are {sorted(self.to_dict())}.")
        changed = {k: v for k, v in overrides.items() if v is not None}
        new = dataclasses.replace(self, **changed)
        if "modified" not in changed:
            differs = [
                k
                for k in changed
                if k not in _NON_RESULT_FIELDS | {"modified"} and getattr(new, k) != getattr(self, k)
            ]
            new.modified = tuple(sorted(set(self.modified) | set(differs)))
        return new

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["eps"] = list(self.eps)
        out["eps_255"] = [format_eps(e) for e in self.eps]
        out["attacks"] = list(self.attacks)
        out["datasets"] = list(self.datasets)
        out["modified"] = list(self.modified)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Protocol:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in names})

    def fingerprint(self, dataset: str | None = None) -> str:
        """Hash of every field that changes the numbers (a finished result is reused only if it matches)."""
        data = {k: v for k, v in self.to_dict().items() if k not in _NON_RESULT_FIELDS}
        data.pop("dataset_num_samples", None)
        data["num_samples"] = self.samples_for(dataset) if dataset is not None else self.num_samples
        data["random_streams"] = RANDOM_STREAMS  # results of the earlier per-batch streams are not reused
        return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def summary(self) -> str:
        """One line printed with every result."""
        eps = ", ".join(format_eps(e) for e in self.eps)
        parts = []
        for a in self.attacks:
            if a == "pgd":
                step = format_eps(self.pgd_step_size) if self.pgd_step_size is not None else "eps/4"
                parts.append(f"PGD-{self.pgd_steps} (step {step})")
            else:
                extra = f", {self.n_target_classes} targets" if a == "apgd-t" else ""
                parts.append(f"{a.upper()} ({self.n_iter} it, {self.n_restarts} restart{extra})")
        samples = "all" if self.num_samples is None else str(self.num_samples)
        if self.dataset_num_samples:
            samples += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.dataset_num_samples.items())) + ")"
        prompts = "prompt ensemble" if self.templates == "ensemble" else f"prompt '{self.single_template}'"
        worst = "worst case per image" + (", cascade" if self.cascade and len(self.attacks) > 1 else "")
        name = self.name + (f" (modified: {', '.join(self.modified)})" if self.modified else "")
        return (
            f"protocol={name}: {self.norm} eps [{eps}]; {' + '.join(parts)}; {worst}; {samples} samples/dataset "
            f"(seed {self.seed}, split {self.split}); {prompts}; logit scale "
            f"{self.logit_scale if self.logit_scale is not None else 'model'}; fp32, eval mode"
        )


# how random draws are keyed (`sample_keys`): per sample, independent of batch and processes
RANDOM_STREAMS = "per-sample-1"
# fields that do not change the numbers
_NON_RESULT_FIELDS = {"name", "description", "datasets", "batch_size", "modified"}

PROTOCOLS: dict[str, Protocol] = {
    "robustvlm": Protocol(
        name="robustvlm",
        description="FARE/RobustVLM (and MMT-ARD): AutoAttack APGD-CE + APGD-T at 2/255 and 4/255, 1000 images/set.",
        eps=(2 / 255, 4 / 255),
        attacks=("apgd-ce", "apgd-t"),
        n_iter=100,
        n_restarts=1,
        n_target_classes=9,
        num_samples=1000,
        dataset_num_samples={"imagenet": 5000},
        datasets=ROBUSTVLM_DATASETS,
        templates="ensemble",
    ),
    "tecoa": Protocol(
        name="tecoa",
        description="TeCoA/PMG-AFT: PGD-100 with step 1/255 at 1/255, one prompt, full test sets.",
        eps=(1 / 255,),
        attacks=("pgd",),
        pgd_steps=100,
        pgd_step_size=1 / 255,
        num_samples=None,
        datasets=TECOA_DATASETS,
        templates="single",
    ),
    "quick": Protocol(
        name="quick",
        description="Development only: PGD-10 (step eps/4) at 2/255 on 100 images; not a publishable number.",
        eps=(2 / 255,),
        attacks=("pgd",),
        pgd_steps=10,
        num_samples=100,
        datasets=("cifar10",),
        templates="ensemble",
        check_samples=100,
    ),
}


def get_protocol(protocol: str | Protocol | dict | None = "quick", **overrides) -> Protocol:
    """A preset by name (or a `Protocol` / dict), with fields overridden; `None` overrides are ignored."""
    if protocol is None:
        protocol = "quick"
    if isinstance(protocol, Protocol):
        base = protocol
    elif isinstance(protocol, dict):
        base = Protocol.from_dict(protocol)
    elif isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"`protocol`={protocol!r} is not a preset: use one of {sorted(PROTOCOLS)}.")
        base = PROTOCOLS[protocol]
    else:
        raise TypeError(f"`protocol` is a {type(protocol).__name__}: pass a preset name, a `Protocol` or a dict.")
    return base.replace(**overrides)
