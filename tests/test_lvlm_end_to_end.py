"""A robust tower's worth in a modern LVLM, end to end on tiny models (docs/lvlm.md, "A SigLIP student in
SmolVLM-shaped and LLaVA-OneVision models"): a SigLIP student trained with `mmt-ard-train`, exported with
`mmt-ard-export` into a tiny SmolVLM and a tiny LLaVA-OneVision built from their configs and processor classes, both
evaluated by `mmt-ard-eval-lvlm` through their own tiling pipelines."""

import io
import json
import os

import numpy as np
import pytest
import torch
from _lvlm_tiny import build_tiny_idefics3, build_tiny_onevision, save, save_image_only_processor, save_square_datasets
from PIL import Image

from mmt_ard.cli.eval_lvlm import main as eval_main
from mmt_ard.cli.export import main as export_main
from mmt_ard.cli.train import main as train_main
from mmt_ard.cli.train_args import parse_args
from mmt_ard.embedded.tiny import build_tiny_clip, build_tiny_siglip

CLASSES = ["zero", "one", "two"]


def _parquet(root):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(16):
        arr = np.full((16, 16, 3), 255, dtype=np.uint8)
        arr[2 + i % 4 : 10 + i % 4, 3:11] = rng.integers(0, 256, 3)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        images.append(buf.getvalue())
        labels.append(i % 3)
    table = pa.table({"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int64())})
    pq.write_table(table, root / "train.parquet")
    (root / "train.json").write_text(json.dumps({"classes": CLASSES}))
    return str(root / "train.parquet")


@pytest.mark.slow
def test_siglip_student_trained_exported_into_smolvlm_and_onevision_shapes_and_evaluated(tmp_path):
    # 1. train a SigLIP student (the LVLMs' tower shape: width 32, depth 2, 2 heads, patch 4, 16 px)
    student, processor = build_tiny_siglip(hidden=32, layers=2, heads=2, image_size=16, patch_size=4, words=CLASSES)
    save(str(tmp_path / "student"), student, processor)
    teacher, teacher_processor = build_tiny_clip(hidden=48, layers=1, image_size=16, patch_size=8, words=CLASSES)
    save(str(tmp_path / "teacher"), teacher, teacher_processor)
    train = _parquet(tmp_path)
    run = tmp_path / "run"
    args = [
        "--student", str(tmp_path / "student"), "--robust_teacher", str(tmp_path / "teacher"),
        "--clean_teacher", str(tmp_path / "teacher"), "--train_files", train, "--output_dir", str(run),
        "--max_steps", "2", "--per_device_train_batch_size", "8", "--attack_steps", "1", "--eval_strategy", "no",
        "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true",
    ]  # fmt: skip
    train_main(*parse_args(args))

    # 2. tiny LVLMs from their configs, saved as transformers users save them
    smolvlm_model, smolvlm_processor = build_tiny_idefics3(image_size=16, smolvlm=True)
    smolvlm = save(str(tmp_path / "smolvlm"), smolvlm_model)  # its processor's save_pretrained needs torchvision
    save_image_only_processor(smolvlm, smolvlm_processor, image_seq_len=smolvlm_processor.image_seq_len)
    onevision_model, onevision_processor = build_tiny_onevision(image_size=16)
    onevision = save(str(tmp_path / "onevision"), onevision_model)
    save_image_only_processor(
        onevision, onevision_processor, num_image_tokens=16, vision_feature_select_strategy="full"
    )

    # 3. export the trained student into both
    for lvlm in (smolvlm, onevision):
        assert export_main(["--student", str(run), "--into", lvlm, "--output-dir", lvlm + "-robust", "--quiet"]) == 0
    from transformers import SiglipModel

    trained = SiglipModel.from_pretrained(str(run))
    from safetensors.torch import load_file

    for lvlm, key in ((smolvlm, "model.vision_model."), (onevision, "model.vision_tower.")):
        weights = load_file(os.path.join(lvlm + "-robust", "model.safetensors"))
        patch = [v for k, v in weights.items() if k.endswith("embeddings.patch_embedding.weight")]
        assert len(patch) == 1 and torch.equal(patch[0], trained.vision_model.embeddings.patch_embedding.weight)

    # 4. both robust LVLMs and their originals, evaluated by the command through their own tiling pipelines
    cap_dir, _ = save_square_datasets(str(tmp_path), n=2)
    out = tmp_path / "eval"
    argv = [
        "--models", smolvlm, smolvlm + "-robust", onevision, onevision + "-robust", "--datasets", cap_dir,
        "--output-dir", str(out), "--eps", "8/255", "--n-iter", "2", "--max-references", "1", "--num-samples", "2",
        "--no-refine", "--no-progress", "--image-size", "24x40",
    ]  # fmt: skip
    assert eval_main(argv) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["model"] for r in results] == ["smolvlm", "smolvlm-robust", "onevision", "onevision-robust"]
    for r in results:
        space = r["attack_space"]
        assert space["image_size"] == [24, 40] and space["crops"] > 1  # several crops per image
        assert r["adversarial"]["8/255"]["score"] <= r["clean"] + 1e-9
    assert "split" in results[0]["attack_space"]["pipeline"] and "anyres" in results[2]["attack_space"]["pipeline"]
