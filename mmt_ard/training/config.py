"""`MMTARDConfig`: `TrainingArguments` plus the attack, teachers, loss and weighting of MMT-ARD.

Every MMT-ARD field defaults to `None`, meaning "take it from the preset"; a value set explicitly always wins.
The preset also supplies the optimiser defaults of the method (lr 2e-5, weight decay 1e-4, 7 % warmup, cosine).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import SchedulerType
from transformers.utils import logging

from ..runtime.distributed import cpu_multi_process_launch
from ..runtime.preemption import DEFAULT_SIGNALS, parse_signals
from .precision import PRECISIONS, cuda_bf16_available, resolve_precision
from .presets import ATTACK_LOSSES, PRESETS, get_preset
from .progress import progress_bar_fits
from .validation import check_field, check_prompt_templates
from .weighting import WEIGHTINGS

logger = logging.get_logger(__name__)

TEACHER_DTYPES = ("fp32", "bf16", "fp16")
BAD_SAMPLE_POLICIES = ("raise", "skip")
# `TrainingArguments` counts and their least valid value (checked before anything reads them)
COUNT_MINIMUMS = {
    "per_device_train_batch_size": 1,
    "per_device_eval_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "dataloader_num_workers": 0,
}

# the kind of every field this config owns (see `validation.check_field`; "?": None allowed), checked right after the
# preset fills the unset ones and before anything (TrainingArguments included) reads them
FIELD_KINDS = {
    "attack_eps": "number",
    "attack_step_size": "number",
    "attack_steps": "int",
    "attack_norm": "str",
    "attack_momentum": "number",
    "attack_random_init": "bool",
    "attack_loss": "str",
    "attack_target": "str?",
    "attack_autocast": "bool?",
    "eval_attack_eps": "number?",
    "eval_attack_steps": "int?",
    "eval_attack_step_size": "number?",
    "weighting": "str",
    "robust_coef": "number",
    "clean_coef": "number",
    "original_coef": "number",
    "feature_weight": "number",
    "feature_loss": "str",
    "ce_weight": "number",
    "self_kl_weight": "number",
    "temperature": "number",
    "kl_reduction": "str",
    "logit_scale": "number?",
    "use_model_logit_scale": "bool",
    "prompt_templates": "str_list",
    "train_text_tower": "bool",
    "teacher_dtype": "str?",
    "precision": "str",
    "sigmoid_gamma": "number",
    "sigmoid_momentum": "number",
    "mtard_lr": "number",
    "confidence_floor": "number?",
    "max_bad_steps": "int",
    "cache_teacher_outputs": "bool",
    "bad_samples": "str",
    "preemption_signals": "str_list",
    "learning_rate": "number",
    "weight_decay": "number",
    "warmup_steps": "number",
    "lr_scheduler_type": "str",
    "remove_unused_columns": "bool",
}


@dataclass
class MMTARDConfig(TrainingArguments):
    """Configuration of `MMTARDTrainer`.

    Args:
        preset: the recipe whose defaults fill every unset field (`mmt-ard`, `mmt-ard-sigmoid`, `single-teacher`,
            `tecoa`, `fare`, `pmg-aft`, `mtard`).
        attack_eps: training attack budget in [0,1] pixel units.
        attack_step_size: training attack step size.
        attack_steps: training attack iterations (0 trains on clean images).
        attack_norm: `linf` or `l2`.
        attack_momentum: sign-momentum factor of the authors' PGD (0 for plain PGD).
        attack_random_init: start the attack from a uniform random point of the ball.
        attack_loss: inner loss the attack maximises: `kl` (to a teacher's clean prediction), `ce`, `embedding-l2`.
        attack_target: role or name of the teacher whose clean output the `kl`/`embedding-l2` attack pushes away from.
        attack_autocast: run the training attack under bf16 autocast (faster on GPU; never used in evaluation).
            Default: from `precision`.
        eval_attack_eps: budget of the PGD-CE attack in `evaluate()` (default: `attack_eps`).
        eval_attack_steps: iterations of the evaluation attack (default: `attack_steps`).
        eval_attack_step_size: step of the evaluation attack (default: `attack_step_size`).
        weighting: teacher weighting strategy (`fixed`, `confidence`, `sigmoid`, `mtard`).
        robust_coef: coefficient `beta` of teachers with role `robust`.
        clean_coef: coefficient `beta` of teachers with role `clean`.
        original_coef: coefficient of the frozen `original` teacher (`fare`, `pmg-aft`).
        feature_weight: `lambda_feat` of the feature term of `robust`/`clean` teachers (0 disables it).
        feature_loss: `cosine` or `l2`.
        ce_weight: weight of `CE(z_S(x_adv), y)`.
        self_kl_weight: weight of `KL(p_S(x_adv) || p_S(x))`.
        temperature: KL temperature `tau`.
        kl_reduction: `class_mean` (the authors' mean over the `(B, C)` tensor) or `sum` (per-sample KL).
        logit_scale: fixed zero-shot logit scale `s`.
        use_model_logit_scale: use each model's own `logit_scale.exp()` instead of `logit_scale`.
        prompt_templates: training prompt templates, each with one `{}`.
        train_text_tower: also train the student's text tower (frozen by default).
        teacher_dtype: dtype teachers run in: `fp32`, `bf16` or `fp16`. Default: from `precision`.
        precision: `auto` (bf16 on a CUDA device that supports it, fp32 elsewhere), `fp32` (the authors' setting
            exactly) or `bf16`: decides `bf16` (student training forward), `tf32`, `teacher_dtype` and
            `attack_autocast` wherever they are not set explicitly; evaluation attacks are always fp32 (see
            `mmt_ard.training.precision`).
        sigmoid_gamma: `gamma` of the `sigmoid` weighting.
        sigmoid_momentum: EMA momentum of the `sigmoid` weighting's statistics.
        mtard_lr: balancing rate of the `mtard` weighting.
        confidence_floor: clamp teachers' raw-cosine confidences to at least this value before weighting (ours; None
            keeps the authors' raw cosines, which turn a teacher's KL term into a push *away* from it wherever they are
            negative; 0 guards against that).
        max_bad_steps: consecutive non-finite losses tolerated (each such step is skipped) before the run stops.
        cache_teacher_outputs: cache clean-input teacher outputs per sample (needs deterministic preprocessing and a
            dataset yielding a unique `sample_id` per row).
        bad_samples: `raise` or `skip` unreadable/invalid samples (data loading).
        preemption_signals: signals on which `train()` finishes the optimizer step, writes a checkpoint and exits with
            status 75 (`preemption.PREEMPTED_EXIT_CODE`); `[]` or `["none"]` leaves the signals' default action.
    """

    preset: str = field(default="mmt-ard", metadata={"help": f"Recipe filling unset fields: {sorted(PRESETS)}."})
    attack_eps: float | None = field(default=None, metadata={"help": "Training attack budget in [0,1] pixels."})
    attack_step_size: float | None = field(default=None, metadata={"help": "Training attack step size."})
    attack_steps: int | None = field(default=None, metadata={"help": "Training attack iterations (0: no attack)."})
    attack_norm: str | None = field(default=None, metadata={"help": "Threat model: `linf` or `l2`."})
    attack_momentum: float | None = field(default=None, metadata={"help": "Sign momentum of PGD (0: plain PGD)."})
    attack_random_init: bool | None = field(default=None, metadata={"help": "Uniform random start in the ball."})
    attack_loss: str | None = field(default=None, metadata={"help": f"Attack inner loss: {list(ATTACK_LOSSES)}."})
    attack_target: str | None = field(
        default=None, metadata={"help": "Role/name of the teacher the `kl`/`embedding-l2` attack uses as target."}
    )
    attack_autocast: bool | None = field(
        default=None, metadata={"help": "bf16 autocast for the training attack only (default: from `precision`)."}
    )
    eval_attack_eps: float | None = field(default=None, metadata={"help": "Evaluation PGD budget (default: train)."})
    eval_attack_steps: int | None = field(default=None, metadata={"help": "Evaluation PGD iterations."})
    eval_attack_step_size: float | None = field(default=None, metadata={"help": "Evaluation PGD step size."})
    weighting: str | None = field(default=None, metadata={"help": f"Teacher weighting: {sorted(WEIGHTINGS)}."})
    robust_coef: float | None = field(default=None, metadata={"help": "Coefficient of `robust` teachers."})
    clean_coef: float | None = field(default=None, metadata={"help": "Coefficient of `clean` teachers."})
    original_coef: float | None = field(default=None, metadata={"help": "Coefficient of the `original` teacher."})
    feature_weight: float | None = field(default=None, metadata={"help": "Feature-term weight (0: off)."})
    feature_loss: str | None = field(default=None, metadata={"help": "Feature term: `cosine` or `l2`."})
    ce_weight: float | None = field(default=None, metadata={"help": "Weight of CE on adversarial logits."})
    self_kl_weight: float | None = field(default=None, metadata={"help": "Weight of KL(S(x_adv) || S(x))."})
    temperature: float | None = field(default=None, metadata={"help": "KL temperature."})
    kl_reduction: str | None = field(default=None, metadata={"help": "`class_mean` or `sum`."})
    logit_scale: float | None = field(default=None, metadata={"help": "Fixed zero-shot logit scale (100)."})
    use_model_logit_scale: bool = field(default=False, metadata={"help": "Use each model's own logit scale."})
    prompt_templates: list[str] | None = field(default=None, metadata={"help": "Prompt templates with one '{}'."})
    train_text_tower: bool = field(default=False, metadata={"help": "Also train the student's text tower."})
    teacher_dtype: str | None = field(
        default=None, metadata={"help": f"Teacher dtype: {list(TEACHER_DTYPES)} (default: from `precision`)."}
    )
    precision: str = field(
        default="auto",
        metadata={"help": f"{list(PRECISIONS)}: auto = bf16 on a bf16-capable CUDA device, fp32 elsewhere."},
    )
    sigmoid_gamma: float = field(default=1.0, metadata={"help": "Sharpness of the `sigmoid` weighting."})
    sigmoid_momentum: float = field(default=0.99, metadata={"help": "EMA momentum of the `sigmoid` weighting."})
    mtard_lr: float = field(default=0.025, metadata={"help": "Balancing rate of the `mtard` weighting."})
    confidence_floor: float | None = field(
        default=None,
        metadata={"help": "Clamp confidences to >= this before weighting (None: raw cosines, as released)."},
    )
    max_bad_steps: int = field(default=5, metadata={"help": "Consecutive non-finite losses before stopping."})
    cache_teacher_outputs: bool = field(
        default=False, metadata={"help": "Cache clean-input teacher outputs by `sample_id` across epochs."}
    )
    bad_samples: str = field(default="raise", metadata={"help": "Unreadable samples: `raise` or `skip`."})
    preemption_signals: list[str] = field(
        default_factory=lambda: list(DEFAULT_SIGNALS),
        metadata={"help": "On these signals: save after the current step, exit with status 75 ('none': off)."},
    )

    # optimiser defaults of the method, filled by the preset unless set
    learning_rate: float | None = field(default=None, metadata={"help": "Peak learning rate (preset: 2e-5)."})
    weight_decay: float | None = field(default=None, metadata={"help": "AdamW weight decay (preset: 1e-4)."})
    warmup_steps: float | None = field(default=None, metadata={"help": "Warmup steps or ratio (preset: 0.07)."})
    lr_scheduler_type: str | None = field(default=None, metadata={"help": "Scheduler (preset: cosine)."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep all dataset columns (needed)."})

    def __post_init__(self):
        preset = get_preset(check_field("preset", self.preset, "str"))
        for key, value in preset.items():
            if hasattr(self, key) and getattr(self, key) is None:
                setattr(self, key, value)
        for name, kind in FIELD_KINDS.items():
            setattr(self, name, check_field(name, getattr(self, name), kind))
        schedulers = [s.value for s in SchedulerType]
        if self.lr_scheduler_type not in schedulers:
            raise ValueError(f"`lr_scheduler_type`={self.lr_scheduler_type!r}: use one of {schedulers}.")
        for name in ("learning_rate", "weight_decay", "warmup_steps"):  # before TrainingArguments reads them
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}`={getattr(self, name)} is negative: use a value >= 0.")
        for name, low in COUNT_MINIMUMS.items():  # a bad count fails deep inside torch, after the models are loaded
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}`={value!r} must be a whole number >= {low}.")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"`seed`={self.seed} must be in [0, 2**32 - 1] (numpy's seed range).")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError(
                f"`num_train_epochs`={self.num_train_epochs} with `max_steps`={self.max_steps}: nothing would be "
                "trained. Give a positive `num_train_epochs` or `max_steps`."
            )
        self._apply_precision()
        self.preset_roles = preset["roles"]
        self.preset_required_roles = tuple(preset["required_roles"])
        self.preset_make_original = bool(preset.get("make_original", False))
        self.preset_max_teachers = preset.get("max_teachers")
        if self.disable_tqdm is None and not progress_bar_fits():
            # no terminal (a batch job's log file): a plain line per logging step, not bar refreshes (`progress`)
            self.disable_tqdm = True
        if not self.use_cpu and cpu_multi_process_launch():
            # without it Accelerate sets up no process group and each process trains alone (see `distributed`)
            logger.info("Several processes launched and no GPU: `use_cpu=True`, they train together on CPU (gloo).")
            self.use_cpu = True
        super().__post_init__()
        self._validate()

    def _apply_precision(self) -> None:
        """Fill `bf16`, `tf32`, `teacher_dtype` and `attack_autocast` from `precision` where they are unset."""
        on_cuda = not self.use_cpu and torch.cuda.is_available()
        plan = resolve_precision(self.precision, cuda=on_cuda, bf16_supported=on_cuda and cuda_bf16_available())
        if plan.bf16 and not self.fp16:
            self.bf16 = True
        if self.tf32 is None:
            self.tf32 = plan.tf32
        if self.teacher_dtype is None:
            self.teacher_dtype = plan.teacher_dtype
        if self.attack_autocast is None:
            self.attack_autocast = plan.attack_autocast

    def _validate(self) -> None:
        from ..attacks.projected_gradient import check_attack_args

        check_attack_args(self.attack_eps, self.attack_step_size, self.attack_steps, self.attack_norm)
        for name in ("eval_attack_eps", "eval_attack_steps", "eval_attack_step_size"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(self, name.replace("eval_", "")))
        check_attack_args(
            self.eval_attack_eps, self.eval_attack_step_size, self.eval_attack_steps, self.attack_norm, "eval_attack_"
        )
        if self.attack_loss not in ATTACK_LOSSES:
            raise ValueError(f"`attack_loss`={self.attack_loss!r} is not supported: use one of {list(ATTACK_LOSSES)}.")
        if self.attack_loss in ("kl", "embedding-l2") and not self.attack_target:
            raise ValueError(
                f"`attack_loss`={self.attack_loss!r} needs `attack_target`: the role or name of a teacher that sees "
                "clean images (e.g. 'clean')."
            )
        if self.weighting not in WEIGHTINGS:
            raise ValueError(
                f"`weighting`={self.weighting!r} is not a weighting strategy: use one of {sorted(WEIGHTINGS)}."
            )
        if not (0.0 <= self.attack_momentum < 1.0):
            raise ValueError(
                f"`attack_momentum`={self.attack_momentum} must be in [0, 1): 0 is plain PGD, 0.9 the authors'."
            )
        if self.temperature <= 0:
            raise ValueError(f"`temperature`={self.temperature} must be > 0 (1.0 is the method's).")
        if self.kl_reduction not in ("class_mean", "sum"):
            raise ValueError(f"`kl_reduction`={self.kl_reduction!r}: use 'class_mean' or 'sum'.")
        if self.feature_loss not in ("cosine", "l2"):
            raise ValueError(f"`feature_loss`={self.feature_loss!r}: use 'cosine' or 'l2'.")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(f"`teacher_dtype`={self.teacher_dtype!r}: use one of {list(TEACHER_DTYPES)}.")
        if self.bad_samples not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"`bad_samples`={self.bad_samples!r}: use one of {list(BAD_SAMPLE_POLICIES)}.")
        self.preemption_signals = parse_signals(self.preemption_signals)
        if self.max_bad_steps < 1:
            raise ValueError(f"`max_bad_steps`={self.max_bad_steps} must be >= 1.")
        if self.logit_scale is not None and self.logit_scale <= 0:
            raise ValueError(f"`logit_scale`={self.logit_scale} must be > 0 (100 is CLIP's).")
        for name in ("robust_coef", "clean_coef", "original_coef", "feature_weight", "ce_weight", "self_kl_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}`={getattr(self, name)} is negative: loss weights must be >= 0.")
        if not 0 <= self.sigmoid_gamma:
            raise ValueError(f"`sigmoid_gamma`={self.sigmoid_gamma} must be >= 0 (1.0 is the default).")
        if not 0 <= self.sigmoid_momentum < 1:
            raise ValueError(f"`sigmoid_momentum`={self.sigmoid_momentum} must be in [0, 1) (0.99 is the default).")
        if self.confidence_floor is not None and not -1 <= self.confidence_floor <= 1:
            raise ValueError(
                f"`confidence_floor`={self.confidence_floor}: confidences are cosines in [-1, 1]; use e.g. 0, or None."
            )
        if not 0 <= self.mtard_lr <= 1:
            raise ValueError(f"`mtard_lr`={self.mtard_lr} must be in [0, 1] (MTARD uses 0.025).")
        check_prompt_templates(self.prompt_templates)

    @property
    def effective_logit_scale(self) -> float | None:
        """The fixed scale passed to every `ZeroShotCLIP`, or None for the models' own."""
        return None if self.use_model_logit_scale else float(self.logit_scale)
