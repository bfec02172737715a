"""`MMTARDTrainer`: a `transformers.Trainer` whose `compute_loss` attacks the student and distills N teachers.

One training step (method.md section 2, generalised to N teachers):

1. teachers that see clean images run on `x` (no gradient);
2. the student is attacked: `x_adv = PGD(x)` maximising the preset's inner loss (e.g. KL to the clean teacher);
3. teachers that see adversarial images run on `x_adv`;
4. the student runs once on the inputs it is matched on (`x` and/or `x_adv`, concatenated into one forward);
5. per-teacher per-sample weights come from the weighting strategy (confidence = cosine of the teacher's image
   embedding to the true class's text embedding);
6. `fused_distillation_loss` sums the weighted KL terms and the optional feature / CE / self-KL terms.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PrinterCallback, Trainer
from transformers.trainer import SCHEDULER_NAME
from transformers.utils import logging

from ..attacks.projected_gradient import ce_inner_loss, embedding_l2_inner_loss, kl_inner_loss, pgd
from ..models import ZeroShotCLIP, ZeroShotOutput
from ..runtime.distributed import (
    GlobalBatchWeighting,
    check_one_process_group,
    distributed_setup,
    enable_fsdp_on_cpu,
    fsdp_requested,
    ignore_scalar_parameters,
    is_sharded,
    load_full_state_into_sharded,
    needs_global_batch,
    sum_over_processes,
    wrap_student_layers,
)
from ..runtime.preemption import IgnoreSignalsInWorker, PreemptionCallback, PreemptionHandler, run_preemptible
from .checkpointing import last_good_checkpoint, remove_stale_staging, save_checkpoint_atomically
from .config import MMTARDConfig
from .losses import TeacherTerm, fused_distillation_loss
from .memory import BatchSizeSearch
from .nonfinite import NonFiniteGuard
from .precision import PrecastForward
from .progress import LogLineCallback
from .step_metrics import timed_phase, weighted_sums
from .stream_resume import is_stream, positions_to_resume, save_positions, stream_loader
from .teacher_cache import TeacherOutputCache, sample_ids_of
from .teachers import Teacher, build_teacher_module, frozen_copy
from .validation import check_batch
from .weighting import make_weighting

logger = logging.get_logger(__name__)

STATE_NAME = "mmt_ard_state.json"
PROJECTIONS_NAME = "mmt_ard_projections.safetensors"
CONFIG_JSON_NAME = "mmt_ard_config.json"


@contextlib.contextmanager
def _params_frozen(module: nn.Module):
    """Parameters stop requiring grad inside (their flags are restored in `finally`).

    The attack takes gradients w.r.t. the perturbation only; with the parameters frozen, autograd neither records
    their gradient paths nor keeps the activations those need (the attack ran ~4 % faster on CPU, see
    `benchmarks/attack_flags.py`). Existing `.grad` (gradient accumulation) is left alone.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass
class StudentOutput(ZeroShotOutput):
    """`ZeroShotOutput` of the student plus `projected`: teacher name -> `(B, D_k)` embeddings through `P_k`."""

    projected: dict[str, torch.Tensor] = field(default_factory=dict)


class StudentBundle(nn.Module):
    """What the Trainer optimises: the student plus the learned feature projections.

    `accepts_loss_kwargs = True` makes the Trainer count `num_items_in_batch` over the whole accumulated batch, so the
    loss is normalised exactly under gradient accumulation.
    """

    accepts_loss_kwargs = True

    def __init__(self, student: ZeroShotCLIP):
        super().__init__()
        self.student = student
        self.projections = nn.ModuleDict()

    def forward(self, pixel_values: torch.Tensor, **unused) -> StudentOutput:
        """The student's zero-shot output, plus its embeddings through every projection head `P_k`.

        The heads run inside `forward` so that DDP and FSDP see them as part of the model: used outside it, DDP
        marks their gradients ready twice and FSDP hands them out as shards.
        """
        out = self.student(pixel_values)
        projected = {name: head(out.image_embeds) for name, head in self.projections.items()}  # name -> (B, D_k)
        return StudentOutput(logits=out.logits, image_embeds=out.image_embeds, projected=projected)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs=None, every_n_layers=1, offload=False):
        """Checkpoint the student's encoder layers (`activation_checkpointing=True` / `gradient_checkpointing=True`).

        transformers layers checkpoint only in train mode, i.e. in the training forward; the attack runs in eval mode
        and needs input gradients only, so it is unaffected. Non-reentrant checkpointing (the default here) also
        works when the layers' inputs need no gradient, as with LoRA students.
        """
        base = self.student.base
        kwargs = activation_checkpointing_kwargs or {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(kwargs, every_n_layers=every_n_layers, offload=offload)
        else:  # transformers < 5
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def robust_accuracy_metrics(eval_pred) -> dict[str, float]:
    """Default `compute_metrics`: accuracy on clean and on PGD images from `(B, 2, C)` stacked logits."""
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    logits = logits[0] if isinstance(logits, tuple) else logits
    preds = np.asarray(logits).argmax(-1)  # (N, 2)
    labels = np.asarray(labels).reshape(-1)
    return {
        "clean_accuracy": float((preds[:, 0] == labels).mean()),
        "adv_accuracy": float((preds[:, 1] == labels).mean()),
        "num_samples": int(labels.shape[0]),
    }


class MMTARDTrainer(Trainer):
    """Multimodal multi-teacher adversarial robust distillation of a CLIP-like student (CLIP, SigLIP, SigLIP 2).

    Args:
        model: the student `CLIPModel`, `SiglipModel` or `Siglip2Model` (or a peft model wrapping one).
        args: an `MMTARDConfig`.
        teachers: `Teacher` specs (or bare models / Hub ids, taken as `robust` then `clean`).
        class_names: class names of the labels; defaults to the train dataset's `labels` `ClassLabel`.
        processing_class: the student's processor (tokenizer + image statistics; saved with the model).
        **kwargs: everything else `transformers.Trainer` takes (`train_dataset`, `eval_dataset`, `callbacks`, ...).
    """

    _tag_names = ["mmt-ard", "adversarial-robustness", "distillation", "clip"]

    def __init__(
        self,
        model: nn.Module | None = None,
        args: MMTARDConfig | None = None,
        teachers: list | None = None,
        class_names: list[str] | None = None,
        processing_class=None,
        **kwargs,
    ):
        if args is None:
            args = MMTARDConfig(output_dir="mmt_ard_output")
        if not isinstance(args, MMTARDConfig):
            raise TypeError(
                f"`args` is a {type(args).__name__}: pass an `MMTARDConfig` (a TrainingArguments subclass)."
            )
        if model is None:
            raise ValueError("`model` is None: pass the student model (`load_clip(hub_id_or_path)` loads one).")
        if processing_class is None:
            raise ValueError(
                "`processing_class` is None: pass the student's processor (its tokenizer builds the text head)."
            )
        self.class_names = self._resolve_class_names(class_names, kwargs.get("train_dataset"))

        student = ZeroShotCLIP(model, processing_class, logit_scale=args.effective_logit_scale)
        self._freeze_towers(student, args.train_text_tower)
        student.set_classes(self.class_names, args.prompt_templates)
        bundle = StudentBundle(student)

        self.teacher_specs = self._resolve_teachers(teachers or [], args, student)
        self.teacher_modules = [
            build_teacher_module(spec, args.effective_logit_scale, device=args.device)
            if spec.model is not student
            else None
            for spec in self.teacher_specs
        ]
        for spec, module in zip(self.teacher_specs, self.teacher_modules):
            module.set_classes(self.class_names, args.prompt_templates)
            if spec.feature_weight and module.embed_dim != student.embed_dim:
                # P_k: student embedding -> teacher embedding space, trained with the student, never exported
                with torch.random.fork_rng(devices=[]):  # initialised from `args.seed`, not the caller's RNG state
                    torch.manual_seed(args.seed + len(bundle.projections))
                    bundle.projections[spec.name] = nn.Linear(student.embed_dim, module.embed_dim, bias=False)

        self.weighting = make_weighting(
            args.weighting, gamma=args.sigmoid_gamma, momentum=args.sigmoid_momentum, lr=args.mtard_lr
        )
        self.attack_target_index = self._resolve_attack_target(args)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._bad_steps = 0  # consecutive skipped (non-finite) updates
        self._warned_negative_weights = False
        self._nonfinite_steps = 0  # all skipped updates
        self._nonfinite = NonFiniteGuard(self)
        # on the teachers' device: a cached step reads the clean teacher's outputs without a host round trip
        self._teacher_cache = TeacherOutputCache(device=None) if args.cache_teacher_outputs else None

        if kwargs.get("compute_metrics") is None:
            kwargs["compute_metrics"] = robust_accuracy_metrics
        super().__init__(model=bundle, args=args, processing_class=processing_class, **kwargs)
        for module in self.teacher_modules:
            module.to(self.accelerator.device)  # placed by Accelerate, never wrapped, never in the optimizer
        if self.args.disable_tqdm:  # no bar: one plain line per log record, not `PrinterCallback`'s dictionaries
            self.pop_callback(PrinterCallback)
            self.add_callback(LogLineCallback)
        self._batch_search = BatchSizeSearch(self)  # out-of-memory handling, `auto_find_batch_size` (`memory`)
        self.add_callback(self._batch_search.callback)
        self._preemption = None  # SIGTERM/SIGUSR1: save after the step and exit with status 75 (`preemption`)
        if args.preemption_signals:
            self._preemption = PreemptionCallback(PreemptionHandler(args.preemption_signals))
            self.add_callback(self._preemption)
        if self.accelerator.num_processes > 1 and needs_global_batch(self.weighting):
            self.weighting = GlobalBatchWeighting(self.weighting, self.accelerator)

    def create_accelerator_and_postprocess(self) -> None:
        """`Trainer`'s, then: FSDP kept on CPU process groups, and no training as N separate single-process runs."""
        super().create_accelerator_and_postprocess()
        check_one_process_group(self.accelerator)
        if enable_fsdp_on_cpu(self.accelerator, self.args):
            self.is_fsdp_enabled = True
        if fsdp_requested(self.args) and not self.is_fsdp_enabled:
            logger.warning(
                f"FSDP was requested but Accelerate set up {self.distributed_setup()!r}: the student is not sharded "
                "(on CPU, FSDP needs several processes: `accelerate launch --num_processes 2` or more)."
            )
        if self.is_fsdp_enabled and self.args.train_text_tower:
            raise ValueError(
                "`train_text_tower`=True is not supported under FSDP: the text head is rebuilt outside the sharded "
                "model's forward. Train the text tower with DDP or one process, or keep it frozen."
            )

    def distributed_setup(self) -> str:
        """The distributed setup that really runs, e.g. `"FSDP2, 2 processes"`, `"DDP, 2 processes"`, `"single process"`."""
        return distributed_setup(self.accelerator)

    # ---- construction helpers ----
    @staticmethod
    def _resolve_class_names(class_names, train_dataset) -> list[str]:
        if class_names is not None:
            names = [str(n) for n in class_names]
        else:
            features = getattr(train_dataset, "features", None) or {}
            label_feature = features.get("labels") if hasattr(features, "get") else None
            names = list(getattr(label_feature, "names", None) or [])
            if not names:
                raise ValueError(
                    "`class_names` is not given and the train dataset's `labels` column is not a `ClassLabel`: pass "
                    "`class_names=[...]` (one name per label id)."
                )
        if not names or any(not n.strip() for n in names):
            raise ValueError(f"`class_names`={names!r}: give one non-empty name per class.")
        return names

    @staticmethod
    def _freeze_towers(student: ZeroShotCLIP, train_text_tower: bool) -> None:
        """Only the vision tower (and its projection) train, unless the text tower is unfrozen.

        The vision side is what the model's family names (`ModelFamily.vision_prefixes`); the logit scale (and
        SigLIP's bias) never train.
        """
        base, family = student.base, student.family
        for name, param in base.named_parameters():
            if name in ("logit_scale", "logit_bias"):
                param.requires_grad_(False)
            elif not family.is_vision_parameter(name) and not train_text_tower:
                param.requires_grad_(False)

    @staticmethod
    def _resolve_teachers(teachers: list, args: MMTARDConfig, student: ZeroShotCLIP) -> list[Teacher]:
        specs = []
        default_roles = ["robust", "clean"]
        for i, teacher in enumerate(teachers):
            if not isinstance(teacher, Teacher):
                role = default_roles[i] if i < len(default_roles) else f"teacher{i}"
                teacher = Teacher(model=teacher, role=role)
            specs.append(teacher)
        if args.preset_max_teachers is not None and len(specs) > args.preset_max_teachers:
            raise ValueError(
                f"`preset`={args.preset!r} takes no teachers, got {len(specs)}: drop `teachers` or pick another preset."
            )
        if args.preset_make_original and not any(t.role == "original" for t in specs):
            specs.append(Teacher(model=frozen_copy(student), role="original", processor=student.processor))
        roles = [t.role for t in specs]
        missing = [r for r in args.preset_required_roles if r not in roles]
        if missing:
            raise ValueError(
                f"`preset`={args.preset!r} needs teachers with roles {list(args.preset_required_roles)}; missing "
                f"{missing}. Pass e.g. `teachers=[Teacher(robust_clip, role='robust'), Teacher(clean_clip, role='clean')]`."
            )
        resolved = [t.resolved(args) for t in specs]
        names = [t.name for t in resolved]
        if len(set(names)) != len(names):
            raise ValueError(f"Teacher names {names} repeat: give each teacher a distinct `name=`.")
        return resolved

    def _resolve_attack_target(self, args: MMTARDConfig) -> int | None:
        if args.attack_loss == "ce" or args.attack_steps == 0:
            return None
        for i, spec in enumerate(self.teacher_specs):
            if args.attack_target in (spec.name, spec.role):
                if spec.input != "clean":
                    raise ValueError(
                        f"`attack_target`={args.attack_target!r} names teacher `{spec.name}`, which sees adversarial "
                        "images; the attack's target must be a teacher's clean output."
                    )
                return i
        raise ValueError(
            f"`attack_target`={args.attack_target!r} matches no teacher ({[s.name for s in self.teacher_specs]}): "
            "name a teacher that sees clean images, or set `attack_loss='ce'`."
        )

    # ---- the step ----
    def _timed(self, mode: str, key: str, add_to_last: bool = False):
        """Time a phase of the step; `add_to_last` adds to the step's previous entry (one logged value per step).

        On a CUDA device the phase is timed with CUDA events, read at logging time (`step_metrics`): no sync per phase.
        """
        return timed_phase(self._metrics[mode][f"time/{key}_s"], add_to_last, cuda=self.args.device.type == "cuda")

    def _check_batch(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """`pixel_values` float32 `(B, 3, H, W)` in [0, 1] and `labels` int64 `(B,)`, or a clear error (`validation`)."""
        return check_batch(inputs, len(self.class_names))

    def _attack_fn(self, model: nn.Module):
        """The student the attack runs on, and the context it runs in."""
        if self.is_fsdp_enabled:
            # sharded parameters: attack through the wrapper, without gradient synchronisation
            return model, self.accelerator.no_sync(model)
        student = self.accelerator.unwrap_model(model).student
        single = self.accelerator.num_processes == 1 and not self.is_deepspeed_enabled and not self.args.torch_compile
        # the attack needs input gradients only; distributed wrappers and compiled graphs keep their flags untouched
        return student, (_params_frozen(student) if single else contextlib.nullcontext())

    def _inner_loss(self, y: torch.Tensor, teacher_clean: dict[int, object]):
        args = self.args
        if args.attack_loss == "ce":
            return ce_inner_loss(y)
        target = teacher_clean[self.attack_target_index]
        if args.attack_loss == "kl":
            return kl_inner_loss(F.softmax(target.logits.float() / args.temperature, -1), args.temperature)
        return embedding_l2_inner_loss(target.image_embeds)

    def _teacher_forward(self, index: int, pixels: torch.Tensor):
        module = self.teacher_modules[index]
        with torch.inference_mode():  # frozen teacher: no autograd bookkeeping at all
            out = module(pixels)
        # inference tensors may not be saved for backward (a cosine feature term would): hand out ordinary copies
        return ZeroShotOutput(logits=out.logits.clone(), image_embeds=out.image_embeds.clone())

    def _clean_teacher_forward(self, index: int, pixels: torch.Tensor, inputs: dict, mode: str):
        """A clean-input teacher's outputs; from the per-sample cache in training with `cache_teacher_outputs`."""
        if self._teacher_cache is None or mode != "train":
            return self._teacher_forward(index, pixels)
        ids = sample_ids_of(inputs, pixels.shape[0])
        name = self.teacher_specs[index].name
        module = self.teacher_modules[index]
        return self._teacher_cache.outputs(name, module, pixels, ids, lambda px: self._teacher_forward(index, px))

    def training_step(self, model, inputs, num_items_in_batch=None):
        """`Trainer.training_step`, with the loss checked for NaN/inf (see `nonfinite`)."""
        if not isinstance(inputs, Mapping) or "pixel_values" not in inputs or "labels" not in inputs:
            check_batch(inputs, len(self.class_names))  # our error, before the Trainer's input preparation trips
        self._batch_search.agree_before_first_step(inputs, num_items_in_batch)  # several processes, auto batch only
        self._nonfinite.before_micro_batch()
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._nonfinite.after_micro_batch(loss)
        return loss

    def create_optimizer(self, model=None):
        """`Trainer.create_optimizer`, with `step` guarded so that a non-finite window changes nothing."""
        return self._nonfinite.install(super().create_optimizer(model))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """One MMT-ARD step (module docstring): teachers on x, attack, teachers on x_adv, student, weights, loss."""
        mode = "train" if model.training else "eval"
        x, y = self._check_batch(inputs)
        self._detach_text_head(model, mode)
        with self._timed(mode, "teachers"):  # 1. teachers on clean images (also the attack's target)
            teacher_out = self._teachers_on("clean", x, inputs, mode)
        with self._timed(mode, "attack"):  # 2. attack the student
            x_adv = self._attack(model, x, y, teacher_out, mode)
        with self._timed(mode, "teachers", add_to_last=True):  # 3. teachers on adversarial images
            teacher_out.update(self._teachers_on("adversarial", x_adv, inputs, mode))
        with self._timed(mode, "student"):
            student, projected = self._student_forward(model, x, x_adv, mode)  # 4. one student forward
            conf, weights = self._teacher_weights(teacher_out, y, mode)  # 5. per-teacher per-sample weights
            normalizer, scale = self._normalizer(num_items_in_batch, x.shape[0])
            losses = self._fused_loss(student, projected, teacher_out, weights, y, normalizer)  # 6. the fused loss
        if mode == "train":
            self.weighting.update(conf, losses["per_teacher_kl"])
        self._record(mode, losses, weights, conf, student, teacher_out, y, scale_back=normalizer / x.shape[0])
        loss = losses["loss"] * scale
        return (loss, self._step_outputs(student)) if return_outputs else loss

    # ---- the named steps of `compute_loss` ----
    def _detach_text_head(self, model: nn.Module, mode: str) -> None:
        """With a training text tower, the attack reads the head of the previous step, detached."""
        if self.args.train_text_tower and mode == "train":
            student_zs = self.accelerator.unwrap_model(model).student
            student_zs.text_head = student_zs.text_head.detach()

    def _teachers_on(self, kind: str, pixels: torch.Tensor, inputs: dict, mode: str) -> dict[int, ZeroShotOutput]:
        """Outputs of the teachers whose input is `kind` (`clean` or `adversarial`), by teacher index."""
        out = {}
        for i, spec in enumerate(self.teacher_specs):
            if spec.input == kind:
                if kind == "clean":
                    out[i] = self._clean_teacher_forward(i, pixels, inputs, mode)
                else:
                    out[i] = self._teacher_forward(i, pixels)
        return out

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher_out: dict, mode: str):
        """`x_adv = PGD(x)` maximising the preset's inner loss; `x` itself when the attack is off (eps or steps 0)."""
        args = self.args
        if args.attack_steps == 0 or args.attack_eps == 0:
            return x
        autocast_dtype = torch.bfloat16 if (args.attack_autocast and mode == "train") else None
        attack_model, ctx = self._attack_fn(model)
        if autocast_dtype is not None and not self.is_fsdp_enabled:
            attack_model = PrecastForward(attack_model, autocast_dtype)  # cast the matmul weights once, not per step
        with ctx:
            return pgd(
                attack_model,
                x,
                self._inner_loss(y, teacher_out),
                eps=args.attack_eps,
                step_size=args.attack_step_size,
                steps=args.attack_steps,
                norm=args.attack_norm,
                random_init=args.attack_random_init,
                momentum=args.attack_momentum or None,
                autocast_dtype=autocast_dtype,
            )

    def _student_forward(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, mode: str):
        """The student once over what it is matched on.

        Returns:
            `{"adversarial": (logits, embeds)[, "clean": ...]}`, and `{(teacher name, "clean"/"adversarial"):
            (B, D_k)}` of the embeddings through the projection heads `P_k` (which run inside the forward).
        """
        args = self.args
        if args.train_text_tower and mode == "train":  # an unfrozen text tower learns through this step's head
            self.accelerator.unwrap_model(model).student.refresh_text_head(grad=True)
        need_clean = args.self_kl_weight > 0 or any(s.match == "clean" for s in self.teacher_specs)
        out = model(pixel_values=torch.cat([x, x_adv]) if need_clean else x_adv)  # rows: [x; x_adv] or x_adv
        b = x.shape[0]
        student = {"adversarial": (out.logits[-b:], out.image_embeds[-b:])}
        projected = {(name, "adversarial"): feats[-b:] for name, feats in out.projected.items()}
        if need_clean:
            student["clean"] = (out.logits[:b], out.image_embeds[:b])
            projected.update({(name, "clean"): feats[:b] for name, feats in out.projected.items()})
        return student, projected

    def _teacher_weights(self, teacher_out: dict, y: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Confidences and per-sample weights, both `(K, B)`; warns once when a weight is negative."""
        args, k, b = self.args, len(self.teacher_specs), y.shape[0]
        if self.weighting.needs_confidence and k:
            conf = torch.stack(
                [self.teacher_modules[i].confidence(teacher_out[i].image_embeds.float(), y) for i in range(k)]
            ).float()  # (K, B)
        else:
            conf = torch.ones(k, b, device=y.device)
        if args.confidence_floor is not None:
            conf = conf.clamp_min(args.confidence_floor)
        coefs = torch.tensor([s.coef for s in self.teacher_specs], device=y.device, dtype=torch.float32)  # (K,)
        weights = self.weighting.weights(conf, coefs) if k else conf  # (K, B)
        # on the CPU the check is free; on a GPU it would sync every step, so `log()` warns from the logged fraction
        if mode == "train" and k and not self._warned_negative_weights and not weights.is_cuda:
            if bool((weights < 0).any()):
                self._warn_negative_weights()
        return conf, weights

    def _fused_loss(self, student: dict, projected: dict, teacher_out: dict, weights, y, normalizer: float) -> dict:
        """`fused_distillation_loss` over one `TeacherTerm` per teacher (projected student features where a head
        `P_k` exists)."""
        args = self.args
        terms = []
        for i, spec in enumerate(self.teacher_specs):
            s_logits, s_feats = student[spec.match]
            s_feats = projected.get((spec.name, spec.match), s_feats)
            terms.append(
                TeacherTerm(
                    name=spec.name,
                    teacher_logits=teacher_out[i].logits if spec.kl else None,
                    student_logits=s_logits if spec.kl else None,
                    weights=weights[i],
                    kl_direction=spec.kl_direction,
                    teacher_feats=teacher_out[i].image_embeds,
                    student_feats=s_feats,
                    feature_weight=spec.feature_weight or 0.0,
                    feature_kind=args.feature_loss if spec.role != "original" else "l2",
                )
            )
        return fused_distillation_loss(
            terms,
            temperature=args.temperature,
            kl_reduction=args.kl_reduction,
            labels=y,
            student_adv_logits=student["adversarial"][0],
            student_clean_logits=student.get("clean", (None,))[0],
            ce_weight=args.ce_weight,
            self_kl_weight=args.self_kl_weight,
            normalizer=normalizer,
        )

    @staticmethod
    def _step_outputs(student: dict) -> dict[str, torch.Tensor]:
        """What `compute_loss(return_outputs=True)` hands back: the student's logits."""
        outputs = {"logits": student["adversarial"][0], "adv_logits": student["adversarial"][0]}
        if "clean" in student:
            outputs["clean_logits"] = student["clean"][0]
        return outputs

    def _normalizer(self, num_items_in_batch, batch_size: int):
        """Divide the per-sample sum by the accumulated batch size; mirror the Trainer's cross-device scaling."""
        if num_items_in_batch is None:
            return float(batch_size), 1.0
        n = num_items_in_batch.item() if torch.is_tensor(num_items_in_batch) else float(num_items_in_batch)
        scale = 1.0
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            scale = float(self.accelerator.num_processes)
        return float(n), scale

    @torch.no_grad()
    def _record(self, mode, losses, weights, conf, student, teacher_out, y, scale_back: float) -> None:
        """Append this step's metrics as `(0-d tensor, batch size)` (no device sync); `log()` averages them over the
        samples of every step and every process (`step_metrics.weighted_sums`, `distributed.sum_over_processes`)."""
        m, n = self._metrics[mode], int(y.shape[0])
        # per-batch values, independent of the accumulation normaliser
        for key, value in losses.items():
            if key.endswith("_loss") or key == "loss":
                m[key].append((value.detach().float() * scale_back, n))
        for i, spec in enumerate(self.teacher_specs):
            m[f"weight/{spec.name}"].append((weights[i].mean(), n))
            if self.weighting.needs_confidence:  # the teacher's cosine to the true class (after `confidence_floor`)
                m[f"confidence/{spec.name}"].append((conf[i].mean(), n))
            m[f"negative_weight_fraction/{spec.name}"].append(((weights[i] < 0).float().mean(), n))
            m[f"teacher_accuracy/{spec.name}"].append(((teacher_out[i].logits.argmax(-1) == y).float().mean(), n))
        for kind, (logits, _) in student.items():
            key = "adv_accuracy" if kind == "adversarial" else "clean_accuracy"
            m[f"student_{key}"].append(((logits.argmax(-1) == y).float().mean(), n))

    def _warn_negative_weights(self) -> None:
        self._warned_negative_weights = True
        logger.warning(
            "Some per-sample teacher weights are negative (a teacher's raw cosine to the true class is < 0): "
            "on those samples the student is trained away from that teacher. Set `confidence_floor=0` or "
            "`weighting='sigmoid'` to prevent it; `negative_weight_fraction/<teacher>` is logged."
        )

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """`Trainer.log` plus this trainer's per-term metrics, averaged over every sample of every process since the
        last log (a collective call under several processes, like the Trainer's own logging step)."""
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        sums = weighted_sums(self._metrics[mode])
        if self.accelerator.num_processes > 1:
            sums = sum_over_processes(sums)
        for key, (total, weight) in sums.items():
            value = total / weight if weight else 0.0
            if key != "loss":
                logs[prefix + key] = value
                if key.startswith("negative_weight_fraction/") and value > 0 and not self._warned_negative_weights:
                    self._warn_negative_weights()
        self._metrics[mode].clear()
        super().log(logs, *args, **kwargs)

    # ---- evaluation: clean and PGD-CE accuracy ----
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        x, y = self._check_batch(inputs)
        args = self.args
        if is_sharded(model):  # FSDP: only the sharded model's forward gathers the weights; no gradient sync
            student, ctx = model, self.accelerator.no_sync(model)
        else:
            student, ctx = self.accelerator.unwrap_model(model).student, contextlib.nullcontext()
            if args.train_text_tower:
                student.refresh_text_head(grad=False)
        with torch.no_grad():
            clean = student(x).logits
        generator = torch.Generator(device=x.device).manual_seed(args.seed)  # the start is drawn where x lives
        with ctx, torch.autocast(x.device.type, enabled=False):  # evaluation attacks are fp32, whatever the policy
            x_adv = pgd(
                student,
                x,
                ce_inner_loss(y),
                eps=args.eval_attack_eps,
                step_size=args.eval_attack_step_size,
                steps=args.eval_attack_steps,
                norm=args.attack_norm,
                random_init=True,
                generator=generator,
            )
        with torch.no_grad():
            adv = student(x_adv).logits
            loss = F.cross_entropy(adv, y)
        if prediction_loss_only:
            return loss, None, None
        return loss, torch.stack([clean, adv], dim=1), y  # (B, 2, C)

    # ---- saving and loading ----
    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """`Trainer.train`; `resume_from_checkpoint=True` picks the last *complete* checkpoint (see `checkpointing`).

        A preemption signal (`preemption_signals`) ends it with a checkpoint and `preemption.TrainingPreempted`
        (`SystemExit` status 75); an out-of-memory error with `memory.TrainingOutOfMemoryError`.
        """
        if self.args.should_save:
            remove_stale_staging(self.args.output_dir)
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_good_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(
                    f"`resume_from_checkpoint`=True but {self.args.output_dir!r} holds no complete checkpoint-* folder: "
                    "train from scratch (resume_from_checkpoint=None) or pass a checkpoint path."
                )
        sharded = is_sharded(self.model)
        if self.model_wrapped is self.model and getattr(self.model, "_is_accelerate_prepared", False) and not sharded:
            # `evaluate()` before `train()` marks the bare model as prepared, and Accelerate would then never wrap it
            # in DDP (or shard it): the ranks' weights would silently drift apart. Let `train()` prepare it.
            self.model._is_accelerate_prepared = False
        if self.is_fsdp_enabled and not sharded:
            # CLIP's 0-d `logit_scale` (frozen) stays whole on every rank: `fully_shard` refuses scalars, and does
            # not move what it ignores to the device, so the student goes there first
            plugin = self.accelerator.state.fsdp_plugin
            ignore_scalar_parameters(plugin, self.model)
            family = self.accelerator.unwrap_model(self.model).student.family
            wrap_student_layers(plugin, self.model, family.encoder_layer_classes, family.title)
            self.model.to(self.args.device)
        # a stream resumes from the positions its checkpoint saved (None: by replay, see `stream_resume`)
        self._stream_start = None
        if resume_from_checkpoint and is_stream(self.train_dataset):
            self._stream_start = positions_to_resume(self, resume_from_checkpoint)
        return run_preemptible(
            self, super().train, resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs
        )

    def get_train_dataloader(self):
        """`Trainer`'s; a `ShardedStream` gets its own loader in each process, placed where the resume left it."""
        if not is_stream(self.train_dataset):
            return super().get_train_dataloader()
        signals, workers = self.args.preemption_signals, self.args.dataloader_num_workers
        worker_init = IgnoreSignalsInWorker(signals, None) if signals and workers > 0 else None
        return stream_loader(self, self.train_dataset, getattr(self, "_stream_start", None), worker_init)

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """A stream placed at its saved position skips nothing; anything else as in `Trainer` (map-style: indices
        only; a stream without a saved position: replay)."""
        if is_stream(self.train_dataset) and getattr(self, "_stream_start", None) is not None:
            return dataloader
        return super().get_resumed_dataloader(dataloader, num_batches)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """`Trainer`'s; the position a stream's batch carries is recorded and removed before the model sees it."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        positions = getattr(self, "_stream_positions", None)
        if positions is not None:
            for batch in batches:
                positions.take(batch)
        return batches, num_items

    def _save_rng_state(self, output_dir: str) -> None:
        """`Trainer`'s, plus each process's stream position (`data_state_rank<r>.json`)."""
        super()._save_rng_state(output_dir)
        save_positions(self, output_dir)

    def _get_dataloader(self, *args, **kwargs):
        """`Trainer`'s data loader, whose worker processes ignore the preemption signals (only the main process
        handles them and writes the checkpoint; see `preemption`)."""
        loader = super()._get_dataloader(*args, **kwargs)
        signals = self.args.preemption_signals
        if signals and getattr(loader, "num_workers", 0) > 0:
            loader.worker_init_fn = IgnoreSignalsInWorker(signals, loader.worker_init_fn)
        return loader

    def _inner_training_loop(self, batch_size=None, *args, **kwargs):
        """One attempt of the Trainer's loop; out-of-memory errors are retried or explained (see `memory`)."""
        return self._batch_search.run_attempt(super()._inner_training_loop, batch_size, *args, **kwargs)

    def evaluation_loop(self, *args, **kwargs):
        """`Trainer.evaluation_loop`; under FSDP before `train()`, the student is evaluated as it is, unsharded.

        Accelerate's FSDP2 shards a model only together with its optimizer, which `train()` creates; until then every
        process holds the whole student, and evaluates its own share of the evaluation set with it.
        """
        if not self.is_fsdp_enabled or is_sharded(self.model):
            return super().evaluation_loop(*args, **kwargs)
        self.model.to(self.args.device)
        self.is_fsdp_enabled = False
        try:
            return super().evaluation_loop(*args, **kwargs)
        finally:
            self.is_fsdp_enabled = True

    def _save_checkpoint(self, model, trial) -> None:
        """Write the checkpoint under a temporary name and publish it with one atomic rename."""
        save_checkpoint_atomically(self, super()._save_checkpoint, model, trial)

    def _get_output_dir(self, trial) -> str:
        staging = getattr(self, "_checkpoint_staging_dir", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the student as a plain model of its class (`CLIPModel`, `SiglipModel`, ...; safetensors) + processor,
        and the trainer's own state."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        bundle = self.accelerator.unwrap_model(self.model)
        clip = bundle.student.clip
        clip_state = None
        if state_dict is not None:
            prefix = "student.clip."
            clip_state = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        clip.save_pretrained(output_dir, state_dict=clip_state, safe_serialization=True)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        if len(bundle.projections):
            if state_dict is not None:  # FSDP: the gathered full weights (the module itself holds shards)
                proj = {k[len("projections.") :]: v for k, v in state_dict.items() if k.startswith("projections.")}
            else:
                proj = bundle.projections.state_dict()
            proj = {k: v.detach().contiguous().cpu() for k, v in proj.items()}
            safetensors.torch.save_file(proj, os.path.join(output_dir, PROJECTIONS_NAME))
        state = {
            "weighting": self.weighting.state_dict(),
            "weighting_name": self.weighting.name,
            "bad_steps": self._bad_steps,
            "nonfinite_steps": self._nonfinite_steps,
            "class_names": self.class_names,
            "distributed_setup": self.distributed_setup(),
            "teachers": [
                {"name": s.name, "role": s.role, "input": s.input, "match": s.match, "coef": s.coef}
                for s in self.teacher_specs
            ],
        }
        with open(os.path.join(output_dir, STATE_NAME), "w") as f:
            json.dump(state, f, indent=2)
        with open(os.path.join(output_dir, CONFIG_JSON_NAME), "w") as f:
            f.write(self.args.to_json_string())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Restore the student, the projections and the weighting state written by `_save`."""
        bundle = self.accelerator.unwrap_model(model if model is not None else self.model)
        proj_path = os.path.join(resume_from_checkpoint, PROJECTIONS_NAME)
        if is_sharded(bundle):  # FSDP: every process reads the full weights and keeps its shards
            load_full_state_into_sharded(bundle, student_state_in_bundle(bundle, resume_from_checkpoint))
        else:
            load_student_weights(bundle.student.clip, resume_from_checkpoint)
            if os.path.isfile(proj_path):
                bundle.projections.load_state_dict(safetensors.torch.load_file(proj_path))
        state_path = os.path.join(resume_from_checkpoint, STATE_NAME)
        if os.path.isfile(state_path):
            with open(state_path) as f:
                state = json.load(f)
            self.weighting.load_state_dict(state.get("weighting", {}))
            self._bad_steps = int(state.get("bad_steps", 0))
            self._nonfinite_steps = int(state.get("nonfinite_steps", 0))

    def _load_best_model(self) -> None:
        """`load_best_model_at_end`: checkpoints hold a plain `CLIPModel`, so load them as `_save` wrote them (the
        Trainer's own loader would put CLIP keys into the bundle's state dict and fail)."""
        if self.is_deepspeed_enabled:
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """`Trainer`'s; under FSDP without its extra full copy of the weights (`model.safetensors` holds them)."""
        if not self.is_fsdp_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        from accelerate.utils import save_fsdp_optimizer

        # the full optimizer state gathered from the shards (`optimizer.bin`, read back by the Trainer)
        save_fsdp_optimizer(
            self.accelerator.state.fsdp_plugin, self.accelerator, self.optimizer, self.model, output_dir
        )
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))


def student_state_in_bundle(bundle: nn.Module, checkpoint_dir: str) -> dict[str, torch.Tensor]:
    """The student weights (or LoRA adapter) and projections of a checkpoint, under the bundle's parameter names.

    For loading into a sharded (FSDP) `StudentBundle`, which takes full tensors by name (see
    `distributed.load_full_state_into_sharded`).
    """
    names = {m: n for n, m in bundle.named_modules()}
    clip = bundle.student.clip
    base_prefix = names[bundle.student.base] + "."
    adapter = os.path.join(checkpoint_dir, "adapter_model.safetensors")
    if os.path.isfile(adapter) and hasattr(clip, "peft_config"):
        # adapter files drop the adapter's name from the keys (`...lora_A.weight` for `...lora_A.default.weight`)
        clip_prefix = names[clip] + "."
        tag = f".{getattr(clip, 'active_adapter', 'default')}."
        index = {k[len(clip_prefix) :].replace(tag, "."): k for k in bundle.state_dict() if k.startswith(clip_prefix)}
        saved = safetensors.torch.load_file(adapter)
        unknown = [k for k in saved if k not in index]
        if unknown:
            raise RuntimeError(f"Adapter in {checkpoint_dir!r} does not match the student's adapters: {unknown[:5]}.")
        state = {index[k]: v for k, v in saved.items()}
    else:
        full = os.path.join(checkpoint_dir, "model.safetensors")
        if not os.path.isfile(full):
            load_student_weights(clip, checkpoint_dir)  # raises the error that says what is missing
        state = {base_prefix + k: v for k, v in safetensors.torch.load_file(full).items()}
    proj_path = os.path.join(checkpoint_dir, PROJECTIONS_NAME)
    if os.path.isfile(proj_path):
        state.update({f"projections.{k}": v for k, v in safetensors.torch.load_file(proj_path).items()})
    return state


def load_student_weights(clip: nn.Module, checkpoint_dir: str) -> None:
    """Load the student's weights from a checkpoint written by `MMTARDTrainer._save` (safetensors only)."""
    from ..models import base_model as base_of

    adapter = os.path.join(checkpoint_dir, "adapter_model.safetensors")
    full = os.path.join(checkpoint_dir, "model.safetensors")
    if os.path.isfile(adapter) and hasattr(clip, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(clip, safetensors.torch.load_file(adapter))
        return
    if not os.path.isfile(full) and os.path.isfile(adapter):
        raise ValueError(
            f"{checkpoint_dir!r} holds a LoRA adapter (adapter_model.safetensors) but the model is a plain "
            f"{type(clip).__name__}: wrap it first with `mmt_ard.training.lora.apply_lora` (same r/alpha/targets), or merge "
            "the adapter into it with `mmt_ard.training.lora.merge_checkpoint`."
        )
    if not os.path.isfile(full):
        raise FileNotFoundError(
            f"`resume_from_checkpoint`={checkpoint_dir!r} holds no model.safetensors: pick a checkpoint-* folder "
            "written by MMTARDTrainer."
        )
    state = safetensors.torch.load_file(full)
    missing, unexpected = base_of(clip).load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if "position_ids" not in k]:
        raise RuntimeError(
            f"Checkpoint {checkpoint_dir!r} does not match the student: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
