"""Webdataset shards as training and evaluation sources (`mmt_ard.data.webdataset`): brace patterns, CLIP_benchmark's
`wds_*` layout (local and through the Hub code path), `mmt-ard-train` and `mmt-ard-eval` on shards built here, and
the one-line errors for shards that cannot serve."""

import json
import os
import tarfile

import pytest
import stream_helper as helper

from mmt_ard.cli import evaluate as eval_cli
from mmt_ard.cli import train as train_cli
from mmt_ard.cli.errors import UsageError
from mmt_ard.cli.names import check_data_files
from mmt_ard.data import open_image_source
from mmt_ard.data.webdataset import ShardError, check_shard, expand_braces, iter_tar_samples, split_key
from mmt_ard.embedded.tiny import DIGIT_NAMES, build_tiny_clip

TEMPLATES = "a photo of the digit {c}.\nthe handwritten number {c}.\n"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("MMT_ARD_DEBUG", raising=False)


def _webp(png: bytes) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


def _wds_folder(root, splits: dict[str, int], label_json: bool = False) -> str:
    """A CLIP_benchmark-style folder: classnames.txt, templates, `<split>/0.tar, 1.tar, ...` + nshards.txt (12
    digits per shard: `.webp` in `test/` as CLIP_benchmark has them, `.png` elsewhere; `.cls` or `.json`)."""
    rows = helper.digit_pngs(sum(splits.values()) * 12)
    os.makedirs(root, exist_ok=True)
    i = 0
    for split, shards in splits.items():
        os.makedirs(os.path.join(root, split))
        for s in range(shards):
            samples = []
            for _ in range(12):
                png, label = rows[i]
                meta = {"json": json.dumps({"label": label}).encode()} if label_json else {"cls": str(label).encode()}
                image = {"webp": _webp(png)} if split == "test" else {"png": png}
                samples.append((f"{i:06d}", {**image, **meta}))
                i += 1
            helper.write_tar(os.path.join(root, split, f"{s}.tar"), samples)
        with open(os.path.join(root, split, "nshards.txt"), "w") as f:
            f.write(str(shards))
    with open(os.path.join(root, "classnames.txt"), "w") as f:
        f.write("\n".join(DIGIT_NAMES))
    with open(os.path.join(root, "zeroshot_classification_templates.txt"), "w") as f:
        f.write(TEMPLATES)
    return str(root)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny student and teacher folders; `wds_digits/` (train: 4 shards, test: 2), `wds_json/` (labels in `.json`),
    and broken shards: empty, not a tar, a tar of text files, a shard with a label outside the classes."""
    root = tmp_path_factory.mktemp("wds")
    for name, hidden, seed in (("student", 32, 0), ("teacher", 48, 1)):
        model, processor = build_tiny_clip(hidden=hidden, layers=1, image_size=16, patch_size=8, seed=seed)
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    _wds_folder(root / "wds_digits", {"train": 4, "test": 2})
    _wds_folder(root / "wds_json", {"train": 2, "test": 1}, label_json=True)
    bad = root / "bad"
    bad.mkdir()
    with tarfile.open(bad / "empty.tar", "w"):
        pass
    (bad / "nottar.tar").write_bytes(b"these bytes are not a tar archive" * 40)
    helper.write_tar(str(bad / "text.tar"), [("a", {"txt": b"hello", "cls": b"1"})])
    png, _ = helper.digit_pngs(1)[0]
    samples = [(f"ok{i}", {"png": png, "cls": b"3"}) for i in range(7)] + [("k-bad", {"png": png, "cls": b"42"})]
    helper.write_tar(str(bad / "badlabel.tar"), samples)
    return root


def train_args(output_dir: str, *data: str) -> list[str]:
    argv = ["--student", "student", "--robust_teacher", "teacher", "--clean_teacher", "teacher", *data]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "8", "--attack_steps", "1"]
    argv += ["--eval_before_training", "false", "--eval_attack_steps", "1", "--report_to", "none"]
    argv += ["--disable_tqdm", "true", "--use_cpu", "true", "--output_dir", output_dir]
    return argv


# ---- pieces ----
def test_brace_patterns_expand_like_the_shell():
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
    assert expand_braces("{8..10}.tar") == ["8.tar", "9.tar", "10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert split_key("dir/000123.seg.png") == ("dir/000123", "seg.png")


def test_a_shard_is_read_from_any_sample_on(workspace):
    shard = str(workspace / "wds_digits" / "train" / "1.tar")
    everything = [(i, key, sorted(files)) for i, key, files in iter_tar_samples(shard)]
    assert len(everything) == 12 and everything[0][2] == ["cls", "png"]
    assert [(i, key, sorted(files)) for i, key, files in iter_tar_samples(shard, 9)] == everything[9:]


@pytest.mark.parametrize(
    "name, problem",
    [("missing.tar", "does not exist"), ("empty.tar", "is empty"), ("nottar.tar", "is not a tar file"),
     ("text.tar", "is not a webdataset of images")],
)  # fmt: skip
def test_shards_that_cannot_serve_are_named(workspace, name, problem):
    path = str(workspace / "bad" / name)
    with pytest.raises(ShardError) as err:
        check_shard(path)
    assert path in str(err.value) and problem in str(err.value)


def test_local_wds_folder_brings_its_class_names_and_templates(workspace):
    source = open_image_source(str(workspace / "wds_digits"), "test")
    assert source.format == "webdataset" and len(source.dataset) == 24
    assert (source.image_column, source.label_column) == ("webp", "cls")
    assert source.class_names == DIGIT_NAMES and source.class_names_source == "classnames.txt"
    assert source.templates == ["a photo of the digit {}.", "the handwritten number {}."]
    pattern = open_image_source(str(workspace / "wds_digits" / "test" / "{0..1}.tar"), "test")
    assert pattern.files == source.files and pattern.class_names == DIGIT_NAMES
    labelled = open_image_source(str(workspace / "wds_json"), "train", label_json_field="label")
    assert labelled.label_column == "label" and labelled.dataset["label"][:3] == source_labels(workspace, "json")


def source_labels(workspace, kind: str) -> list[int]:
    shard = str(workspace / ("wds_json" if kind == "json" else "wds_digits") / "train" / "0.tar")
    return [json.loads(files["json"])["label"] for _, _, files in iter_tar_samples(shard)][:3]


def test_hub_wds_repository_goes_through_the_hub_code_path(workspace, monkeypatch):
    """`clip-benchmark/wds_*`: `datasets.load_dataset(<hub id>)` and `hf_hub_download` of its text files, both pointed
    at a local copy laid out like the repository (no network)."""
    import datasets
    import huggingface_hub

    local, calls = str(workspace / "wds_digits"), []
    real_load = datasets.load_dataset

    def load_dataset(path, *args, **kwargs):
        calls.append(path)
        return real_load(local if path == "clip-benchmark/wds_digits" else path, *args, **kwargs)

    def hf_hub_download(repo_id, filename, repo_type=None, **kwargs):
        assert (repo_id, repo_type) == ("clip-benchmark/wds_digits", "dataset")
        return os.path.join(local, filename)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    source = open_image_source("clip-benchmark/wds_digits", "test")
    assert calls == ["clip-benchmark/wds_digits"] and source.format == "hub"
    assert source.class_names == DIGIT_NAMES and source.class_names_source == "classnames.txt"
    assert source.templates[1] == "the handwritten number {}." and len(source.dataset) == 24


# ---- the commands ----
def test_train_streams_shards_from_a_brace_pattern(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    data = ["--train_files", "wds_digits/train/{0..3}.tar", "--streaming", "true"]
    data += ["--eval_files", "wds_digits/test/{0..1}.tar", "--max_eval_samples", "8"]
    code = train_cli.cli(train_args("run_stream", *data, "--save_steps", "1", "--save_strategy", "steps"))
    assert code == 0
    results = json.loads((workspace / "run_stream" / "results.json").read_text())
    assert [row["num_clean"] for row in results["robustness"]["rows"]] == [8]  # the streamed evaluation shards
    assert (workspace / "run_stream" / "checkpoint-2" / "model.safetensors").is_file()
    state = json.loads((workspace / "run_stream" / "checkpoint-1" / "data_state_rank0.json").read_text())
    assert state["kind"] == "sharded_stream" and state["positions"]["0"] != [0, 0, 0]


def test_train_and_evaluate_on_a_wds_folder(workspace, monkeypatch):
    """Map-style training on `wds_json/train` (labels from `.json`, class names from its classnames.txt), and the
    final evaluation on `wds_json/test`."""
    monkeypatch.chdir(workspace)
    data = ["--dataset_name", "wds_json", "--label_json_field", "label", "--eval_split", "test"]
    assert train_cli.cli(train_args("run_folder", *data)) == 0
    results = json.loads((workspace / "run_folder" / "results.json").read_text())
    assert (results["dataset"]["num_train"], results["dataset"]["num_eval"]) == (24, 12)
    assert results["dataset"]["class_names"] == DIGIT_NAMES
    assert [row["model"] for row in results["robustness"]["rows"]] == ["student (after)"]
    assert (workspace / "run_folder" / "model.safetensors").is_file()


def test_mmt_ard_eval_reads_a_wds_folder_and_a_brace_pattern(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    argv = ["--models", "student", "--datasets", "wds_digits", "wds_digits/test/{0..1}.tar", "--split", "test"]
    argv += ["--eps", "1/255", "--attacks", "pgd", "--pgd-steps", "1", "--num-samples", "16", "--no-checks"]
    argv += ["--no-progress", "--output-dir", "eval_out"]
    assert eval_cli.main(argv) == 0
    results = json.loads((workspace / "eval_out" / "results.json").read_text())["results"]
    assert len(results) == 2
    for result in results:  # the folder and the pattern: the same 24 .webp samples, its class names and 2 prompts
        assert (result["dataset_size"], result["num_samples"], result["num_templates"]) == (24, 16, 2)
        assert result["data_meta"] == {
            "templates_source": "dataset", "format": "webdataset", "classnames_source": "classnames.txt"
        }  # fmt: skip


@pytest.mark.parametrize(
    "files, named",
    [
        (["wds_digits/train/{4..7}.tar"], ["{4..7}.tar", "matches no file"]),
        (["wds_digits/train/{0..4}.tar"], ["4.tar", "does not exist"]),
        (["bad/empty.tar"], ["bad/empty.tar", "is empty"]),
        (["bad/nottar.tar"], ["bad/nottar.tar", "is not a tar file"]),
        (["bad/text.tar"], ["bad/text.tar", "not a webdataset of images"]),
        (["wds_digits/train/0.tar", "--max_train_samples", "5"], ["--max_train_samples=5", "fewer shards"]),
    ],
)
def test_bad_shards_stop_the_command_before_anything_loads(workspace, monkeypatch, capsys, files, named):
    monkeypatch.chdir(workspace)
    code = train_cli.cli(train_args("never", "--train_files", *files, "--streaming", "true", "--eval_split", "none"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mmt-ard-train: error: ")]
    assert code == 2 and len(lines) == 1, err
    assert all(text in lines[0] for text in named), lines[0]
    assert not (workspace / "never").exists()


def test_incomplete_wds_copy_is_refused(workspace, tmp_path):
    folder = _wds_folder(tmp_path / "wds_cut", {"test": 2})
    os.remove(os.path.join(folder, "test", "1.tar"))
    with pytest.raises(UsageError) as err:
        from mmt_ard.cli.names import check_wds_folder

        check_wds_folder("--datasets", folder, ["test"])
    assert "nshards.txt says 2" in str(err.value)
    with pytest.raises(UsageError):
        check_data_files("--train_files", [str(tmp_path / "wds_cut" / "test" / "{0..1}.tar")])


def test_a_label_outside_the_classes_stops_the_run_naming_shard_and_key(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    data = ["--train_files", "bad/badlabel.tar", "--class_names_file", "wds_digits/classnames.txt"]
    code = train_cli.cli(train_args("run_badlabel", *data, "--streaming", "true", "--eval_split", "none"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mmt-ard-train: error: ")]
    assert code == 1 and len(lines) == 1, err
    assert "bad/badlabel.tar#k-bad" in lines[0] and "--bad_samples skip" in lines[0]


def test_a_label_outside_the_classes_in_map_style_shards_is_refused_before_training(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    data = ["--train_files", "bad/badlabel.tar", "--class_names_file", "wds_digits/classnames.txt"]
    code = train_cli.cli(train_args("run_badlabel_map", *data, "--eval_split", "none"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mmt-ard-train: error: ")]
    assert code == 2 and len(lines) == 1, err
    assert "labels [42] outside them" in lines[0] and "badlabel.tar" in lines[0] and "'k-bad'" in lines[0]
    assert not (workspace / "run_badlabel_map").exists()


@pytest.mark.parametrize("spec", ["bad/empty.tar", "wds_digits/test/{5..6}.tar"])
def test_mmt_ard_eval_refuses_bad_shards_in_one_line(workspace, monkeypatch, capsys, spec):
    monkeypatch.chdir(workspace)
    argv = ["--models", "student", "--datasets", spec, "--no-progress", "--output-dir", "eval_never"]
    code = eval_cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("mmt-ard-eval: error: ")]
    assert code == 2 and len(lines) == 1 and f"--datasets='{spec}'" in lines[0], err
    assert not (workspace / "eval_never").exists()
