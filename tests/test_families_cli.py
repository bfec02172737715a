"""A SigLIP student through the commands: `mmt-ard-train` distils it from CLIP teachers on local parquet data, saves
a `SiglipModel` + processor, resumes; `mmt-ard-eval` evaluates the run with the fixed scale and the model's own."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmt_ard.cli import evaluate as eval_cli
from mmt_ard.cli.train import main as train_main
from mmt_ard.cli.train_args import parse_args
from mmt_ard.embedded.tiny import build_tiny_clip, build_tiny_siglip

CLASSES = ["zero", "one", "two"]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny SigLIP student and CLIP teacher saved as folders; real digits as parquet files with a JSON sidecar."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("family_cli")
    digits = load_digits()
    keep = np.flatnonzero(digits.target < 3)[:48]
    images = [_png((digits.images[i] * 255 / 16).astype(np.uint8)) for i in keep]
    labels = [int(digits.target[i]) for i in keep]
    paths = {}
    for split, rows in (("train", slice(0, 32)), ("eval", slice(32, 48))):
        table = pa.table({"image": pa.array(images[rows], pa.binary()), "label": pa.array(labels[rows], pa.int64())})
        pq.write_table(table, root / f"{split}.parquet")
        (root / f"{split}.json").write_text(json.dumps({"classes": CLASSES}))
        paths[split] = str(root / f"{split}.parquet")
    student, processor = build_tiny_siglip(hidden=32, layers=1, image_size=16, patch_size=8, words=CLASSES)
    student.save_pretrained(root / "student")
    processor.save_pretrained(root / "student")
    teacher, teacher_processor = build_tiny_clip(
        hidden=48, layers=1, image_size=16, patch_size=8, seed=1, words=CLASSES
    )
    teacher.save_pretrained(root / "teacher")
    teacher_processor.save_pretrained(root / "teacher")
    paths.update(student=str(root / "student"), teacher=str(root / "teacher"))
    return paths


def _train_args(assets, out, *extra) -> list[str]:
    return [
        "--student", assets["student"],
        "--robust_teacher", assets["teacher"],
        "--clean_teacher", assets["teacher"],
        "--train_files", assets["train"],
        "--eval_files", assets["eval"],
        "--output_dir", str(out),
        "--max_steps", "4",
        "--per_device_train_batch_size", "8",
        "--attack_steps", "2",
        "--eval_attack_steps", "2",
        "--save_strategy", "steps",
        "--save_steps", "2",
        "--report_to", "none",
        "--disable_tqdm", "true",
        "--use_cpu", "true",
        *extra,
    ]  # fmt: skip


def test_siglip_student_trains_saves_resumes_and_evaluates(assets, tmp_path):
    from transformers import AutoModel, SiglipModel

    out = tmp_path / "run"
    results = train_main(*parse_args(_train_args(assets, out)))
    assert results["model_family"] == {"name": "siglip", "title": "SigLIP", "class": "SiglipModel"}
    assert "**Model family:** SigLIP (`SiglipModel`)" in (out / "README.md").read_text()
    trained = AutoModel.from_pretrained(str(out))
    assert type(trained) is SiglipModel
    initial = SiglipModel.from_pretrained(assets["student"])
    vision = [
        not torch.equal(a, b) for a, b in zip(trained.vision_model.parameters(), initial.vision_model.parameters())
    ]
    assert any(vision)
    assert all(torch.equal(a, b) for a, b in zip(trained.text_model.parameters(), initial.text_model.parameters()))
    assert torch.equal(trained.logit_bias, initial.logit_bias)

    # resume from the step-2 checkpoint of the same run: the same final weights
    resumed_out = tmp_path / "resumed"
    resumed = train_main(
        *parse_args(_train_args(assets, resumed_out, "--resume_from_checkpoint", str(out / "checkpoint-2")))
    )
    assert resumed["training"]["steps"] == 4
    again = AutoModel.from_pretrained(str(resumed_out))
    assert all(torch.equal(a, b) for a, b in zip(trained.parameters(), again.parameters()))

    # evaluation of the training run, fixed scale then the model's own scale and bias
    for extra, mode in (([], "fixed 100"), (["--model-logit-scale"], "model scale + bias")):
        eval_out = tmp_path / f"eval{len(extra)}"
        code = eval_cli.main(
            ["--models", str(out), "--datasets", assets["eval"], "--eps", "2/255", "--pgd-steps", "1",
             "--attacks", "pgd", "--no-checks", "--no-progress", "--output-dir", str(eval_out), *extra]
        )  # fmt: skip
        assert code == 0
        record = json.loads((eval_out / "results.json").read_text())["results"][0]
        assert (record["model_family"], record["logit_mode"]) == ("siglip", mode)
        assert record["num_samples"] == 16 and 0 <= record["clean_accuracy"] <= 1
