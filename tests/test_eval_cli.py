"""`mmt-ard-eval` end to end on local data, offline: JSON, markdown table, PNG; resume; model folders; errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from _eval_tiny import digits_test, saved_tiny_clip_dir

from mmt_ard.cli.evaluate import main, parse_eps
from mmt_ard.embedded.tiny import DIGIT_NAMES
from mmt_ard.evaluation import robust_eval
from mmt_ard.evaluation.robust_eval import resolve_model_path


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    """The first 80 held-out digits as a parquet file (HF Image + ClassLabel) and as an image folder."""
    import datasets
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    x, y = digits_test(80)
    images = [Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for img in x]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_NAMES)})
    parquet = root / "digits_pq" / "test-00000-of-00001.parquet"
    parquet.parent.mkdir()
    datasets.Dataset.from_dict({"image": images, "label": y.tolist()}, features=features).to_parquet(str(parquet))
    for i, (img, label) in enumerate(zip(images, y.tolist())):
        folder = root / "digits_folder" / DIGIT_NAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:03d}.png")
    meta = root / "prompts.json"
    meta.write_text(
        json.dumps({name: {"templates": ["a photo of the digit {c}"]} for name in ("digits_pq", "digits_folder")})
    )
    return {"parquet": str(parquet.parent), "folder": str(root / "digits_folder"), "json": str(meta)}


def base_args(model_dir, data, out, *extra):
    return [
        "--models",
        model_dir,
        "--datasets",
        data["parquet"],
        data["folder"],
        "--class-names-json",
        data["json"],
        "--output-dir",
        out,
        "--no-progress",
        *extra,
    ]


ROBUSTVLM_SMALL = ["--protocol", "robustvlm", "--n-iter", "10", "--num-samples", "60", "--check-samples", "40"]


def test_help_of_the_console_script():
    script = os.path.join(os.path.dirname(sys.executable), "mmt-ard-eval")
    cmd = [script, "--help"] if os.path.isfile(script) else [sys.executable, "-m", "mmt_ard.cli.evaluate", "--help"]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert out.returncode == 0, out.stderr
    assert "--protocol" in out.stdout and "robustvlm" in out.stdout and "--eps" in out.stdout


def test_list_protocols(capsys):
    assert main(["--list-protocols"]) == 0
    out = capsys.readouterr().out
    assert "protocol=robustvlm" in out and "APGD-T" in out and "protocol=tecoa" in out and "PGD-100" in out


def test_parse_eps():
    assert parse_eps("2/255") == [2 / 255]
    assert parse_eps("2/255,4/255") == [2 / 255, 4 / 255]
    assert parse_eps("0.5") == [0.5]


def test_end_to_end_robustvlm_on_local_data(tmp_path, local_data, capsys):
    out = str(tmp_path / "eval")
    model_dir = saved_tiny_clip_dir()
    assert main(base_args(model_dir, local_data, out, *ROBUSTVLM_SMALL)) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("protocol=robustvlm (modified: check_samples, n_iter, num_samples)")

    with open(os.path.join(out, "results.json")) as f:
        report = json.load(f)
    assert report["protocol"]["name"] == "robustvlm" and report["protocol"]["eps_255"] == ["2/255", "4/255"]
    assert report["protocol"]["attacks"] == ["apgd-ce", "apgd-t"] and report["protocol"]["n_iter"] == 10
    assert {"mmt_ard", "torch", "transformers", "datasets", "python"} <= set(report["versions"])
    assert [(r["model"], r["dataset"]) for r in report["results"]] == [
        ("tiny-digits-clip", "digits_pq"),
        ("tiny-digits-clip", "digits_folder"),
    ]
    for r in report["results"]:
        assert (r["num_samples"], r["dataset_size"], r["num_classes"]) == (60, 80, 10)
        assert r["attacks"] == ["apgd-ce", "apgd-t"] and r["check_samples"] == 40
        assert r["data_meta"]["templates_source"] == "user json"
        acc = r["robust_accuracy"]
        assert set(acc) == {"2/255", "4/255"}
        assert 0 < acc["4/255"]["worst_case"] <= acc["2/255"]["worst_case"] <= r["clean_accuracy"] <= 1
        assert r["clean_accuracy"] > 0.6  # the trained prompt, from the user JSON
        assert not r["flagged"], r["failed_checks"]
    assert report["results"][0]["data_meta"]["format"] == "parquet"
    assert report["results"][1]["data_meta"]["format"] == "imagefolder"

    with open(os.path.join(out, "results.md")) as f:
        md = f.read()
    assert "protocol=robustvlm" in md
    assert "| model | dataset | n | clean | robust 2/255 | robust 4/255 | attacks | checks |" in md
    assert "| tiny-digits-clip | digits_pq | 60/80 |" in md and "mean of 2" in md
    assert "## Gradient-masking checks" in md
    with open(os.path.join(out, "robustness.png"), "rb") as f:
        png = f.read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def _write_png_parquet(path, n: int) -> str:
    """The first `n` held-out digits as raw PNG bytes + int64 labels (no ClassLabel): the format of shared/data."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    x, y = digits_test(n)
    pngs = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    pq.write_table(pa.table({"image": pa.array(pngs, pa.binary()), "label": pa.array(y.tolist(), pa.int64())}), path)
    return str(path)


def test_parquet_with_json_sidecar_and_a_custom_prompt(tmp_path, capsys):
    """`--datasets path/to/cifar10.parquet` reads its class names from `cifar10.json`; `--templates` takes a prompt."""
    data = _write_png_parquet(tmp_path / "cifar10.parquet", 40)
    (tmp_path / "cifar10.json").write_text(json.dumps({"name": "digits", "classes": list(DIGIT_NAMES)}))
    out = str(tmp_path / "eval")
    args = ["--models", saved_tiny_clip_dir(), "--datasets", data, "--templates", "a photo of the digit {}"]
    args += ["--eps", "2/255", "--attacks", "pgd", "--pgd-steps", "3", "--num-samples", "30", "--no-checks"]
    assert main([*args, "--output-dir", out, "--no-progress"]) == 0
    assert "prompt 'a photo of the digit {}'" in capsys.readouterr().out
    with open(os.path.join(out, "results.json")) as f:
        (result,) = json.load(f)["results"]
    assert (result["dataset"], result["num_samples"], result["num_classes"]) == ("cifar10", 30, 10)
    assert (
        result["data_meta"]["classnames_source"] == "sidecar" and result["data_meta"]["templates_source"] == "single"
    )
    assert result["clean_accuracy"] > 0.6  # the sidecar's digit names with the trained prompt: not CIFAR's names


def test_known_name_without_class_names_uses_the_built_in_ones(tmp_path):
    """No sidecar, no ClassLabel: a file named like a known set takes its built-in names and prompt ensemble."""
    from mmt_ard.data.known_datasets import CLASS_NAMES, TEMPLATES
    from mmt_ard.evaluation import load_eval_data

    data = load_eval_data(_write_png_parquet(tmp_path / "cifar10_test.parquet", 12), image_size=16, num_samples=6)
    assert data.name == "cifar10_test" and data.class_names == list(CLASS_NAMES["cifar10"])
    assert data.meta["classnames_source"] == "built-in" and data.templates == list(TEMPLATES["cifar10"])
    with pytest.raises(ValueError, match="sidecar"):
        load_eval_data(_write_png_parquet(tmp_path / "mine.parquet", 4), image_size=16, num_samples=4)


def test_templates_flag_rejects_a_prompt_without_a_slot(capsys):
    assert main(["--models", "m", "--templates", "a photo"]) == 2
    assert "'{}' for the class name" in capsys.readouterr().err


def test_resume_skips_finished_datasets(tmp_path, local_data, monkeypatch, capsys):
    out = str(tmp_path / "eval")
    model_dir = saved_tiny_clip_dir()
    quick = ["--eps", "2/255", "--num-samples", "30", "--check-samples", "30"]
    args = [
        "--models",
        model_dir,
        "--datasets",
        local_data["parquet"],
        "--class-names-json",
        local_data["json"],
        "--output-dir",
        out,
        "--no-progress",
        *quick,
    ]
    assert main(args) == 0
    with open(os.path.join(out, "results.json")) as f:
        first = json.load(f)["results"]

    calls = []
    real = robust_eval.evaluate_on_data

    def counting(model, data, protocol, **kwargs):
        calls.append(data.name)
        return real(model, data, protocol, **kwargs)

    monkeypatch.setattr(robust_eval, "evaluate_on_data", counting)
    capsys.readouterr()
    # the finished dataset is skipped (the model is not even loaded), the new one is computed
    args[args.index("--datasets") + 1 : args.index("--datasets") + 2] = [local_data["parquet"], local_data["folder"]]
    assert main(args) == 0
    assert calls == ["digits_folder"]
    assert "skip tiny-digits-clip x digits_pq" in capsys.readouterr().out
    with open(os.path.join(out, "results.json")) as f:
        second = json.load(f)["results"]
    assert second[0] == first[0] and [r["dataset"] for r in second] == ["digits_pq", "digits_folder"]
    # everything finished: nothing runs
    calls.clear()
    assert main(args) == 0 and calls == []
    # another protocol (here eps) is not "finished": both are recomputed; --no-resume recomputes too
    assert main(args[: -len(quick)] + ["--eps", "4/255", "--num-samples", "30", "--check-samples", "30"]) == 0
    assert calls == ["digits_pq", "digits_folder"]
    calls.clear()
    assert (
        main(args[: -len(quick)] + ["--eps", "4/255", "--num-samples", "30", "--check-samples", "30", "--no-resume"])
        == 0
    )
    assert calls == ["digits_pq", "digits_folder"]


def test_same_named_datasets_are_not_confused(tmp_path, local_data, monkeypatch):
    from mmt_ard.evaluation.datasets import short_name

    assert short_name(local_data["parquet"] + "/test-00000-of-00001.parquet") == "digits_pq"
    other = tmp_path / "elsewhere" / "digits_folder" / "test"
    shutil.copytree(local_data["folder"], other)
    assert short_name(str(other)) == "digits_folder"
    calls = []
    real = robust_eval.evaluate_on_data
    monkeypatch.setattr(
        robust_eval, "evaluate_on_data", lambda m, d, p, **k: calls.append(d.name) or real(m, d, p, **k)
    )
    kwargs = {
        "eps": (2 / 255,),
        "num_samples": 10,
        "checks": False,
        "pgd_steps": 1,
        "output_dir": str(tmp_path / "out"),
        "progress": False,
        "verbose": False,
    }
    robust_eval.evaluate_robustness(saved_tiny_clip_dir(), [local_data["folder"]], **kwargs)
    report = robust_eval.evaluate_robustness(saved_tiny_clip_dir(), [str(other)], **kwargs)
    assert calls == ["digits_folder", os.path.normpath(str(other))]  # same name, another folder: not skipped
    assert [r["dataset"] for r in report["results"]] == ["digits_folder", os.path.normpath(str(other))]
    report = robust_eval.evaluate_robustness(saved_tiny_clip_dir(), [local_data["folder"], str(other)], **kwargs)
    assert len(calls) == 2 and len(report["results"]) == 2  # both finished: nothing runs


def test_training_run_output_dir(tmp_path, local_data, digits_train):
    """A run's output_dir is evaluated from its final model, or from its newest checkpoint when it has none."""
    from mmt_ard import MMTARDConfig, MMTARDTrainer
    from mmt_ard.embedded.tiny import build_tiny_clip

    clip, processor = build_tiny_clip(hidden=32, image_size=16, seed=0)
    run = str(tmp_path / "run")
    args = MMTARDConfig(
        output_dir=run,
        preset="tecoa",
        use_cpu=True,
        report_to="none",
        max_steps=1,
        per_device_train_batch_size=8,
        attack_steps=0,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = MMTARDTrainer(
        model=clip, args=args, processing_class=processor, train_dataset=digits_train.select(range(16))
    )
    trainer.train()
    trainer.save_model(run)
    report = robust_eval.evaluate_robustness(
        run,
        [local_data["folder"]],
        eps=(1 / 255,),
        num_samples=10,
        checks=False,
        pgd_steps=1,
        progress=False,
        verbose=False,
    )
    (r,) = report["results"]
    assert (r["model"], r["num_samples"], r["model_source"]) == ("run", 10, run)

    nested = tmp_path / "run2"
    for step in (2, 10):
        shutil.copytree(saved_tiny_clip_dir(), nested / f"checkpoint-{step}")
    with pytest.warns(UserWarning, match="checkpoint-10"):
        assert resolve_model_path(str(nested)).endswith("checkpoint-10")
    with pytest.raises(FileNotFoundError, match="output_dir"):
        resolve_model_path(str(tmp_path))


def test_errors_exit_with_a_message(tmp_path, local_data, capsys):
    model_dir = saved_tiny_clip_dir()
    assert main(base_args(model_dir, local_data, str(tmp_path / "a"), "--eps", "2")) == 2  # configuration
    assert "pixel units" in capsys.readouterr().err
    assert main(base_args(str(tmp_path / "missing"), local_data, str(tmp_path / "b"))) == 2
    assert "missing'" in capsys.readouterr().err  # a local path that does not exist, named
    assert main(["--datasets", "cifar10"]) == 2  # no --models
