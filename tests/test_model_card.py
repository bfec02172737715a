"""The model card is a pure function of a results dictionary (mmt_ard/training/model_card.py)."""

from __future__ import annotations

import copy

import pytest
import yaml

from mmt_ard.training.model_card import MMTARD_SETTING_KEYS, format_eps, render_model_card, save_model_card


@pytest.fixture
def results() -> dict:
    settings = {key: 0.5 for key in MMTARD_SETTING_KEYS}
    settings.update(
        attack_eps=2 / 255,
        eval_attack_eps=4 / 255,
        weighting="confidence",
        attack_loss="kl",
        prompt_templates=["This is a photo of a {}"],
        attack_random_init=True,
    )
    return {
        "model_name": "clip-b32-mmt-ard",
        "base_model": "openai/clip-vit-base-patch32",
        "base_model_id": "openai/clip-vit-base-patch32",
        "hub_model_id": "me/clip-b32-mmt-ard",
        "preset": "mmt-ard",
        "teachers": [
            {
                "name": "robust",
                "role": "robust",
                "model": "LEAF-CLIP/CLIP-ViT-L-FARE2",
                "processor": "openai/clip-vit-large-patch14",
                "input": "adversarial",
                "match": "adversarial",
                "coef": 50.0,
            },
            {
                "name": "clean",
                "role": "clean",
                "model": "openai/clip-vit-large-patch14",
                "processor": None,
                "input": "clean",
                "match": "clean",
                "coef": 5.0,
            },
        ],
        "settings": settings,
        "lora": {
            "r": 16,
            "alpha": 16,
            "dropout": 0.1,
            "target_modules": ["q_proj", "v_proj"],
            "saved": "LoRA adapter",
        },
        "dataset": {
            "train": "ILSVRC/imagenet-1k [train]",
            "eval": "ILSVRC/imagenet-1k [validation]",
            "train_id": "ILSVRC/imagenet-1k",
            "eval_id": "ILSVRC/imagenet-1k",
            "num_train": 1281167,
            "num_eval": 5000,
            "num_classes": 3,
            "class_names": ["tench", "goldfish", "shark"],
            "skipped": 2,
        },
        "training": {
            "steps": 5000,
            "batch_size": 512,
            "images_per_second": 123.45,
            "wall_clock_s": 3600.0,
            "hardware": "NVIDIA H100 80GB HBM3 (CUDA)",
            "num_processes": 8,
            "total_wall_clock_s": 4000.0,
        },
        "robustness": {
            "protocol": "zero-shot classification, L-inf PGD-CE, 10 steps",
            "rows": [
                {
                    "model": "student (before)",
                    "attack": "PGD-10 (CE)",
                    "eps": 2 / 255,
                    "clean_accuracy": 0.632,
                    "robust_accuracy": 0.0,
                    "num_clean": 5000,
                    "num_robust": 1000,
                },
                {
                    "model": "student (after)",
                    "attack": "PGD-10 (CE)",
                    "eps": 4 / 255,
                    "clean_accuracy": 0.5,
                    "robust_accuracy": 0.2512,
                    "num_clean": 5000,
                    "num_robust": 1000,
                },
            ],
            "notes": ["robust accuracy on a 1000-image subset"],
        },
    }


def test_front_matter_is_yaml_with_tags(results):
    card = render_model_card(results)
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "transformers"
    assert {"mmt-ard", "adversarial-robustness", "distillation", "clip"} <= set(meta["tags"])
    assert meta["base_model"] == "openai/clip-vit-base-patch32"
    assert meta["datasets"] == ["ILSVRC/imagenet-1k"]
    assert meta["pipeline_tag"] == "zero-shot-image-classification"


def test_body_has_models_recipe_data_cost(results):
    card = render_model_card(results)
    for text in (
        "# clip-b32-mmt-ard",
        "`openai/clip-vit-base-patch32`",
        "`LEAF-CLIP/CLIP-ViT-L-FARE2`",
        "`openai/clip-vit-large-patch14`",
        "| robust | robust |",
        "Preset:** `mmt-ard`",
        "r=16",
        "LoRA adapter",
        "ILSVRC/imagenet-1k [train] (1281167 samples)",
        "(5000 samples)",
        "tench, goldfish",
        "Bad samples skipped:** 2",
        "5000 at a global batch of 512",
        "123.5 training images/s",
        "3600.0 s",
        "NVIDIA H100 80GB HBM3 (CUDA) x 8",
        "4000.0 s",
    ):
        assert text in card, text
    for key in MMTARD_SETTING_KEYS:
        assert f"| `{key}` |" in card, key
    assert "| `attack_eps` | 2/255 (0.0078) |" in card
    assert "| `weighting` | confidence |" in card
    assert "Distributed setup" not in card  # optional: only when the results carry it

    results["training"]["distributed_setup"] = "FSDP2, 8 processes"
    assert "- **Distributed setup:** FSDP2, 8 processes" in render_model_card(results)


def test_robustness_table_and_protocol(results):
    card = render_model_card(results)
    assert "Protocol: **zero-shot classification, L-inf PGD-CE, 10 steps**" in card
    assert "| student (before) | PGD-10 (CE) | 2/255 (0.0078) | 63.2 | 0.0 | 5000 | 1000 |" in card
    assert "| student (after) | PGD-10 (CE) | 4/255 (0.0157) | 50.0 | 25.1 | 5000 | 1000 |" in card
    assert "robust accuracy on a 1000-image subset" in card


def test_citation(results):
    card = render_model_card(results)
    assert "arXiv 2511.17448" in card and "arXiv:2511.17448" in card
    for author in ("Li", "Dong", "Yang", "Wen", "Koniusz", "Huang", "Tian", "Ong"):
        assert author in card.split("## Citation")[1]
    assert "2025" in card.split("## Citation")[1]


def test_pure_and_tolerant(results):
    before = copy.deepcopy(results)
    assert render_model_card(results) == render_model_card(results)
    assert results == before  # the input is not modified
    minimal = render_model_card({})
    assert "_No evaluation was run._" in minimal and "2511.17448" in minimal


def test_local_paths_are_not_hub_metadata(results):
    results["base_model_id"] = None
    results["base_model"] = "/tmp/my_student"
    meta = yaml.safe_load(render_model_card(results).split("---\n")[1])
    assert "base_model" not in meta


def test_save_writes_readme(tmp_path, results):
    path = save_model_card(results, str(tmp_path / "out"))
    assert path.endswith("README.md")
    with open(path, encoding="utf-8") as f:
        assert f.read() == render_model_card(results)


@pytest.mark.parametrize(
    "eps, text", [(0, "0"), (None, "-"), (8 / 255, "8/255 (0.0314)"), (0.5 / 255, "0.5/255 (0.0020)"), (0.01, "0.01")]
)
def test_format_eps(eps, text):
    assert format_eps(eps) == text
