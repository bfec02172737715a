"""Captioning and VQA evaluation sets on local disk, in the COCO / VQA json layouts.

A dataset is a folder (or one json file) in one of these layouts; images are looked up next to the json file, or in
its `images/` subfolder:

* **captioning, COCO layout** (`captions.json`, e.g. COCO's `captions_val2014.json`, Flickr30k in COCO style):
  `{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": "..."}]}`;
* **captioning, Karpathy layout** (`dataset_coco.json`, `dataset_flickr30k.json`): `{"images": [{"filename":
  "a.jpg", "filepath": "val2014", "split": "test", "sentences": [{"raw": "..."}]}]}` (the `test` split is used when
  images carry one);
* **VQA, VQAv2 layout** (VQAv2, OK-VQA, VizWiz in VQA format): `questions.json` `{"questions": [{"question_id": 1,
  "image_id": 1, "question": "..."}]}` and `annotations.json` `{"annotations": [{"question_id": 1, "answers":
  [{"answer": "..."}, ...]}]}`;
* **VQA, TextVQA layout** (`questions.json` with answers inline): `{"data": [{"question_id": 1, "image_id": "ab12",
  "question": "...", "answers": ["...", ...]}]}`.

A question's image is its `image_file` / `file_name` when it has one, else the image file whose name (without
extension) is the `image_id` or ends in it as a number (`COCO_val2014_000000000042.jpg` for `image_id` 42).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from ..datasets import subset_indices

TASKS = ("captioning", "vqa")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")


@dataclass
class LVLMSample:
    """One evaluation sample.

    Args:
        sample_id: the image id (captioning) or question id (VQA), as a string.
        image_path: the image file.
        references: the reference captions, or the annotators' answers (VQAv2: 10).
        question: the question (VQA), None for captioning.
    """

    sample_id: str
    image_path: str
    references: list[str]
    question: str | None = None


@dataclass
class LVLMTaskData:
    """A seeded subset of a captioning or VQA set.

    Args:
        name: short name used in reports.
        task: `captioning` or `vqa`.
        samples: the evaluated samples, in subset order.
        dataset_size: number of samples in the whole set.
        source: where it was read from.
        layout: the json layout recognised.
    """

    name: str
    task: str
    samples: list[LVLMSample]
    dataset_size: int
    source: str
    layout: str
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)


def _load_json(path: str) -> dict | list:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from err


def _image_dirs(json_path: str) -> list[str]:
    root = os.path.dirname(os.path.abspath(json_path))
    return [root, os.path.join(root, "images")]


def _find_file(name: str, dirs: list[str]) -> str | None:
    if os.path.isabs(name) and os.path.isfile(name):
        return name
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path):
            return path
    return None


class _ImageIndex:
    """Image files of some folders, looked up by stem or by the number their stem ends with."""

    def __init__(self, dirs: list[str]):
        self.by_stem: dict[str, str] = {}
        self.by_number: dict[int, str] = {}
        for d in dirs:
            if not os.path.isdir(d):
                continue
            for name in sorted(os.listdir(d)):
                stem, ext = os.path.splitext(name)
                if ext.lower() not in IMAGE_EXTENSIONS:
                    continue
                path = os.path.join(d, name)
                self.by_stem.setdefault(stem, path)
                digits = re.search(r"(\d+)$", stem)
                if digits:
                    self.by_number.setdefault(int(digits.group(1)), path)

    def find(self, image_id) -> str | None:
        key = str(image_id)
        if key in self.by_stem:
            return self.by_stem[key]
        return self.by_number.get(int(key)) if key.isdigit() else None


def _resolve_spec(spec: str) -> tuple[str, str | None]:
    """The main json file of a dataset spec, and the VQA annotations file when there is one."""
    if os.path.isfile(spec):
        sibling = os.path.join(os.path.dirname(os.path.abspath(spec)), "annotations.json")
        return spec, sibling if "question" in os.path.basename(spec) and os.path.isfile(sibling) else None
    if not os.path.isdir(spec):
        raise FileNotFoundError(
            f"Dataset {spec!r} does not exist: give a folder holding captions.json (COCO or Karpathy layout) or "
            "questions.json (+ annotations.json), or the json file itself (docs/lvlm.md, Data)."
        )
    for name in ("captions.json", "questions.json"):
        path = os.path.join(spec, name)
        if os.path.isfile(path):
            annotations = os.path.join(spec, "annotations.json")
            return path, annotations if name == "questions.json" and os.path.isfile(annotations) else None
    found = sorted(f for f in os.listdir(spec) if f.endswith(".json"))
    raise FileNotFoundError(
        f"Dataset folder {spec!r} has no captions.json nor questions.json (json files there: {found or 'none'}): "
        "name the file, or give its path (docs/lvlm.md, Data)."
    )


def _captions_coco(data: dict, path: str) -> tuple[list[LVLMSample], str]:
    refs: dict = {}
    for ann in data["annotations"]:
        refs.setdefault(ann["image_id"], []).append(str(ann["caption"]).strip())
    dirs = _image_dirs(path)
    samples = []
    for img in sorted(data["images"], key=lambda im: str(im["id"])):
        if img["id"] not in refs:
            continue
        file = _find_file(img["file_name"], dirs)
        if file is None:
            raise FileNotFoundError(f"{path}: image {img['file_name']!r} (id {img['id']}) not found in {dirs}.")
        samples.append(LVLMSample(str(img["id"]), file, refs[img["id"]]))
    return samples, "coco-captions"


def _captions_karpathy(data: dict, path: str, split: str | None) -> tuple[list[LVLMSample], str]:
    images = data["images"]
    if split is None and any("split" in im for im in images):
        split = "test"
    dirs = _image_dirs(path)
    samples = []
    for i, img in enumerate(images):
        if split is not None and img.get("split") != split:
            continue
        name = os.path.join(img.get("filepath", ""), img["filename"])
        file = _find_file(name, dirs) or _find_file(img["filename"], dirs)
        if file is None:
            raise FileNotFoundError(f"{path}: image {name!r} not found in {dirs}.")
        image_id = img.get("cocoid", img.get("imgid", img.get("id", i)))
        samples.append(LVLMSample(str(image_id), file, [s["raw"].strip() for s in img["sentences"]]))
    return samples, "karpathy"


def _vqa(questions: list[dict], answers: dict, path: str) -> list[LVLMSample]:
    dirs = _image_dirs(path)
    index = None
    samples = []
    for q in questions:
        qid = q["question_id"]
        if qid not in answers:
            raise ValueError(f"{path}: question {qid} has no answers (annotations missing for it).")
        name = q.get("image_file") or q.get("file_name")
        file = _find_file(name, dirs) if name else None
        if file is None:
            index = index or _ImageIndex(dirs)
            file = index.find(q["image_id"])
        if file is None:
            raise FileNotFoundError(f"{path}: no image for question {qid} (image_id {q['image_id']!r}) in {dirs}.")
        samples.append(LVLMSample(str(qid), file, answers[qid], question=str(q["question"]).strip()))
    return samples


def load_lvlm_data(
    spec: str,
    *,
    name: str | None = None,
    num_samples: int | None = 500,
    seed: int = 0,
    split: str | None = None,
) -> LVLMTaskData:
    """Read a captioning or VQA set and take its seeded subset.

    Args:
        spec: a dataset folder or json file (layouts in this module's docstring).
        name: name in reports (default: the folder or file name).
        num_samples: samples evaluated (a seeded subset; None: all).
        seed: the subset's seed.
        split: Karpathy layout only: the split to use (default `test`).
    """
    path, annotations_path = _resolve_spec(spec)
    data = _load_json(path)
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        samples, layout = _captions_coco(data, path)
        task = "captioning"
    elif isinstance(data, dict) and "images" in data and data["images"] and "sentences" in data["images"][0]:
        samples, layout = _captions_karpathy(data, path, split)
        task = "captioning"
    elif isinstance(data, dict) and "questions" in data:
        if annotations_path is None:
            raise FileNotFoundError(
                f"{path}: VQAv2-layout questions need their answers: put annotations.json beside it."
            )
        anns = _load_json(annotations_path)["annotations"]
        answers = {a["question_id"]: [str(x["answer"]) for x in a["answers"]] for a in anns}
        samples, layout, task = _vqa(data["questions"], answers, path), "vqav2", "vqa"
    elif isinstance(data, dict) and "data" in data:
        rows = data["data"]
        answers = {r["question_id"]: [str(a) for a in r["answers"]] for r in rows if "answers" in r}
        samples, layout, task = _vqa(rows, answers, path), "textvqa", "vqa"
    else:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path}: unknown layout (top-level keys {keys}); expected COCO captions (images + annotations), Karpathy "
            "(images with sentences), VQAv2 (questions + annotations.json) or TextVQA (data) (docs/lvlm.md, Data)."
        )
    if not samples:
        raise ValueError(f"{path}: no samples" + (f" in split {split!r}" if split else "") + ".")
    indices = subset_indices(len(samples), num_samples, seed)
    label = name or os.path.basename(os.path.normpath(spec if os.path.isdir(spec) else os.path.dirname(spec) or spec))
    return LVLMTaskData(
        name=label,
        task=task,
        samples=[samples[i] for i in indices],
        dataset_size=len(samples),
        source=os.path.abspath(spec),
        layout=layout,
        meta={"indices_head": indices[:10], "seed": seed},
    )
