"""The training application (`mmt_ard.cli.train`) end to end on tiny local models and parquet data, offline: mostly
in-process through `examples/run_mmt_ard.py`'s imports, and as the script and the `mmt-ard-train` command."""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest
import torch
from PIL import Image

from mmt_ard import MMTARDConfig
from mmt_ard.cli.train_args import DEFAULT_OUTPUT_DIR, parse_eps
from mmt_ard.data import BadSampleError
from mmt_ard.embedded import QUICK_DEFAULTS, QUICK_MAX_EVAL_SAMPLES
from mmt_ard.embedded.tiny import build_tiny_clip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "run_mmt_ard.py")
sys.path.insert(0, os.path.dirname(SCRIPT))
import run_mmt_ard

CLASSES = ["zero", "one", "two"]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _write_parquet(path, images: list[bytes], labels: list[int]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int64())}), path)
    return str(path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny student and teacher saved as local CLIP folders, parquet train/eval files of real digits (8x8 PNGs,
    grayscale, so the collator upsamples and converts them), and a class-names file."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("script_assets")
    digits = load_digits()
    keep = np.flatnonzero(digits.target < 3)[:60]
    images = [_png((digits.images[i] * 255 / 16).astype(np.uint8)) for i in keep]
    labels = [int(digits.target[i]) for i in keep]
    paths = {
        "train": _write_parquet(root / "train.parquet", images[:40], labels[:40]),
        "eval": _write_parquet(root / "eval.parquet", images[40:], labels[40:]),
        "bad": _write_parquet(root / "bad.parquet", images[:8] + [b"corrupt bytes"], labels[:8] + [0]),
    }
    (root / "classes.txt").write_text("\n".join(CLASSES))
    paths["classes"] = str(root / "classes.txt")
    for name, hidden, seed in (("student", 32, 0), ("teacher", 48, 1)):
        model, processor = build_tiny_clip(
            hidden=hidden, layers=1, image_size=16, patch_size=8, seed=seed, words=CLASSES
        )
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def run(argv: list[str]) -> dict:
    """What `python examples/run_mmt_ard.py ARGV` does, in-process: parse, then `main`."""
    return run_mmt_ard.main(*run_mmt_ard.parse_args(argv))


def drop(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag` and its value."""
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :]


def base_args(assets, out, *extra) -> list[str]:
    """A tiny real run; with `--eval_split none` in `extra`, without `--eval_files` (which it would ignore)."""
    argv = [
        "--student",
        assets["student"],
        "--robust_teacher",
        assets["teacher"],
        "--clean_teacher",
        assets["teacher"],
        "--train_files",
        assets["train"],
        "--eval_files",
        assets["eval"],
        "--class_names_file",
        assets["classes"],
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--per_device_eval_batch_size",
        "16",
        "--attack_steps",
        "2",
        "--eval_attack_steps",
        "2",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "true",
        *extra,
    ]
    no_eval = any(a == "--eval_split" and b == "none" for a, b in itertools.pairwise(extra))
    return drop(argv, "--eval_files") if no_eval else argv


class TestArguments:
    def test_help_lists_every_option(self):
        out = subprocess.run(
            [sys.executable, SCRIPT, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            check=False,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert out.returncode == 0, out.stderr
        for f in fields(run_mmt_ard.ScriptArguments) + fields(MMTARDConfig):
            if f.init:
                assert f"--{f.name}" in out.stdout, f.name

    def test_yaml_config_with_flag_overrides(self, tmp_path):
        cfg = tmp_path / "run.yaml"
        cfg.write_text(
            "preset: single-teacher\nmax_steps: 7\nlearning_rate: 1e-4\nattack_eps: 0.0156\n"
            "eval_eps: ['2/255', '4/255']\nstudent: some/student\nlora_target_modules: [q_proj, v_proj]\n"
        )
        sa, config, explicit = run_mmt_ard.parse_args([str(cfg), "--max_steps", "3", "--output_dir", str(tmp_path)])
        assert config.preset == "single-teacher" and config.max_steps == 3  # the flag wins
        assert config.learning_rate == pytest.approx(1e-4)  # YAML's "1e-4" is a string: converted like a flag
        assert config.attack_eps == pytest.approx(0.0156)
        assert sa.eval_eps == ["2/255", "4/255"] and sa.lora_target_modules == ["q_proj", "v_proj"]
        assert sa.student == "some/student" and sa.config == str(cfg)
        assert {"preset", "max_steps", "learning_rate", "output_dir"} <= explicit

    def test_json_config_via_flag_and_embedded_defaults(self, tmp_path):
        cfg = tmp_path / "run.json"
        cfg.write_text(json.dumps({"attack_steps": 3, "quick": True}))
        sa, config, _ = run_mmt_ard.parse_args(["--config", str(cfg), "--attack_steps", "4"])
        assert config.attack_steps == 4 and sa.quick
        # no --student: the embedded default's recipe fills what neither the file nor a flag set
        assert config.attack_eps == pytest.approx(8 / 255) and config.max_steps == QUICK_DEFAULTS["max_steps"]
        assert config.output_dir == DEFAULT_OUTPUT_DIR

    def test_real_model_runs_keep_the_preset_defaults(self):
        _, config, _ = run_mmt_ard.parse_args(["--student", "x/y"])
        assert config.attack_eps == pytest.approx(2 / 255) and config.learning_rate == pytest.approx(2e-5)

    def test_config_file_errors(self, tmp_path):
        bad = tmp_path / "bad.yaml"
        bad.write_text("attack_epss: 0.1\n")
        with pytest.raises(ValueError, match="unknown keys \\['attack_epss'\\]"):
            run_mmt_ard.parse_args([str(bad)])
        lst = tmp_path / "list.yaml"
        lst.write_text("- 1\n- 2\n")
        with pytest.raises(TypeError, match="must map argument names"):
            run_mmt_ard.parse_args(["--config", str(lst)])
        with pytest.raises(ValueError, match="Two config files"):
            run_mmt_ard.parse_args([str(bad), "--config", str(lst)])

    def test_save_steps_alone_turns_step_checkpoints_on(self, tmp_path):
        """The embedded default's `save_strategy="no"` is a default: an explicit `save_steps` / `save_total_limit`
        without a strategy asks for step checkpoints, as in a plain `TrainingArguments`; an explicit strategy wins."""
        assert run_mmt_ard.parse_args([])[1].save_strategy == "no"
        _, config, _ = run_mmt_ard.parse_args(["--save_steps", "10"])
        assert config.save_strategy == "steps" and config.save_steps == 10
        assert run_mmt_ard.parse_args(["--save_total_limit", "2"])[1].save_strategy == "steps"
        cfg = tmp_path / "run.yaml"
        cfg.write_text("save_steps: 5\n")
        assert run_mmt_ard.parse_args([str(cfg)])[1].save_strategy == "steps"
        assert run_mmt_ard.parse_args(["--save_steps", "10", "--save_strategy", "no"])[1].save_strategy == "no"
        assert run_mmt_ard.parse_args(["--save_steps", "10", "--save_strategy", "epoch"])[1].save_strategy == "epoch"

    def test_eps_parsing(self):
        assert parse_eps("2/255") == pytest.approx(2 / 255)
        assert parse_eps("0.01") == pytest.approx(0.01)
        with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
            parse_eps("300/255")
        with pytest.raises(ValueError, match="not a number"):
            parse_eps("two")


class TestPieces:
    """The application's small library functions, without a run."""

    def test_flags_and_config_path(self):
        from mmt_ard.cli.config_file import flags_given, split_config_path

        assert flags_given(["--max_steps", "3", "--no_eval_before_training", "--bf16=true", "-x"]) == {
            "max_steps",
            "no_eval_before_training",
            "eval_before_training",
            "bf16",
        }
        assert split_config_path(["run.yaml", "--quick"]) == ("run.yaml", ["--quick"])
        assert split_config_path(["--quick", "--config=run.json"]) == ("run.json", ["--quick"])
        assert split_config_path(["--quick"]) == (None, ["--quick"])

    def test_skipped_samples_of_every_process_merge_once(self, tmp_path):
        from mmt_ard.pipeline.inputs import skip_log_path
        from mmt_ard.pipeline.report import collect_skipped_samples

        assert collect_skipped_samples(str(tmp_path)) is None  # nothing skipped: no file
        for rank, names in ((0, ["a.png", "b.png"]), (1, ["b.png", "c.png"])):
            records = [{"sample": name, "sample_id": None, "reason": "OSError: truncated"} for name in names]
            (tmp_path / f"skipped_samples.rank{rank}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        summary = collect_skipped_samples(str(tmp_path))
        assert summary["count"] == 3 and [s["sample"] for s in summary["samples"]] == ["a.png", "b.png", "c.png"]
        assert json.loads((tmp_path / "skipped_samples.json").read_text()) == summary
        assert not list(tmp_path.glob("*.jsonl"))
        # a new run starts its log afresh; a resumed one keeps it
        stale = tmp_path / "skipped_samples.rank0.jsonl"
        stale.write_text("{}\n")
        config = MMTARDConfig(output_dir=str(tmp_path), bad_samples="skip", report_to="none", use_cpu=True)
        assert skip_log_path(config) == str(stale) and not stale.exists()
        stale.write_text("{}\n")
        config.resume_from_checkpoint = str(tmp_path / "checkpoint-2")
        assert skip_log_path(config) == str(stale) and stale.exists()
        config.bad_samples = "raise"
        assert skip_log_path(config) is None

    def test_push_failure_names_the_fix(self, tmp_path, monkeypatch):
        import huggingface_hub

        from mmt_ard.pipeline.publish import HubPushError, push_to_hub

        def refuse(self, *args, **kwargs):
            raise PermissionError("no token")

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
        with pytest.raises(HubPushError, match="hf upload someone/model") as err:
            push_to_hub(str(tmp_path), "someone/model")
        assert "PermissionError: no token" in str(err.value)

    def test_weights_checksum_tells_replicas_apart(self):
        from mmt_ard.pipeline.report import weights_checksum

        a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
        b.load_state_dict(a.state_dict())
        assert weights_checksum(a) == weights_checksum(b)
        with torch.no_grad():
            b.bias[0] += 1e-6
        assert weights_checksum(a) != weights_checksum(b)


class TestEndToEnd:
    def test_local_models_parquet_data(self, assets, tmp_path):
        out = tmp_path / "run"
        results = run(
            base_args(assets, out, "--eval_eps", "2/255", "4/255", "--eval_teachers", "--max_eval_samples", "12")
        )
        for name in ("model.safetensors", "config.json", "processor_config.json", "README.md", "results.json"):
            assert (out / name).is_file(), name
        rows = results["robustness"]["rows"]
        assert [r["model"] for r in rows] == ["robust teacher"] * 2 + ["clean teacher"] * 2 + [
            "student (before)"
        ] * 2 + ["student (after)"] * 2
        assert {round(r["eps"] * 255) for r in rows} == {2, 4}
        assert all(r["num_clean"] == 12 == r["num_robust"] for r in rows)
        assert results["training"]["steps"] == 2 and results["dataset"]["class_names"] == CLASSES
        assert results["dataset"]["num_train"] == 40 and results["dataset"]["num_eval"] == 12
        card = (out / "README.md").read_text()
        assert "| student (after) | PGD-2 (CE) | 4/255 (0.0157) |" in card and "2511.17448" in card
        from transformers import CLIPModel

        student = CLIPModel.from_pretrained(str(out))
        initial = CLIPModel.from_pretrained(assets["student"])
        changed = [
            not torch.equal(a, b) for a, b in zip(student.vision_model.parameters(), initial.vision_model.parameters())
        ]
        assert any(changed), "the vision tower did not train"
        assert all(torch.equal(a, b) for a, b in zip(student.text_model.parameters(), initial.text_model.parameters()))

    def test_lora_adapter_or_merged(self, assets, tmp_path):
        from peft import PeftModel
        from transformers import CLIPModel

        common = (
            "--lora_r",
            "4",
            "--lora_alpha",
            "8",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            "--max_steps",
            "1",
            "--eval_split",
            "none",
            "--learning_rate",
            "1e-2",
        )
        adapter_dir = tmp_path / "adapter"
        results = run(base_args(assets, adapter_dir, *common))
        assert (adapter_dir / "adapter_model.safetensors").is_file() and not (
            adapter_dir / "model.safetensors"
        ).exists()
        assert results["lora"]["saved"] == "LoRA adapter" and results["robustness"]["rows"] == []
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        assert "vision_model" in str(config["target_modules"])  # the text tower gets no adapters
        merged_dir = tmp_path / "merged"
        run(base_args(assets, merged_dir, *common, "--save_merged"))
        assert (merged_dir / "model.safetensors").is_file() and (
            merged_dir / "lora_adapter" / "adapter_model.safetensors"
        ).is_file()
        merged = CLIPModel.from_pretrained(str(merged_dir))
        base = CLIPModel.from_pretrained(assets["student"])
        reloaded = PeftModel.from_pretrained(base, str(merged_dir / "lora_adapter")).merge_and_unload()
        for (name, a), b in zip(merged.state_dict().items(), reloaded.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-6), name

    def test_push_offline_fails_clearly_after_saving(self, assets, tmp_path, monkeypatch):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        out = tmp_path / "push"
        args = base_args(
            assets,
            out,
            "--max_steps",
            "1",
            "--eval_split",
            "none",
            "--push_to_hub",
            "--hub_model_id",
            "someone/robust-tiny",
        )
        with pytest.raises(run_mmt_ard.HubPushError, match="Nothing is lost") as err:
            run(args)
        assert "someone/robust-tiny" in str(err.value) and str(out) in str(err.value)
        for name in ("model.safetensors", "processor_config.json", "README.md", "results.json"):
            assert (out / name).is_file(), name
        assert "someone/robust-tiny" in (out / "README.md").read_text()

    def test_push_offline_script_exit_code(self, assets, tmp_path):
        out = tmp_path / "push_cli"
        args = base_args(
            assets,
            out,
            "--max_steps",
            "1",
            "--eval_split",
            "none",
            "--push_to_hub",
            "--hub_model_id",
            "someone/robust-tiny",
        )
        proc = subprocess.run(
            [sys.executable, SCRIPT, *args],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
            check=False,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert proc.returncode == 1 and "Nothing is lost" in proc.stderr
        assert (out / "model.safetensors").is_file()

    def test_streaming(self, assets, tmp_path, monkeypatch):
        import datasets

        # datasets sleeps 5 s whenever a shuffled parquet stream is closed (an Arrow thread-shutdown workaround)
        monkeypatch.setattr(datasets.config, "SLEEP_TIME_ON_THREADS_SHUTDOWN", 0)
        argv = base_args(
            assets,
            tmp_path / "stream",
            "--streaming",
            "--max_eval_samples",
            "10",
            "--eval_before_training",
            "false",
            "--preset",
            "single-teacher",
        )
        results = run(drop(argv, "--clean_teacher"))  # single-teacher has no clean teacher (it would be refused)
        assert results["dataset"]["num_train"] == "streamed" and results["training"]["steps"] == 2
        (row,) = results["robustness"]["rows"]
        assert row["model"] == "student (after)" and row["num_clean"] == 10
        assert [t["role"] for t in results["teachers"]] == ["robust"]

    def test_bad_samples_policy(self, assets, tmp_path):
        args = ["--train_files", assets["bad"], "--eval_split", "none", "--max_steps", "2"]
        with pytest.raises(BadSampleError, match="sample_id=8"):
            run(base_args(assets, tmp_path / "raise", *args, "--per_device_train_batch_size", "9"))
        results = run(
            base_args(assets, tmp_path / "skip", *args, "--per_device_train_batch_size", "9", "--bad_samples", "skip")
        )
        # row 8 is read three times (the teacher-confidence report and two steps of 9) and counted once
        assert results["dataset"]["skipped"] == 1
        assert "Bad samples skipped:** 1" in (tmp_path / "skip" / "README.md").read_text()
        skipped = json.loads((tmp_path / "skip" / "skipped_samples.json").read_text())
        assert skipped["count"] == 1 and skipped["samples"][0]["sample"] == "sample_id=8"
        assert "UnidentifiedImageError" in skipped["samples"][0]["reason"]
        assert not list((tmp_path / "skip").glob("skipped_samples.rank*.jsonl"))  # the per-process logs are merged

    def test_imagefolder_with_corrupt_grayscale_and_rgba_images(self, assets, tmp_path):
        """A folder of mixed modes trains (grayscale/RGBA/palette converted); a corrupt file is named or skipped."""
        from sklearn.datasets import load_digits

        digits = load_digits()
        folder = tmp_path / "folder"
        for i in range(18):
            label = int(digits.target[i]) % 3
            gray = Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L")
            image = {0: gray, 1: gray.convert("RGBA"), 2: gray.convert("P")}[i % 3]
            (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
            image.save(folder / CLASSES[label] / f"img{i}.png")
        (folder / CLASSES[0] / "broken.png").write_bytes(b"\x89PNG\r\n truncated")
        args = ["--dataset_name", str(folder), "--train_split", "train", "--eval_split", "none", "--max_steps", "2"]
        args += ["--per_device_train_batch_size", "19"]

        def folder_args(out, *extra):
            argv = base_args(assets, out, *args, *extra)
            i = argv.index("--train_files")
            return argv[:i] + argv[i + 2 :]  # the folder, not the parquet files, is the training data

        with pytest.raises(BadSampleError, match="broken.png"):
            run(folder_args(tmp_path / "raise"))
        results = run(folder_args(tmp_path / "skip", "--bad_samples", "skip"))
        assert results["dataset"]["num_train"] == 19  # 18 images in three modes + the broken file
        assert results["dataset"]["skipped"] == 1 and results["training"]["steps"] == 2  # once, though read 3 times
        (entry,) = json.loads((tmp_path / "skip" / "skipped_samples.json").read_text())["samples"]
        assert "broken.png" in entry["sample"]
        assert (tmp_path / "skip" / "model.safetensors").is_file()

    def test_user_errors(self, assets, tmp_path):
        with pytest.raises(ValueError, match="needs `--clean_teacher`"):
            run(
                [
                    "--student",
                    assets["student"],
                    "--robust_teacher",
                    assets["teacher"],
                    "--train_files",
                    assets["train"],
                    "--output_dir",
                    str(tmp_path),
                ]
            )
        with pytest.raises(ValueError, match="--max_steps"):
            run(base_args(assets, tmp_path, "--streaming", "--max_steps", "-1"))
        with pytest.raises(ValueError, match="No training data"):
            run(["--student", assets["student"], "--preset", "tecoa", "--output_dir", str(tmp_path)])


class TestEmbedded:
    def test_quick_embedded_default_and_cache(self, tmp_path):
        cache = tmp_path / "cache"
        args = [
            "--quick",
            "--output_dir",
            str(tmp_path / "emb"),
            "--embedded_cache_dir",
            str(cache),
            "--disable_tqdm",
            "true",
        ]
        first = run(args)
        assert [r["model"] for r in first["robustness"]["rows"]] == [
            "robust teacher",
            "clean teacher",
            "student (before)",
            "student (after)",
        ]
        assert all(r["num_clean"] == QUICK_MAX_EVAL_SAMPLES for r in first["robustness"]["rows"])
        assert not any("reused" in v for v in first["training"]["phases"].values())
        assert (tmp_path / "emb" / "model.safetensors").is_file()
        card = (tmp_path / "emb" / "README.md").read_text()
        assert "embedded-default" in card and "scikit-learn digits" in card
        (entry,) = [e for e in os.listdir(cache) if not e.startswith(".")]  # beside it: its hidden lock file
        assert sorted(os.listdir(cache / entry)) == [
            "clean_teacher",
            "phases.json",
            "recipe.json",
            "robust_teacher",
            "student",
        ]
        second = run(args[:2] + [str(tmp_path / "emb2")] + args[3:])
        assert all("reused from the cache" in v for v in second["training"]["phases"].values())
        # same cached models, same seeds: the same table
        assert [r["robust_accuracy"] for r in second["robustness"]["rows"]] == [
            r["robust_accuracy"] for r in first["robustness"]["rows"]
        ]

    def test_save_steps_alone_writes_checkpoints(self, tmp_path):
        args = ["--quick", "--save_steps", "2", "--output_dir", str(tmp_path / "run"), "--disable_tqdm", "true"]
        run(args + ["--embedded_cache_dir", str(tmp_path / "cache")])
        assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    def test_console_command_prints_the_same_table_as_the_example(self, tmp_path, capsys):
        """`mmt-ard-train --quick` (setup.cfg's console script) runs the same application as
        `examples/run_mmt_ard.py --quick`: the same embedded default gives the same table."""
        command = shutil.which("mmt-ard-train", path=os.path.dirname(sys.executable))
        assert command, "no `mmt-ard-train` next to this Python: install the package with `pip install -e .`"

        def table(printed: str) -> list[str]:
            return [line for line in printed.splitlines() if line.startswith(("|", "student at eps"))]

        common = ["--quick", "--disable_tqdm", "true", "--embedded_cache_dir", str(tmp_path / "cache")]
        run([*common, "--output_dir", str(tmp_path / "example")])
        expected = table(capsys.readouterr().out)
        assert len(expected) == 2 + 4 + 1  # header, rule, four models, the student's before -> after
        proc = subprocess.run(
            [command, *common, "--output_dir", str(tmp_path / "command")],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=str(tmp_path),  # not the repository: the installed command needs nothing from it
            check=False,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert table(proc.stdout) == expected
        assert (tmp_path / "command" / "model.safetensors").is_file()


class TestDocs:
    def test_configuration_md_documents_every_field(self):
        from transformers import TrainingArguments

        with open(os.path.join(REPO, "docs", "configuration.md"), encoding="utf-8") as f:
            text = f.read()
        inherited = {f.name for f in fields(TrainingArguments)}
        own = [f.name for f in fields(MMTARDConfig) if f.name not in inherited]
        missing = [
            name for name in own + [f.name for f in fields(run_mmt_ard.ScriptArguments)] if f"`{name}`" not in text
        ]
        assert not missing, f"docs/configuration.md does not document {missing}"

    def test_quickstart_commands_match_the_script(self):
        with open(os.path.join(REPO, "docs", "quickstart.md"), encoding="utf-8") as f:
            text = f.read()
        flags = {m for m in __import__("re").findall(r"--([a-z0-9_]+)", text)}
        parser = run_mmt_ard.make_parser()
        known = {a.dest for a in parser._actions} | {
            "config_file",
            "num_processes",
            "multi_gpu",
            "num_machines",
            "mixed_precision",
            "dynamo_backend",
            "help",
            "cpu",
            "models",
            "protocol",
        }  # accelerate's and mmt-ard-eval's
        assert not flags - known, f"quickstart.md uses unknown flags {sorted(flags - known)}"
        for config in ("single_gpu.yaml", "multi_gpu_ddp.yaml", "fsdp.yaml"):
            assert config in text


def test_simplex_text_head_gives_positive_confidence_to_correct_predictions():
    from mmt_ard.embedded import simplex_text_head
    from mmt_ard.embedded.tiny import DIGIT_NAMES
    from mmt_ard.models import ZeroShotCLIP

    model, processor = build_tiny_clip(hidden=24, layers=1, image_size=8, patch_size=4, seed=3, words=DIGIT_NAMES)
    simplex_text_head(model, processor, DIGIT_NAMES, "This is a photo of a {}", seed=0)
    zs = ZeroShotCLIP(model, processor)
    head = zs.set_classes(DIGIT_NAMES, ["This is a photo of a {}"])  # (C, D), built by the trainer's own code
    gram = head @ head.T
    c = len(DIGIT_NAMES)
    assert torch.allclose(gram.diagonal(), torch.ones(c), atol=1e-4)
    off = gram[~torch.eye(c, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1 / (c - 1)), atol=1e-4)
    feats = torch.randn(2000, head.shape[1])
    labels = (feats @ head.T).argmax(-1)  # every sample "correctly classified"
    assert (zs.confidence(feats, labels) > 0).all()
