"""The model card (`README.md`) of an LVLM whose vision tower was replaced by a robust student.

`render_lvlm_card(info)` is pure: the same dictionary always gives the same text. The base LVLM's license (from its
own card's front matter) is kept; the student's provenance and robustness table come from its training run's
`results.json` when the student is a run's output_dir.
"""

from __future__ import annotations

import os

import yaml

from ..training.model_card import robustness_table

LICENSE_KEYS = ("license", "license_name", "license_link")


def read_front_matter(readme_path: str) -> dict:
    """The YAML front matter of a model card (an empty dict when there is none or it does not parse)."""
    try:
        with open(readme_path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _ref(name: str | None) -> str:
    if not name:
        return "-"
    if os.path.exists(name) or name.startswith(("/", ".")):
        return f"`{name}`"
    return f"[`{name}`](https://huggingface.co/{name})"


def render_lvlm_card(info: dict) -> str:
    """Markdown card with YAML front matter.

    Args:
        info: `name`, `lvlm` (Hub id or path), `architecture`, `tower` (`clip`/`siglip`), `student`, `student_path`,
            `license` (the base card's `license`/`license_name`/`license_link`), `changes` (list of lines: what was
            done to the tower), `hub_model_id` (optional), `provenance` (the student's training `results.json`, or
            empty), `mmt_ard_version`.
    """
    license_meta = {k: v for k, v in (info.get("license") or {}).items() if k in LICENSE_KEYS and v}
    meta = {**(license_meta or {"license": "other"})}
    if info.get("lvlm") and not os.path.exists(info["lvlm"]):
        meta["base_model"] = info["lvlm"]
    meta.update(
        {
            "library_name": "transformers",
            "pipeline_tag": "image-text-to-text",
            "tags": ["mmt-ard", "adversarial-robustness", "robust-vision-encoder", info.get("tower", "vision")],
        }
    )
    front = "---\n" + yaml.safe_dump(meta, sort_keys=False).strip() + "\n---"
    name = info.get("name") or "robust-lvlm"
    arch = info.get("architecture", "-")
    parts = [
        front,
        "",
        f"# {name}",
        "",
        (
            f"The vision-language model {_ref(info.get('lvlm'))} (`{arch}`) with its vision tower replaced by the "
            f"adversarially robust image encoder {_ref(info.get('student'))}, exported with "
            f"[mmt_ard](https://arxiv.org/abs/2511.17448) `mmt-ard-export`. Only the vision tower's weights changed: "
            "the projector, the language model, the config, the processor, the tokenizer, the chat template and the "
            "generation config are the base model's own, byte for byte."
        ),
        "",
        "## What was done to the tower",
        "",
    ]
    parts += [f"- {line}" for line in info.get("changes", [])] or ["- the student's tensors were copied as they are"]
    provenance = info.get("provenance") or {}
    parts += ["", "## The robust student", ""]
    parts.append(
        f"- **Student:** {_ref(info.get('student'))}"
        + (
            f" (weights read from `{info['student_path']}`)"
            if info.get("student_path") and info["student_path"] != info.get("student")
            else ""
        )
    )
    if provenance:
        parts.append(f"- **Trained with preset:** `{provenance.get('preset', '-')}`")
        parts.append(f"- **Student before training:** {_ref(provenance.get('base_model'))}")
        teachers = provenance.get("teachers") or []
        if teachers:
            parts.append(
                "- **Teachers:** " + ", ".join(f"{t.get('role', '-')}: {_ref(t.get('model'))}" for t in teachers)
            )
        robustness = provenance.get("robustness") or {}
        parts += [
            "",
            f"Robustness of the student as a zero-shot classifier (protocol: {robustness.get('protocol', '-')}):",
            "",
        ]
        parts.append(robustness_table(robustness))
    else:
        parts.append(
            "- The student's training record (`results.json` of its run) was not available: see the student's own "
            "model card for its provenance and robustness."
        )
    parts += [
        "",
        "## Robustness of this LVLM",
        "",
        (
            "Measure it with `mmt-ard-eval-lvlm` (APGD on the language model's loss of the reference captions/answers, "
            "L-inf 2/255 and 4/255, CIDEr and VQA accuracy; see the mmt_ard documentation, docs/lvlm.md):"
        ),
        "",
        "```bash",
        (
            f"mmt-ard-eval-lvlm --models {info.get('hub_model_id') or 'path/to/this/folder'} "
            "--datasets data/coco_val --output-dir eval_lvlm"
            + (
                ' --caption-prompt "caption en" --vqa-prompt "answer en {question}"'
                if info.get("prompt") == "prefix"
                else ""
            )
        ),
        "```",
        "",
        "## License",
        "",
        "The base model's license applies"
        + (f": `{license_meta.get('license')}`" if license_meta.get("license") else "")
        + (f" ({license_meta['license_link']})" if license_meta.get("license_link") else "")
        + ". The student's own license applies to the vision tower's weights.",
        "",
        "## Usage",
        "",
        "```python",
        f"from transformers import AutoProcessor, {arch}",
        "",
        f'model = {arch}.from_pretrained("{info.get("hub_model_id") or "path/to/this/folder"}")',
        f'processor = AutoProcessor.from_pretrained("{info.get("hub_model_id") or "path/to/this/folder"}")',
        "```",
        "",
        f"_Exported by mmt_ard {info.get('mmt_ard_version', '')}._",
        "",
    ]
    return "\n".join(parts)
