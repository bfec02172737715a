"""`RobustEvalCallback`: a small robust zero-shot evaluation every `eval_steps` during training.

>>> trainer = MMTARDTrainer(model=clip, args=config, processing_class=processor, train_dataset=train)
>>> trainer.add_callback(RobustEvalCallback(test_set, trainer=trainer, protocol="quick", num_samples=128))

Logged metrics (through `trainer.log`, so they reach every reporter): `eval_robust_clean_accuracy`,
`eval_robust_accuracy_eps2` (worst case at 2/255; one per eps), `eval_robust_num_samples`, and with checks on,
`eval_robust_flagged`. The student's training text head and train/eval mode are restored afterwards; attack gradients
are taken w.r.t. the input only, so parameter `.grad` is not touched. Under distributed training every process runs
the (identical) evaluation; only the main process's log reaches the reporters.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainerCallback

from ..models import ZeroShotCLIP
from ..runtime.distributed import is_sharded
from .datasets import EvalData, load_eval_data, short_name
from .protocols import get_protocol
from .robust_eval import ensure_fp32
from .sample_loop import evaluate_on_data
from .sharding import EvalGroup


class RobustEvalCallback(TrainerCallback):
    """Robust accuracy of the student every `eval_steps` optimizer steps.

    Args:
        data: `EvalData`, a `datasets.Dataset` (an image or `pixel_values` column and a label column with a
            `ClassLabel`), or a dataset spec string (local path, name, Hub id).
        trainer: the `Trainer` whose `log` records the metrics (without it, metrics go to `state.log_history`).
        protocol: preset or `Protocol` (default `quick`: PGD-10 at 2/255).
        eval_steps: run every this many steps (default: `args.eval_steps`, else `args.logging_steps`).
        num_samples: images evaluated (a seeded subset, the same every time).
        prefix: metric name prefix (must start with `eval_` to count as an evaluation metric).
        checks: also run the gradient-masking checks (slower).
        class_names: class names when `data` is a `datasets.Dataset` without a `ClassLabel`.
        templates: prompt templates (default: the trainer's `prompt_templates`, else the protocol's).
        **overrides: other `Protocol` fields (`eps`, `attacks`, `pgd_steps`, `batch_size`, ...).
    """

    def __init__(
        self,
        data,
        *,
        trainer=None,
        protocol="quick",
        eval_steps: int | None = None,
        num_samples: int | None = 128,
        prefix: str = "eval_robust",
        checks: bool = False,
        class_names: list[str] | None = None,
        templates: list[str] | None = None,
        **overrides,
    ):
        if not prefix.startswith("eval_"):
            raise ValueError(f"`prefix`={prefix!r} must start with 'eval_' so the Trainer logs it as evaluation.")
        if eval_steps is not None and eval_steps < 1:
            raise ValueError(f"`eval_steps`={eval_steps} must be >= 1.")
        self.protocol = get_protocol(protocol, num_samples=num_samples, checks=checks, **overrides)
        self.data_spec = data
        self.trainer = trainer
        self.eval_steps = eval_steps
        self.prefix = prefix
        self.class_names = class_names
        self.templates = templates
        self._data: EvalData | None = None
        self._wrapper: ZeroShotCLIP | None = None
        self.history: list[dict] = []

    # ---- helpers ----
    def _student(self, model, processing_class) -> ZeroShotCLIP:
        if self.trainer is not None:
            model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        model = getattr(model, "module", model)  # DDP
        student = getattr(model, "student", model)  # MMTARDTrainer's StudentBundle
        if isinstance(student, ZeroShotCLIP):
            return student
        if isinstance(student, nn.Module) and hasattr(student, "get_image_features"):
            if self._wrapper is None or self._wrapper.clip is not student:
                processor = processing_class or getattr(self.trainer, "processing_class", None)
                if processor is None:
                    raise ValueError(
                        "RobustEvalCallback needs the CLIPProcessor: give the Trainer `processing_class`."
                    )
                self._wrapper = ZeroShotCLIP(student, processor, logit_scale=self.protocol.logit_scale)
            return self._wrapper.to(next(student.parameters()).device)
        raise TypeError(f"RobustEvalCallback cannot find a CLIP student in a {type(model).__name__}.")

    def _eval_data(self, image_size: int) -> EvalData:
        if self._data is None:
            name = short_name(self.data_spec) if isinstance(self.data_spec, str) else "callback"
            templates = self.templates
            if templates is None and self.trainer is not None:
                templates = getattr(self.trainer.args, "prompt_templates", None)
            meta = {}
            if self.class_names is not None:
                meta["classnames"] = list(self.class_names)
            if templates:
                meta["templates"] = [templates] if isinstance(templates, str) else list(templates)
            user_meta = {name: meta}
            self._data = load_eval_data(
                self.data_spec,
                image_size=image_size,
                num_samples=self.protocol.num_samples,
                seed=self.protocol.seed,
                split=self.protocol.split,
                templates="ensemble" if templates else self.protocol.templates,
                single_template=self.protocol.single_template,
                user_meta=user_meta,
                name=name,
            )
        return self._data

    def evaluate(self, model, processing_class=None) -> dict[str, float]:
        """Run the small robust evaluation now; returns the metrics (also logged by the callback hooks)."""
        student = self._student(model, processing_class)
        evaluated = ensure_fp32(student)  # an fp32 copy if the student trains in half precision
        data = self._eval_data(evaluated.image_size)
        saved = (student.text_head, student._head_key)
        if any(p.requires_grad for p in student.base.text_model.parameters()):
            # the text tower trains: a head cached at an earlier step is stale
            evaluated._head_cache.pop((tuple(data.class_names), tuple(data.templates)), None)
        # FSDP: every process must run the sharded student's forwards together, so each evaluates every image
        sharded = is_sharded(model) or (self.trainer is not None and is_sharded(self.trainer.model))
        group = EvalGroup() if sharded else EvalGroup.current()
        try:
            result = evaluate_on_data(evaluated, data, self.protocol, progress=False, group=group)
        finally:
            student.text_head, student._head_key = saved  # the training head (a fresh copy shares it otherwise)
        metrics = {
            f"{self.prefix}_clean_accuracy": result["clean_accuracy"],
            f"{self.prefix}_num_samples": float(result["num_samples"]),
        }
        for value in result["robust_accuracy"].values():
            metrics[f"{self.prefix}_accuracy_eps{value['eps'] * 255:g}"] = value["worst_case"]
        if self.protocol.checks:
            metrics[f"{self.prefix}_flagged"] = float(result["flagged"])
        return metrics

    # ---- hooks ----
    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        every = self.eval_steps or getattr(args, "eval_steps", None) or args.logging_steps
        every = int(every) if every >= 1 else max(1, int(every * state.max_steps))  # a ratio of max_steps
        if state.global_step == 0 or state.global_step % every:
            return control
        with torch.enable_grad():
            metrics = self.evaluate(model, processing_class)
        self.history.append({"step": state.global_step, **metrics})
        if self.trainer is not None:
            self.trainer.log(dict(metrics))
        else:
            state.log_history.append({**metrics, "step": state.global_step})
        return control
