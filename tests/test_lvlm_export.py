"""`export_to_lvlm` / `mmt-ard-export`: a student's tower in tiny random LVLMs built and saved the way transformers
users do, checked against the student layer by layer; everything else byte for byte the LVLM's; refusals write
nothing."""

import filecmp
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from _lvlm_tiny import (
    CHAT_TEMPLATE,
    CLIP_MEAN,
    CLIP_STD,
    build_tiny_llava,
    build_tiny_siglip_lvlm,
    build_tiny_siglip_student,
    save,
    synthetic_images,
)

from mmt_ard import export_to_lvlm
from mmt_ard.cli.export import main as export_main
from mmt_ard.embedded.tiny import build_tiny_clip
from mmt_ard.export import ExportError
from mmt_ard.export.safetensors_io import tensor_layout

STUDENT_KW = dict(hidden=32, layers=3, heads=2, image_size=16, patch_size=4, seed=7)


def _student(folder, **kw):
    clip, proc = build_tiny_clip(**{**STUDENT_KW, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, **kw})
    return save(str(folder), clip, proc), clip


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvlm_export")
    student_dir, clip = _student(root / "student")
    llava16 = save(str(root / "llava16"), *build_tiny_llava(image_size=16))
    llava24 = save(str(root / "llava24"), *build_tiny_llava(image_size=24))
    return {"root": root, "student": student_dir, "clip": clip, "llava16": llava16, "llava24": llava24}


def _load(cls_name, folder):
    import transformers

    model, info = getattr(transformers, cls_name).from_pretrained(folder, output_loading_info=True)
    return model.eval(), info


def _files_equal_except_weights(src, dst):
    """Every file of the LVLM folder is in the export; all but the safetensors shards byte for byte."""
    for name in os.listdir(src):
        assert os.path.exists(os.path.join(dst, name)), name
        if not name.endswith(".safetensors") and name != "README.md":
            assert filecmp.cmp(os.path.join(src, name), os.path.join(dst, name), shallow=False), name


def _assert_non_tower_bit_equal(original, exported):
    sd_a, sd_b = original.state_dict(), exported.state_dict()
    assert sd_a.keys() == sd_b.keys()
    non_tower = [k for k in sd_a if "vision_tower" not in k]
    assert any("multi_modal_projector" in k for k in non_tower) and any("language_model" in k for k in non_tower)
    for k in non_tower:
        assert torch.equal(sd_a[k], sd_b[k]), k
    assert not all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a if "vision_tower" in k)  # the tower did change


class TestLlavaSameResolution:
    @pytest.fixture(scope="class")
    def exported(self, work):
        out = str(work["root"] / "out16")
        report = export_to_lvlm(work["student"], work["llava16"], out, log=None)
        return out, report

    def test_loads_without_missing_or_unexpected_keys(self, exported):
        _, info = _load("LlavaForConditionalGeneration", exported[0])
        assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]

    def test_hidden_states_equal_the_students_at_every_layer(self, work, exported):
        model, _ = _load("LlavaForConditionalGeneration", exported[0])
        clip = work["clip"]
        x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = model.model.vision_tower(x, output_hidden_states=True).hidden_states
            theirs = clip.vision_model(x, output_hidden_states=True).hidden_states
            assert len(ours) == len(theirs) == STUDENT_KW["layers"] + 1
            for a, b in zip(ours, theirs):
                assert (a - b).abs().max().item() < 1e-5
            # the layer the LVLM feeds its projector (vision_feature_layer=-2, class token dropped)
            layer = model.config.vision_feature_layer
            assert layer == -2
            feats = model.model.get_image_features(pixel_values=x)
            feats = feats.pooler_output if hasattr(feats, "pooler_output") else feats
            feats = torch.cat(list(feats)) if isinstance(feats, (list, tuple)) else feats
            expected = model.model.multi_modal_projector(theirs[layer][:, 1:])
            assert (feats.reshape(expected.shape) - expected).abs().max().item() < 1e-5

    def test_projector_language_model_config_processor_untouched(self, work, exported):
        _files_equal_except_weights(work["llava16"], exported[0])
        original, _ = _load("LlavaForConditionalGeneration", work["llava16"])
        model, _ = _load("LlavaForConditionalGeneration", exported[0])
        _assert_non_tower_bit_equal(original, model)

    def test_generate_runs_on_an_image_and_a_prompt(self, work, exported):
        from PIL import Image
        from transformers import AutoProcessor

        model, _ = _load("LlavaForConditionalGeneration", exported[0])
        processor = AutoProcessor.from_pretrained(exported[0])
        assert processor.chat_template == CHAT_TEMPLATE
        path = synthetic_images(str(work["root"] / "img"), 1)[0]
        image = Image.open(os.path.join(work["root"], "img", path))
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this image"}]}],
            add_generation_prompt=True,
        )
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 4

    def test_model_card(self, exported):
        card = open(os.path.join(exported[0], "README.md")).read()
        assert card.startswith("---\n") and "LlavaForConditionalGeneration" in card and "mmt-ard-eval-lvlm" in card


def test_larger_resolution_resizes_the_grid_and_keeps_the_lvlm_image_size(work, capsys):
    out = str(work["root"] / "out24")
    report = export_to_lvlm(work["student"], work["llava24"], out)
    log = capsys.readouterr().out
    assert "4x4 to a 6x6 grid (bicubic, class position kept)" in log and "(24 px)" in log
    assert report.resized_from == 4 and report.grid == 6 and report.image_size == 24
    model, info = _load("LlavaForConditionalGeneration", out)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.vision_config.image_size == 24 and model.config.image_seq_length == 36
    _files_equal_except_weights(work["llava24"], out)  # config.json, processor: byte for byte
    student_pos = work["clip"].vision_model.embeddings.position_embedding.weight.detach()  # (17, D)
    pos = model.model.vision_tower.embeddings.position_embedding.weight.detach()  # (37, D)
    assert pos.shape == (37, 32)
    assert torch.equal(pos[0], student_pos[0])  # class position kept
    grid = student_pos[1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = (
        F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(36, 32)
    )
    assert (pos[1:] - expected).abs().max().item() < 1e-6
    # and the tower computes what the student computes at 24 px with transformers' own position interpolation
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.model.vision_tower(x, output_hidden_states=True).hidden_states
        theirs = work["clip"].vision_model(x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) < 1e-5
    original, _ = _load("LlavaForConditionalGeneration", work["llava24"])
    _assert_non_tower_bit_equal(original, model)


def test_sharded_checkpoint_rewrites_only_the_towers_shards(work, tmp_path):
    model, processor = build_tiny_llava(image_size=16)
    lvlm = str(tmp_path / "sharded")
    model.save_pretrained(lvlm, max_shard_size="40KB")
    processor.save_pretrained(lvlm)
    assert os.path.isfile(os.path.join(lvlm, "model.safetensors.index.json"))
    out = str(tmp_path / "out")
    report = export_to_lvlm(work["student"], lvlm, out, log=None)
    shards = sorted(f for f in os.listdir(lvlm) if f.endswith(".safetensors"))
    assert len(shards) > 2 and 0 < len(report.rewritten_files) < len(shards)
    for name in shards:
        same = filecmp.cmp(os.path.join(lvlm, name), os.path.join(out, name), shallow=False)
        assert same == (name not in report.rewritten_files), name
    assert filecmp.cmp(*(os.path.join(d, "model.safetensors.index.json") for d in (lvlm, out)), shallow=False)
    loaded, info = _load("LlavaForConditionalGeneration", out)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        a = loaded.model.vision_tower(x).last_hidden_state
        b = work["clip"].vision_model(x).last_hidden_state
    assert (a - b).abs().max().item() < 1e-5


def test_hub_4x_key_layout_and_bf16_checkpoint(work, tmp_path):
    """Checkpoints made with transformers 4.x name the tower `vision_tower.vision_model.*`; Hub LLaVAs are bf16."""
    from safetensors.torch import load_file, save_file

    model, processor = build_tiny_llava(image_size=16)
    lvlm = save(str(tmp_path / "legacy"), model.to(torch.bfloat16), processor)
    path = os.path.join(lvlm, "model.safetensors")
    tensors = load_file(path)
    renamed = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in tensors.items()}
    save_file(renamed, path, metadata={"format": "pt"})
    report = export_to_lvlm(work["student"], lvlm, str(tmp_path / "out"), log=None)
    assert report.dtype == "BF16"
    assert all(
        k.startswith("vision_tower.vision_model.") for k in tensor_layout(str(tmp_path / "out")) if "vision" in k
    )
    loaded, info = _load("LlavaForConditionalGeneration", str(tmp_path / "out"))
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = loaded.model.vision_tower.embeddings.patch_embedding.weight
    theirs = work["clip"].vision_model.embeddings.patch_embedding.weight.to(torch.bfloat16)
    assert ours.dtype == torch.bfloat16 and torch.equal(ours, theirs)


def test_llava_next(work, tmp_path):
    lvlm = save(str(tmp_path / "next"), *build_tiny_llava(image_size=16, next_=True))
    out = str(tmp_path / "out")
    export_to_lvlm(work["student"], lvlm, out, log=None)
    loaded, info = _load("LlavaNextForConditionalGeneration", out)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        ours = loaded.model.vision_tower(x, output_hidden_states=True).hidden_states
        theirs = work["clip"].vision_model(x, output_hidden_states=True).hidden_states
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) < 1e-5
    original, _ = _load("LlavaNextForConditionalGeneration", lvlm)
    _assert_non_tower_bit_equal(original, loaded)


@pytest.mark.parametrize("kind", ["paligemma", "onevision"])
def test_siglip_student_into_siglip_tower_lvlms(tmp_path, kind):
    siglip, image_processor = build_tiny_siglip_student()
    student = save(str(tmp_path / "siglip"), siglip, image_processor)
    model, lvlm_image_processor, tokenizer = build_tiny_siglip_lvlm(kind)
    lvlm = save(str(tmp_path / kind), model, lvlm_image_processor, tokenizer)
    out = str(tmp_path / "out")
    report = export_to_lvlm(student, lvlm, out, log=None)
    assert report.tower == "siglip"
    arch = type(model).__name__
    loaded, info = _load(arch, out)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = loaded.model.vision_tower(x, output_hidden_states=True)
        theirs = siglip.vision_model(x, output_hidden_states=True)
    assert len(ours.hidden_states) == 3
    for a, b in zip(
        ours.hidden_states + (ours.last_hidden_state,), theirs.hidden_states + (theirs.last_hidden_state,)
    ):
        assert (a - b).abs().max().item() < 1e-5
    original, _ = _load(arch, lvlm)
    _assert_non_tower_bit_equal(original, loaded)
    # a CLIP student does not go into a SigLIP tower
    clip_dir, _ = _student(tmp_path / "clip")
    with pytest.raises(ExportError, match="SigLIP tower"):
        export_to_lvlm(clip_dir, lvlm, str(tmp_path / "refused"), log=None)
    assert not os.path.exists(tmp_path / "refused")


def _no_staging_left(parent):
    return not [f for f in os.listdir(parent) if ".staging-" in f]


@pytest.mark.parametrize(
    "change, words",
    [
        ({"hidden": 48}, ["width (`hidden_size`): student 48 vs LVLM 32", "width 48", "width 32"]),
        ({"layers": 2}, ["depth (`num_hidden_layers`): student 2 vs LVLM 3", "depth 2", "depth 3"]),
        ({"patch_size": 8}, ["patch size (`patch_size`): student 8 vs LVLM 4", "patch 8", "patch 4"]),
        ({"heads": 4}, ["head count (`num_attention_heads`): student 4 vs LVLM 2", "4 heads", "2 heads"]),
    ],
)
def test_refusals_name_both_shapes_and_write_nothing(work, tmp_path, change, words, capsys):
    student, _ = _student(tmp_path / "student", **change)
    out = str(tmp_path / "out")
    with pytest.raises(ExportError) as err:
        export_to_lvlm(student, work["llava16"], out, log=None)
    for w in words:
        assert w in str(err.value)
    assert not os.path.exists(out) and _no_staging_left(tmp_path)
    # the command: one line on stderr, exit status 2 (refused before anything is written), no traceback
    capsys.readouterr()
    assert export_main(["--student", student, "--into", work["llava16"], "--output-dir", out]) == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("mmt-ard-export: error: ") and words[0] in stderr[0], stderr
    assert not os.path.exists(out)


def test_normalization_mismatch_refused_unless_adjusted_exactly(work, tmp_path):
    student, clip = _student(tmp_path / "student", image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))
    out = str(tmp_path / "out")
    with pytest.raises(ExportError, match=r"mean \(0\.5, 0\.5, 0\.5\).*mean \(0\.4815, 0\.4578, 0\.4082\)"):
        export_to_lvlm(student, work["llava16"], out, log=None)
    assert not os.path.exists(out) and _no_staging_left(tmp_path)
    report = export_to_lvlm(student, work["llava16"], out, adjust_normalization=True, log=None)
    assert report.normalization == "adjusted"
    model, _ = _load("LlavaForConditionalGeneration", out)
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = model.model.vision_tower((pixels - mean) / std, output_hidden_states=True).hidden_states
        theirs = clip.vision_model((pixels - 0.5) / 0.5, output_hidden_states=True).hidden_states
        plain = model.model.vision_tower((pixels - 0.5) / 0.5, output_hidden_states=True).hidden_states
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) < 1e-5
    assert (plain[-1] - theirs[-1]).abs().max().item() > 1e-3  # control: the weights did change


def test_crash_while_writing_leaves_no_output(work, tmp_path, monkeypatch):
    from mmt_ard.export import lvlm_export

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(lvlm_export, "overwrite_tensors", crash)
    out = str(tmp_path / "out")
    with pytest.raises(RuntimeError, match="disk full"):
        export_to_lvlm(work["student"], work["llava16"], out, log=None)
    assert not os.path.exists(out) and _no_staging_left(tmp_path)


def test_existing_output_dir_refused_unless_overwrite(work, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_to_lvlm(work["student"], work["llava16"], str(out), log=None)
    assert (out / "keep.txt").exists()
    export_to_lvlm(work["student"], work["llava16"], str(out), overwrite=True, log=None)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_unsupported_lvlm_class_lists_the_supported_ones(work, tmp_path, capsys):
    clip_as_lvlm = work["student"]  # a CLIPModel folder is no LVLM
    out = str(tmp_path / "out")
    assert export_main(["--student", work["student"], "--into", clip_as_lvlm, "--output-dir", out]) == 2
    err = capsys.readouterr().err
    assert "CLIPModel" in err and "LlavaForConditionalGeneration" in err and "PaliGemmaForConditionalGeneration" in err
    assert not os.path.exists(out)


def test_training_run_output_dir_gives_its_model_and_provenance(work, tmp_path):
    """A run's output_dir without a final model: its newest checkpoint is used, its results.json fills the card."""
    run = tmp_path / "run"
    _student(run / "checkpoint-4")
    _student(run / "checkpoint-12", seed=9)
    results = {
        "preset": "mmt-ard",
        "base_model": "openai/clip-vit-large-patch14",
        "robustness": {
            "protocol": "zero-shot, PGD",
            "rows": [
                {
                    "model": "student",
                    "attack": "pgd",
                    "eps": 4 / 255,
                    "clean_accuracy": 0.61,
                    "robust_accuracy": 0.33,
                    "num_clean": 100,
                    "num_robust": 100,
                }
            ],
        },
    }
    (run / "results.json").write_text(json.dumps(results))
    out = str(tmp_path / "out")
    report = export_to_lvlm(str(run), work["llava16"], out, log=None)
    assert any("checkpoint-12" in line for line in report.notes)
    card = open(os.path.join(out, "README.md")).read()
    assert "`mmt-ard`" in card and "| student | pgd | 4/255 (0.0157) | 61.0 | 33.0 |" in card
    model, _ = _load("LlavaForConditionalGeneration", out)
    newest, _ = build_tiny_clip(**{**STUDENT_KW, "seed": 9})
    assert torch.equal(
        model.model.vision_tower.embeddings.patch_embedding.weight,
        newest.vision_model.embeddings.patch_embedding.weight,
    )


def test_license_of_the_base_card_is_kept(work, tmp_path):
    import shutil

    lvlm = str(tmp_path / "licensed")
    shutil.copytree(work["llava16"], lvlm)
    with open(os.path.join(lvlm, "README.md"), "w") as f:
        f.write("---\nlicense: llama2\n---\n# base\n")
    export_to_lvlm(work["student"], lvlm, str(tmp_path / "out"), log=None)
    card = open(os.path.join(tmp_path, "out", "README.md")).read()
    assert "license: llama2" in card.split("---")[1]


@pytest.mark.slow
def test_commands_run_as_modules():
    for module in ("mmt_ard.cli.export", "mmt_ard.cli.eval_lvlm"):
        proc = subprocess.run(
            [sys.executable, "-m", module, "--help"], check=False, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        assert "--output-dir" in proc.stdout


def test_push_to_hub_uploads_the_complete_folder_with_its_card(work, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, exist_ok, private):
            calls["private"] = private
            return type("Repo", (), {"repo_id": repo_id, "url": f"https://huggingface.co/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls["files"] = sorted(os.listdir(folder_path))
            calls["card"] = open(os.path.join(folder_path, "README.md")).read()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = str(tmp_path / "out")
    argv = ["--student", work["student"], "--into", work["llava16"], "--output-dir", out]
    assert export_main([*argv, "--push-to-hub", "you/robust-llava", "--hub-private"]) == 0
    assert calls["private"] is True and "model.safetensors" in calls["files"] and "config.json" in calls["files"]
    assert (
        "you/robust-llava" in calls["card"]
        and "pushed to https://huggingface.co/you/robust-llava" in capsys.readouterr().out
    )

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(FakeApi, "create_repo", offline)
    out2 = str(tmp_path / "out2")
    assert (
        export_main(
            [
                "--student",
                work["student"],
                "--into",
                work["llava16"],
                "--output-dir",
                out2,
                "--push-to-hub",
                "you/robust-llava",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Could not push" in err[0] and "hf upload" in err[0]
    assert os.path.isfile(os.path.join(out2, "model.safetensors"))  # the export itself is complete


def test_open_clip_checkpoint_as_student(work, tmp_path):
    """FARE/TeCoA releases are open_clip checkpoints: `load_clip` converts them, the export takes the result."""
    from test_open_clip import write_as_open_clip

    clip, processor = build_tiny_clip(**{**STUDENT_KW, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "seed": 11})
    student = write_as_open_clip(clip, processor, tmp_path / "open-clip-student", True)
    out = str(tmp_path / "out")
    export_to_lvlm(student, work["llava16"], out, log=None)
    model, info = _load("LlavaForConditionalGeneration", out)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model.model.vision_tower(x, output_hidden_states=True).hidden_states
        theirs = clip.vision_model(x, output_hidden_states=True).hidden_states
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) < 1e-5


def test_siglip_student_at_larger_resolution(tmp_path):
    """SigLIP has no class position: the whole grid is resized, and the tower computes what the student computes
    with transformers' own position interpolation."""
    siglip, image_processor = build_tiny_siglip_student()
    student = save(str(tmp_path / "siglip"), siglip, image_processor)
    model, lvlm_image_processor, tokenizer = build_tiny_siglip_lvlm("paligemma", image_size=24)
    lvlm = save(str(tmp_path / "pali24"), model, lvlm_image_processor, tokenizer)
    report = export_to_lvlm(student, lvlm, str(tmp_path / "out"), log=None)
    assert report.resized_from == 4 and report.grid == 6
    loaded, _ = _load("PaliGemmaForConditionalGeneration", str(tmp_path / "out"))
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = loaded.model.vision_tower(x).last_hidden_state
        theirs = siglip.vision_model(x, interpolate_pos_encoding=True).last_hidden_state
    assert (ours - theirs).abs().max().item() < 1e-5


# ---- every registered class with a SigLIP tower (issue 23): Idefics3, SmolVLM, Gemma 3, and the tiling ones ----
def _tower_of(model):
    inner = model.model
    return getattr(inner, "vision_tower", None) or inner.vision_model


def _siglip_student(tmp_path, image_size=16):
    from _lvlm_tiny import build_tiny_siglip_student

    siglip, image_processor = build_tiny_siglip_student(image_size=image_size)
    return save(str(tmp_path / f"siglip{image_size}"), siglip, image_processor), siglip


def _build_class(name, image_size=16):
    from _lvlm_tiny import build_tiny_aya_vision, build_tiny_gemma3, build_tiny_idefics3, build_tiny_onevision

    if name == "aya_vision":
        return build_tiny_aya_vision(image_size=image_size)
    if name == "smolvlm":
        return build_tiny_idefics3(image_size=image_size, smolvlm=True)
    if name == "idefics3":
        return build_tiny_idefics3(image_size=image_size)
    if name == "gemma3":
        return build_tiny_gemma3(image_size=image_size)
    return build_tiny_onevision(image_size=image_size)


@pytest.mark.parametrize("name", ["idefics3", "smolvlm", "gemma3", "onevision", "aya_vision"])
def test_siglip_student_into_every_siglip_class(tmp_path, name):
    student, siglip = _siglip_student(tmp_path)
    model, processor = _build_class(name)
    # LlavaOnevisionProcessor's and SmolVLMProcessor's save_pretrained need their video processor (torchvision): save
    # their parts
    parts = (processor.image_processor, processor.tokenizer) if name in ("onevision", "smolvlm") else (processor,)
    lvlm = save(str(tmp_path / name), model, *parts)
    os.chmod(lvlm, 0o755)
    out = str(tmp_path / "out")
    old_umask = os.umask(0o022)
    try:
        report = export_to_lvlm(student, lvlm, out, log=None)
    finally:
        os.umask(old_umask)
    assert report.tower == "siglip" and report.resized_from is None
    assert os.stat(out).st_mode & 0o777 == 0o755  # as save_pretrained makes it under the umask, not 0700
    arch = type(model).__name__
    loaded, info = _load(arch, out)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = _tower_of(loaded)(x, output_hidden_states=True)
        theirs = siglip.vision_model(x, output_hidden_states=True)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 3
    for a, b in zip(
        ours.hidden_states + (ours.last_hidden_state,), theirs.hidden_states + (theirs.last_hidden_state,)
    ):
        assert (a - b).abs().max().item() < 1e-5
    sd_a, sd_b = model.state_dict(), loaded.state_dict()
    tower_keys = {k for k in sd_a if k.startswith(("model.vision_tower.", "model.vision_model."))}
    assert tower_keys and sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a if k not in tower_keys)
    assert not all(torch.equal(sd_a[k], sd_b[k]) for k in tower_keys)
    _files_equal_except_weights(lvlm, out)
    # a CLIP student does not go into these SigLIP towers; nothing is written
    clip_dir, _ = _student(tmp_path / "clip")
    with pytest.raises(ExportError, match="SigLIP tower"):
        export_to_lvlm(clip_dir, lvlm, str(tmp_path / "refused"), log=None)
    assert not os.path.exists(tmp_path / "refused") and _no_staging_left(tmp_path)


def test_gemma3_stretch_is_reported_in_the_log_and_the_card(tmp_path):
    student, siglip = _siglip_student(tmp_path, image_size=16)  # a 4x4 grid
    lvlm = save(str(tmp_path / "gemma3"), *_build_class("gemma3", image_size=32))  # an 8x8 grid, as 224 -> 896 px
    out = str(tmp_path / "out")
    lines = []
    report = export_to_lvlm(student, lvlm, out, log=lines.append)
    assert report.resized_from == 4 and report.grid == 8
    text = "\n".join(lines)
    assert "from a 4x4 to a 8x8 grid" in text and "stretched 2.00x per side" in text and "16 px" in text
    card = open(os.path.join(out, "README.md")).read()
    assert "stretched 2.00x per side" in card and "mmt-ard-eval-lvlm --models" in card
    loaded, _ = _load("Gemma3ForConditionalGeneration", out)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # the exported tower is the student run at 32 px with its grid interpolated
        ours = _tower_of(loaded)(x).last_hidden_state
        theirs = siglip.vision_model(x, interpolate_pos_encoding=True).last_hidden_state
    assert (ours - theirs).abs().max().item() < 1e-4


def test_paligemma_card_advises_what_eval_lvlm_accepts(tmp_path):
    from _lvlm_tiny import build_tiny_paligemma

    from mmt_ard.evaluation.lvlm.model import check_lvlm

    student, _ = _siglip_student(tmp_path)
    lvlm = save(str(tmp_path / "pali"), *build_tiny_paligemma())
    out = str(tmp_path / "out")
    export_to_lvlm(student, lvlm, out, log=None)
    card = open(os.path.join(out, "README.md")).read()
    assert '--caption-prompt "caption en"' in card
    assert check_lvlm(out).architecture == "PaliGemmaForConditionalGeneration"  # the advised command accepts it


def test_rectangular_and_classless_grids_resize_bicubic():
    from mmt_ard.export import resize_position_embedding
    from mmt_ard.export.position import grid_shape

    g = torch.Generator().manual_seed(5)
    grid = torch.randn(4 * 6, 8, generator=g)  # a 4 x 6 SigLIP grid (no class position)
    out = resize_position_embedding(grid, 8 * 12, False, (4, 6), (8, 12))
    expected = F.interpolate(grid.reshape(1, 4, 6, 8).permute(0, 3, 1, 2), size=(8, 12), mode="bicubic")
    assert torch.allclose(out, expected.permute(0, 2, 3, 1).reshape(96, 8), atol=1e-6)
    with_cls = torch.cat([torch.randn(1, 8, generator=g), grid])  # a CLIP-style class position is kept
    out = resize_position_embedding(with_cls, 1 + 8 * 12, True, (4, 6), (8, 12))
    assert torch.equal(out[0], with_cls[0]) and torch.allclose(out[1:], expected.permute(0, 2, 3, 1).reshape(96, 8))
    assert grid_shape({"image_size": [32, 48], "patch_size": 8}, 24, False, "grid") == (4, 6)
    assert grid_shape({"image_size": 32, "patch_size": 8}, 16, False, "grid") == (4, 4)
    with pytest.raises(ValueError, match="do not match"):
        resize_position_embedding(grid, 50, False, (4, 6), (5, 9))


@pytest.mark.parametrize("name", ["vipllava", "llava_next_video"])
def test_clip_student_into_every_clip_class(work, tmp_path, name):
    from _lvlm_tiny import build_tiny_llava_next_video, build_tiny_vipllava

    model, processor = (build_tiny_vipllava if name == "vipllava" else build_tiny_llava_next_video)(image_size=16)
    lvlm = save(str(tmp_path / name), model, processor.image_processor, processor.tokenizer)
    out = str(tmp_path / "out")
    export_to_lvlm(work["student"], lvlm, out, log=None)
    loaded, info = _load(type(model).__name__, out)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours = loaded.model.vision_tower(x, output_hidden_states=True).hidden_states
        theirs = work["clip"].vision_model(x, output_hidden_states=True).hidden_states
    assert len(ours) == 4 and max((a - b).abs().max().item() for a, b in zip(ours, theirs)) < 1e-5
    _assert_non_tower_bit_equal(model, loaded)
    siglip_dir, _ = _siglip_student(tmp_path)  # a SigLIP student does not go into a CLIP tower
    with pytest.raises(ExportError, match="CLIP tower"):
        export_to_lvlm(siglip_dir, lvlm, str(tmp_path / "refused"), log=None)
    assert not os.path.exists(tmp_path / "refused") and _no_staging_left(tmp_path)
