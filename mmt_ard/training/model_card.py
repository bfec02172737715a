"""The model card (`README.md`) of a robust student, rendered from a results dictionary.

`render_model_card(results)` is a pure function: the same dictionary always gives the same text, and nothing is read
from disk, the network or the trainer. `examples/run_mmt_ard.py` fills the dictionary; its keys are:

* `model_name`, `base_model` (id/path of the student before training, or a description), `base_model_id` (a Hub id
  for the front-matter, optional), `hub_model_id` (optional), `library_version` (optional);
* `model_family`: `{"name", "title", "class"}` of the student (`family_summary`; CLIP when absent);
* `teachers`: list of `{"name", "role", "model", "processor", "input", "match", "coef"}`;
* `preset` and `settings`: every attack / loss / weighting field of the config (`MMTARD_SETTING_KEYS`);
* `lora`: `None`, or `{"r", "alpha", "dropout", "target_modules", "saved"}` (`saved`: `merged` or `adapter`);
* `dataset`: `{"train", "eval", "num_train", "num_eval", "num_classes", "class_names", "skipped"}`;
* `training`: `{"steps", "batch_size", "images_per_second", "wall_clock_s", "hardware", "num_processes",
  "distributed_setup" (optional, `MMTARDTrainer.distributed_setup()`), "precision" (optional,
  `mmt_ard.training.precision.describe`), ...}`;
* `robustness`: `{"protocol", "rows": [{"model", "attack", "eps", "clean_accuracy", "robust_accuracy",
  "num_clean", "num_robust"}], "notes": [...]}`;
* `extra_sections`: optional `{title: markdown}` appended before the citation.
"""

from __future__ import annotations

import os
from enum import Enum

MMTARD_SETTING_KEYS = (
    "attack_eps",
    "attack_step_size",
    "attack_steps",
    "attack_norm",
    "attack_momentum",
    "attack_random_init",
    "attack_loss",
    "attack_target",
    "attack_autocast",
    "eval_attack_eps",
    "eval_attack_steps",
    "eval_attack_step_size",
    "weighting",
    "robust_coef",
    "clean_coef",
    "original_coef",
    "feature_weight",
    "feature_loss",
    "ce_weight",
    "self_kl_weight",
    "temperature",
    "kl_reduction",
    "logit_scale",
    "use_model_logit_scale",
    "prompt_templates",
    "train_text_tower",
    "teacher_dtype",
    "precision",
    "bf16",
    "tf32",
    "sigmoid_gamma",
    "sigmoid_momentum",
    "mtard_lr",
    "learning_rate",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "bad_samples",
)

CITATION = """@article{li2025mmtard,
  title   = {{MMT-ARD}: Multimodal Multi-Teacher Adversarial Distillation for Robust Vision-Language Models},
  author  = {Li, Yuqi and Dong, Junhao and Yang, Chuanguang and Wen, Shiping and Koniusz, Piotr and Huang, Tingwen
             and Tian, Yingli and Ong, Yew-Soon},
  journal = {arXiv preprint arXiv:2511.17448},
  year    = {2025}
}"""

DEFAULT_TAGS = ("mmt-ard", "adversarial-robustness", "distillation", "zero-shot-image-classification")
CLIP_FAMILY = {"name": "clip", "title": "CLIP", "class": "CLIPModel"}


def family_summary(zero_shot) -> dict:
    """`{"name", "title", "class"}` of a `ZeroShotCLIP`'s model family, for results.json and the model card."""
    return {"name": zero_shot.family.name, "title": zero_shot.family.title, "class": type(zero_shot.base).__name__}


def format_eps(eps: float | None) -> str:
    """`0.0313725` -> `8/255 (0.0314)`: budgets read best as multiples of 1/255."""
    if eps is None:
        return "-"
    eps = float(eps)
    if eps == 0:
        return "0"
    k = eps * 255
    if abs(k - round(k, 1)) < 1e-6:  # 8/255, 0.5/255, ...
        return f"{round(k, 1):g}/255 ({eps:.4f})"
    return f"{eps:.4g}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * float(value):.1f}"


def _value(value) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(repr(v) if isinstance(v, str) else str(v) for v in value)
    return "-" if value is None else str(value)


def _yaml_list(key: str, items) -> list[str]:
    items = [str(i) for i in items if i]
    if not items:
        return []
    return [f"{key}:"] + [f"- {_yaml_scalar(i)}" for i in items]


def _yaml_scalar(text: str) -> str:
    safe = text and all(c.isalnum() or c in "-_./" for c in text) and text[0] not in "-."
    return text if safe else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_hub_id(text: str | None) -> bool:
    return bool(text) and text.count("/") == 1 and not os.path.isabs(text) and not text.startswith((".", "~"))


def _model_ref(spec) -> str:
    """`` `id` ``, or "open_clip checkpoint `hf-hub:org/name`, converted" for a checkpoint `load_clip` converts."""
    from ..convert import describe_source

    described = describe_source(spec)
    return described if described != spec else f"`{spec}`"


def front_matter(results: dict) -> str:
    """YAML front-matter: library, tags, base model, datasets, metrics (parsed by the Hub)."""
    lines = [
        "---",
        "library_name: transformers",
        "license: apache-2.0",
        "pipeline_tag: zero-shot-image-classification",
    ]
    family = results.get("model_family") or CLIP_FAMILY
    tags = list(DEFAULT_TAGS) + [family["name"]]
    tags += [t for t in results.get("tags", []) if t not in tags]
    if results.get("preset") and results["preset"] not in tags:
        tags.append(results["preset"])
    lines += _yaml_list("tags", tags)
    base = results.get("base_model_id") or results.get("base_model")
    if isinstance(base, str) and base.startswith("hf-hub:"):  # an open_clip repository: the Hub id follows
        base = base[len("hf-hub:") :]
    if _is_hub_id(base):
        lines.append(f"base_model: {_yaml_scalar(base)}")
    dataset = results.get("dataset", {})
    hub_sets = [d for d in (dataset.get("train_id"), dataset.get("eval_id")) if _is_hub_id(d)]
    lines += _yaml_list("datasets", list(dict.fromkeys(hub_sets)))
    lines += _yaml_list("metrics", ["accuracy"])
    lines.append("---")
    return "\n".join(lines)


def robustness_table(robustness: dict) -> str:
    """The markdown table of clean and robust accuracy per model, attack and budget."""
    rows = robustness.get("rows", [])
    if not rows:
        return "_No evaluation was run._"
    out = [
        "| model | attack | eps | clean acc. (%) | robust acc. (%) | n clean | n robust |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.get('model', '-')} | {r.get('attack', '-')} | {format_eps(r.get('eps'))} | "
            f"{_pct(r.get('clean_accuracy'))} | {_pct(r.get('robust_accuracy'))} | {r.get('num_clean', '-')} | "
            f"{r.get('num_robust', '-')} |"
        )
    return "\n".join(out)


def render_model_card(results: dict) -> str:
    """Markdown model card with YAML front-matter for a student trained by `MMTARDTrainer`.

    Args:
        results: the dictionary described in this module's docstring; missing keys print as `-`.

    Returns:
        The card's text (ends with a newline).
    """
    name = results.get("model_name") or results.get("hub_model_id") or "mmt-ard-student"
    preset = results.get("preset", "-")
    settings = results.get("settings", {})
    teachers = results.get("teachers", [])
    dataset = results.get("dataset", {})
    training = results.get("training", {})
    robustness = results.get("robustness", {})
    lora = results.get("lora")
    family = results.get("model_family") or CLIP_FAMILY
    where = results.get("hub_model_id") or "path/to/this/folder"

    parts = [front_matter(results), "", f"# {name}", ""]
    parts.append(
        f"An adversarially robust {family['title']} image encoder trained with the `{preset}` preset of "
        "[mmt_ard](https://arxiv.org/abs/2511.17448) (multimodal multi-teacher adversarial robust distillation): "
        "the student is attacked with PGD during training and distilled from its teachers on clean and adversarial "
        "images. Pixels are in [0, 1] and normalisation happens inside the model, so attack budgets `eps` are in "
        "[0, 1] pixel units. The text tower is frozen unless `train_text_tower` says otherwise."
    )
    parts += [
        "",
        "## Models",
        "",
        f"- **Base model (student before training):** {_model_ref(results.get('base_model', '-'))}",
        f"- **Model family:** {family['title']} (`{family['class']}`)",
    ]
    if lora:
        parts.append(
            f"- **LoRA:** r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, target modules "
            f"{_value(lora.get('target_modules'))}; saved as {lora.get('saved', '-')}"
        )
    if results.get("hub_model_id"):
        parts.append(f"- **This model on the Hub:** `{results['hub_model_id']}`")
    if teachers:
        parts += [
            "",
            "| teacher | role | model | processor | input | matched to | coef |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in teachers:
            parts.append(
                f"| {t.get('name', '-')} | {t.get('role', '-')} | {_model_ref(t.get('model', '-'))} | "
                f"`{t.get('processor') or t.get('model', '-')}` | {t.get('input', '-')} | {t.get('match', '-')} | "
                f"{_value(t.get('coef'))} |"
            )
    else:
        parts += ["", "No teachers (single-model preset)."]

    parts += ["", "## Training recipe", "", f"- **Preset:** `{preset}`"]
    parts += ["", "| setting | value |", "|---|---|"]
    for key in MMTARD_SETTING_KEYS:
        if key in settings:
            value = settings[key]
            budget = key.endswith(("_eps", "step_size")) and isinstance(value, (int, float))
            shown = format_eps(value) if budget else _value(value)
            parts.append(f"| `{key}` | {shown} |")
    for key in sorted(k for k in settings if k not in MMTARD_SETTING_KEYS):
        parts.append(f"| `{key}` | {_value(settings[key])} |")

    parts += ["", "## Data", ""]
    parts.append(f"- **Training data:** {dataset.get('train', '-')} ({dataset.get('num_train', '-')} samples)")
    parts.append(f"- **Evaluation data:** {dataset.get('eval', '-')} ({dataset.get('num_eval', '-')} samples)")
    names = dataset.get("class_names") or []
    shown_names = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    parts.append(
        f"- **Classes:** {dataset.get('num_classes', len(names) or '-')}" + (f" ({shown_names})" if names else "")
    )
    parts.append(f"- **Bad samples skipped:** {dataset.get('skipped', 0)}")

    parts += ["", "## Training cost", ""]
    wall = training.get("wall_clock_s")
    ips = training.get("images_per_second")
    parts.append(
        f"- **Optimizer steps:** {training.get('steps', '-')} at a global batch of {training.get('batch_size', '-')}"
    )
    parts.append(f"- **Throughput:** {'-' if ips is None else f'{ips:.1f}'} training images/s")
    parts.append(f"- **Wall-clock:** {'-' if wall is None else f'{wall:.1f} s'} of training")
    if training.get("total_wall_clock_s") is not None:
        parts.append(f"- **Whole run (data, teachers, evaluation, saving):** {training['total_wall_clock_s']:.1f} s")
    parts.append(f"- **Hardware:** {training.get('hardware', '-')} x {training.get('num_processes', 1)} process(es)")
    if training.get("distributed_setup"):  # `MMTARDTrainer.distributed_setup()`: what really ran
        parts.append(f"- **Distributed setup:** {training['distributed_setup']}")
    if training.get("precision"):  # `precision.describe`: what ran in bf16 and what in fp32
        parts.append(f"- **Precision:** {training['precision']}")
    for key, value in training.get("phases", {}).items():
        parts.append(f"- **{key}:** {value}")

    parts += ["", "## Robustness", ""]
    parts.append(f"Protocol: **{robustness.get('protocol', '-')}**.")
    parts += ["", robustness_table(robustness)]
    for note in robustness.get("notes", []):
        parts += ["", f"- {note}"]

    for title, body in results.get("extra_sections", {}).items():
        parts += ["", f"## {title}", "", body]

    parts += [
        "",
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModel, AutoProcessor",
        "",
        f'model = AutoModel.from_pretrained("{where}")  # a {family["class"]}',
        f'processor = AutoProcessor.from_pretrained("{where}")',
        "# attack budgets apply to [0, 1] pixels; normalise with the processor's image_mean / image_std",
        "```",
        "",
        "## Citation",
        "",
        (
            "This model was trained with MMT-ARD (Li, Dong, Yang, Wen, Koniusz, Huang, Tian, Ong; "
            "[arXiv 2511.17448](https://arxiv.org/abs/2511.17448), 2025):"
        ),
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(parts)


def save_model_card(results: dict, output_dir: str) -> str:
    """Write `render_model_card(results)` to `output_dir/README.md`; returns the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_model_card(results))
    return path
