"""The commands' front door: every user error of `mmt-ard-train` and `mmt-ard-eval` is one line on stderr that names
the offending value, with the exit status of its kind (2: command line / configuration, 1: at run time, 75:
preempted), no traceback (unless `--debug`), and nothing already on disk changed.

One table (`CASES`) runs each command in-process (`cli(argv)` / `main(argv)`), in a workspace holding tiny models,
data files and a finished training run; a few tests run real processes, the skip mode, and the paths that succeed
(`--overwrite_output_dir`, `--resume_from_checkpoint` with changed settings).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from PIL import Image

from mmt_ard.cli import evaluate as eval_cli
from mmt_ard.cli import train as train_cli
from mmt_ard.cli.errors import EXIT_FAILURE, EXIT_PREEMPTED, EXIT_USAGE, run_command
from mmt_ard.embedded.tiny import build_tiny_clip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["zero", "one", "two"]
BAD_ROW = 5  # the truncated image of `evalbad.parquet`


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _parquet(path, images: list[bytes], labels: list[int], sidecar: bool = False) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": pa.array(labels, pa.int64())}), path)
    if sidecar:
        path.with_suffix(".json").write_text(json.dumps({"classes": CLASSES}))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The Hub is off limits, as in every test (set here too, so the messages say so whatever the environment)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("MMT_ARD_DEBUG", raising=False)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny student/teacher folders, parquet files (good, with a truncated image, not parquet at all), a class-names
    file, a plain file, an empty folder, and a finished training run with two checkpoints (`finished/`)."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("front_door")
    digits = load_digits()
    keep = np.flatnonzero(digits.target < 3)[:56]
    images = [_png((digits.images[i] * 255 / 16).astype(np.uint8)) for i in keep]
    labels = [int(digits.target[i]) for i in keep]
    _parquet(root / "train.parquet", images[:40], labels[:40])
    _parquet(root / "eval.parquet", images[40:], labels[40:], sidecar=True)
    bad = list(images[40:52])
    bad[BAD_ROW] = bad[BAD_ROW][: len(bad[BAD_ROW]) // 2]  # a truncated PNG
    _parquet(root / "evalbad.parquet", bad, labels[40:52], sidecar=True)
    (root / "notparquet.parquet").write_text("these are not parquet bytes")
    (root / "classes.txt").write_text("\n".join(CLASSES))
    (root / "afile").write_text("a plain file")
    (root / "emptydir").mkdir()
    (root / "project").mkdir()
    (root / "project" / "README.md").write_text("a user's own readme")
    (root / "unknown_key.yaml").write_text("attack_epss: 0.1\n")
    (root / "broken.yaml").write_text("max_steps: [1, 2\n")
    for name, hidden, seed in (("student", 32, 0), ("teacher", 48, 1)):
        model, processor = build_tiny_clip(
            hidden=hidden, layers=1, image_size=16, patch_size=8, seed=seed, words=CLASSES
        )
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        status = train_cli.cli(
            train_args("finished", "--max_steps", "2", "--save_steps", "1", "--save_strategy", "steps")
        )
    finally:
        os.chdir(cwd)
    assert status == 0 and (root / "finished" / "checkpoint-2" / "trainer_state.json").is_file()
    return root


def train_args(output_dir: str, *extra: str) -> list[str]:
    """A tiny valid `mmt-ard-train` run on the workspace's files (relative paths: run in the workspace)."""
    argv = ["--student", "student", "--robust_teacher", "teacher", "--clean_teacher", "teacher"]
    argv += ["--train_files", "train.parquet", "--class_names_file", "classes.txt", "--eval_split", "none"]
    argv += ["--max_steps", "1", "--per_device_train_batch_size", "8", "--attack_steps", "1"]
    argv += ["--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true"]
    return drop_flags(argv, extra) + ["--output_dir", output_dir, *kept(extra)]


def kept(extra) -> list[str]:
    return [e for e in extra if not e.startswith("---")]


def drop_flags(argv: list[str], extra) -> list[str]:
    """`argv` without the flags (and their values) that `extra` sets again, or removes (`---flag`)."""
    out, i = [], 0
    replaced = {e for e in kept(extra) if e.startswith("--")} | {e[1:] for e in extra if e.startswith("---")}
    while i < len(argv):
        if argv[i] in replaced:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def eval_args(output_dir: str, *extra: str) -> list[str]:
    """A tiny valid `mmt-ard-eval` run on the workspace's files."""
    argv = ["--models", "student", "--datasets", "eval.parquet", "--eps", "1/255", "--attacks", "pgd"]
    argv += ["--pgd-steps", "1", "--num-samples", "8", "--no-checks", "--no-progress"]
    return drop_flags(argv, extra) + ["--output-dir", output_dir, *kept(extra)]


@dataclass
class Case:
    """One bad command line: what it must exit with and what its error line must name."""

    id: str
    command: str  # "train" or "eval"
    argv: list[str]
    code: int
    named: list[str]  # substrings of the error line: the offending value, and what the message must say
    patch: str | None = None  # a fault injected in-process (see `inject`)
    creates: bool = False  # the run started: its (new) output folder may exist afterwards
    marks: list = field(default_factory=list)


T, E = "train", "eval"
NEW = "new_run"  # an output folder that does not exist
# fmt: off
CASES = [
    # -- flags a run would ignore --
    Case("data flag without --student", T, ["--train_files", "nosuch.parquet", "--output_dir", NEW], 2,
         ["--train_files=['nosuch.parquet']", "--student", "--robust_teacher", "--clean_teacher"]),
    Case("hub dataset without --student", T, ["--dataset_name", "cifar10", "--output_dir", NEW], 2,
         ["--dataset_name='cifar10'", "--student"]),
    Case("teacher without --student", T, ["--clean_teacher", "teacher", "--quick", "--output_dir", NEW], 2,
         ["--clean_teacher='teacher'", "--student"]),
    Case("embedded flag with --student", T, train_args(NEW, "--quick"), 2, ["--quick=True", "embedded default"]),
    Case("teacher the preset has no role for", T, train_args(NEW, "--preset", "single-teacher"), 2,
         ["--clean_teacher='teacher'", "single-teacher"]),
    Case("processor without its teacher", T,
         train_args(NEW, "---robust_teacher", "--preset", "tecoa", "---clean_teacher", "--robust_teacher_processor",
                    "teacher"), 2, ["--robust_teacher_processor='teacher'"]),
    Case("LoRA option without --lora_r", T, train_args(NEW, "--save_merged"), 2, ["--save_merged=True", "--lora_r"]),
    Case("eval files with --eval_split none", T, train_args(NEW, "--eval_files", "eval.parquet"), 2,
         ["--eval_files=['eval.parquet']", "--eval_split none"]),
    Case("evaluation flag without evaluation", T, train_args(NEW, "--eval_eps", "2/255"), 2,
         ["--eval_eps=['2/255']"]),
    Case("Hub option without --push_to_hub", T, train_args(NEW, "--hub_model_id", "me/robust"), 2,
         ["--hub_model_id='me/robust'", "--push_to_hub"]),
    Case("save_steps with save_strategy no", T, train_args(NEW, "--save_steps", "5"), 2, ["--save_steps=5"]),
    Case("sigmoid option with another weighting", T, train_args(NEW, "--sigmoid_gamma", "2"), 2,
         ["--sigmoid_gamma=2.0", "sigmoid"]),
    Case("both class-name flags", T, train_args(NEW, "--class_names", "a", "b", "c"), 2,
         ["--class_names=['a', 'b', 'c']", "--class_names_file"]),
    # -- output folders and resuming --
    Case("finished run in output_dir", T, train_args("finished", "--seed", "7"), 2,
         ["--output_dir='finished'", "checkpoint-2", "model.safetensors", "--resume_from_checkpoint",
          "--overwrite_output_dir"]),
    Case("overwrite refused by a later check", T, train_args("finished", "--overwrite_output_dir", "--label_column",
                                                              "nope"), 2, ["['nope']"]),
    Case("folder with files a run writes", T, train_args("project"), 2, ["--output_dir='project'", "README.md"]),
    Case("output_dir is a file", T, train_args("afile"), 2, ["--output_dir='afile'", "is a file"]),
    Case("output_dir under a file", T, train_args("afile/run"), 2, ["--output_dir='afile/run'"]),
    Case("resume from a missing checkpoint", T, train_args(NEW, "--resume_from_checkpoint", "finished/checkpoint-9"),
         2, ["--resume_from_checkpoint='finished/checkpoint-9'"]),
    Case("resume without any checkpoint", T, train_args("emptydir", "--resume_from_checkpoint", "true"), 2,
         ["--resume_from_checkpoint='true'", "emptydir"]),
    Case("resume an incomplete checkpoint", T, train_args(NEW, "--resume_from_checkpoint", "emptydir"), 2,
         ["--resume_from_checkpoint='emptydir'", "not a complete checkpoint"]),
    Case("resume and overwrite", T, train_args("finished", "--resume_from_checkpoint", "true",
                                               "--overwrite_output_dir"), 2,
         ["--resume_from_checkpoint", "--overwrite_output_dir"]),
    # -- values the configuration refuses (each was a traceback) --
    Case("unknown preset", T, train_args(NEW, "--preset", "nope"), 2, ["'nope'", "mmt-ard"]),
    Case("learning rate nan", T, train_args(NEW, "--learning_rate", "nan"), 2, ["`learning_rate`=nan"]),
    Case("batch size 0", T, train_args(NEW, "--per_device_train_batch_size", "0"), 2,
         ["`per_device_train_batch_size`=0"]),
    Case("attack budget out of range", T, train_args(NEW, "--attack_eps", "2"), 2, ["`attack_eps`", "2"]),
    Case("unknown bad_samples policy", T, train_args(NEW, "--bad_samples", "maybe"), 2, ["'maybe'"]),
    Case("missing label column", T, train_args(NEW, "--label_column", "nope"), 2, ["['nope']", "--label_column"]),
    Case("too few class names", T,
         train_args(NEW, "---class_names_file", "--class_names", "zero", "one"), 2,
         ["--class_names=['zero', 'one']", "[2]"]),
    Case("a file that is not parquet", T, train_args(NEW, "--train_files", "notparquet.parquet"), 2,
         ["'notparquet.parquet'", "not a parquet file"]),
    Case("training file that does not exist", T, train_args(NEW, "--train_files", "nosuch.parquet"), 2,
         ["--train_files='nosuch.parquet'"]),
    Case("student neither folder nor Hub id", T, train_args(NEW, "--student", "nosuch-model"), 2,
         ["--student='nosuch-model'", "offline mode is on"]),
    Case("teacher neither folder nor Hub id", T, train_args(NEW, "--robust_teacher", "someone/nosuch"), 2,
         ["--robust_teacher='someone/nosuch'", "offline mode is on"]),
    Case("processor neither folder nor Hub id", T, train_args(NEW, "--student_processor", "nosuch-proc"), 2,
         ["--student_processor='nosuch-proc'"]),
    Case("local path that does not exist", T, train_args(NEW, "--clean_teacher", "./models/teacher"), 2,
         ["--clean_teacher='./models/teacher'", "no such file or folder"]),
    Case("preset needs a teacher", T, train_args(NEW, "---clean_teacher"), 2, ["--clean_teacher", "mmt-ard"]),
    Case("no training data", T, ["--student", "student", "--preset", "tecoa", "--output_dir", NEW], 2,
         ["--train_files", "--dataset_name"]),
    Case("streaming without max_steps", T, train_args(NEW, "--streaming", "--max_steps", "-1"), 2, ["--max_steps"]),
    Case("eval budget out of range", T, train_args(NEW, "--eval_split", "test", "--eval_files", "eval.parquet",
                                                   "--eval_eps", "300/255"), 2, ["'300/255'", "[0, 1]"]),
    Case("seed out of range", T, train_args(NEW, "--seed", "-1"), 2, ["`seed`=-1"]),
    Case("negative data workers", T, train_args(NEW, "--dataloader_num_workers", "-1"), 2,
         ["`dataloader_num_workers`=-1"]),
    Case("nothing to train", T, train_args(NEW, "--max_steps", "-1", "--num_train_epochs", "0"), 2,
         ["`num_train_epochs`=0.0"]),
    Case("negative LoRA rank", T, train_args(NEW, "--lora_r", "-1"), 2, ["--lora_r=-1"]),
    Case("zero threads", T, train_args(NEW, "--num_threads", "0"), 2, ["--num_threads=0"]),
    Case("zero training samples", T, train_args(NEW, "--max_train_samples", "0"), 2, ["--max_train_samples=0"]),
    Case("evaluation file that does not exist", T, train_args(NEW, "--eval_split", "test", "--eval_files",
                                                              "nosuch.parquet"), 2, ["--eval_files='nosuch.parquet'"]),
    Case("class-names file that does not exist", T, train_args(NEW, "--class_names_file", "nosuch.txt"), 2,
         ["--class_names_file='nosuch.txt'"]),
    Case("dataset folder that does not exist", T, train_args(NEW, "---train_files", "--dataset_name", "./nosuch"), 2,
         ["--dataset_name='./nosuch'"]),
    Case("unknown option", T, train_args(NEW, "--max_stepz", "3"), 2, ["--max_stepz", "--max_steps"]),
    Case("value of the wrong type", T, train_args(NEW, "--max_steps", "abc"), 2, ["'abc'", "--max_steps"]),
    Case("config file with an unknown key", T, ["unknown_key.yaml"], 2, ["'unknown_key.yaml'", "attack_epss"]),
    Case("config file that is not YAML", T, ["broken.yaml"], 2, ["'broken.yaml'", "not valid YAML"]),
    Case("config file that does not exist", T, ["--config", "nosuch.yaml"], 2, ["'nosuch.yaml'"]),
    # -- at run time --
    Case("bad sample while training", T, train_args(NEW, "--train_files", "evalbad.parquet",
                                                    "--per_device_train_batch_size", "12"), 1,
         ["sample_id=5", "bad_samples='skip'"], creates=True),
    Case("preempted", T, train_args(NEW), EXIT_PREEMPTED, ["preempted", "SIGTERM"], patch="preempt", creates=True),
    Case("unexpected error", T, train_args(NEW), 1, ["AttributeError", "--debug"], patch="bug", creates=True),
    # -- mmt-ard-eval --
    Case("device that does not exist", E, eval_args(NEW, "--device", "cuda:99"), 2, ["--device='cuda:99'", "cpu"]),
    Case("not a device name", E, eval_args(NEW, "--device", "foo"), 2, ["--device='foo'", "cpu"]),
    Case("model neither folder nor Hub id", E, eval_args(NEW, "--models", "nosuch-model"), 2,
         ["--models='nosuch-model'", "offline mode is on"]),
    Case("model folder without a model", E, eval_args(NEW, "--models", "emptydir"), 2,
         ["--models='emptydir'", "holds neither a model"]),
    Case("processor neither folder nor Hub id", E, eval_args(NEW, "--processor", "nosuch-proc"), 2,
         ["--processor='nosuch-proc'"]),
    Case("dataset file that does not exist", E, eval_args(NEW, "--datasets", "nosuch.parquet"), 2,
         ["--datasets='nosuch.parquet'"]),
    Case("known dataset not cached offline", E, eval_args(NEW, "--datasets", "cifar10"), 2,
         ["--datasets='cifar10'", "offline mode is on"]),
    Case("dataset file that is not parquet", E, eval_args(NEW, "--datasets", "notparquet.parquet"), 2,
         ["'notparquet.parquet'", "not a parquet file"]),
    Case("budget in 0-255 units", E, eval_args(NEW, "--eps", "2"), 2, ["2.0", "pixel units"]),
    Case("budget that is not a number", E, eval_args(NEW, "--eps", "two"), 2, ["'two'"]),
    Case("unknown attack", E, eval_args(NEW, "--attacks", "foo"), 2, ["'foo'"]),
    Case("unknown protocol", E, eval_args(NEW, "--protocol", "nope"), 2, ["'nope'"]),
    Case("no --models", E, ["--datasets", "eval.parquet"], 2, ["--models"]),
    Case("class-names JSON that does not exist", E, eval_args(NEW, "--class-names-json", "nosuch.json"), 2,
         ["--class-names-json='nosuch.json'"]),
    Case("class-names JSON that is not JSON", E, eval_args(NEW, "--class-names-json", "broken.yaml"), 2,
         ["'broken.yaml'", "not valid JSON"]),
    Case("output-dir is a file", E, eval_args("afile"), 2, ["--output-dir='afile'"]),
    Case("zero samples", E, eval_args(NEW, "--num-samples", "0"), 2, ["`num_samples`=0"]),
    Case("prompt without a slot", E, eval_args(NEW, "--templates", "a photo"), 2, ["'a photo'"]),
    Case("unknown bad-samples policy", E, eval_args(NEW, "--bad-samples", "maybe"), 2, ["'maybe'"]),
    Case("unknown eval option", E, eval_args(NEW, "--epz", "2"), 2, ["--epz"]),
    Case("truncated image", E, eval_args(NEW, "--datasets", "evalbad.parquet", "--num-samples", "12"), 1,
         ["evalbad.parquet", f"row {BAD_ROW}", "--bad-samples skip"], creates=True),
]
# fmt: on
if not torch.cuda.is_available():
    CASES.append(
        Case(
            "cuda on a CPU-only torch",
            E,
            eval_args(NEW, "--device", "cuda"),
            2,
            ["--device='cuda'", "not available", "cpu"],
        )
    )


def snapshot(root) -> dict[str, tuple]:
    """Every file and folder under `root`: size and content hash (files), or a marker (folders)."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            state[os.path.relpath(os.path.join(folder, name), root)] = ("dir",)
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                state[os.path.relpath(path, root)] = (os.path.getsize(path), hashlib.sha1(f.read()).hexdigest())
    return state


def inject(kind: str, monkeypatch) -> None:
    """A fault at the start of training: a preemption, or a bug."""
    from mmt_ard.runtime.preemption import TrainingPreempted
    from mmt_ard.training.trainer import MMTARDTrainer

    def preempt(self, *args, **kwargs):
        raise TrainingPreempted(3, "new_run/checkpoint-3", "SIGTERM")

    def bug(self, *args, **kwargs):
        return None.no_such_attribute

    monkeypatch.setattr(MMTARDTrainer, "train", {"preempt": preempt, "bug": bug}[kind])


def run_case(argv: list[str], command: str) -> int:
    return train_cli.cli(argv) if command == T else eval_cli.main(argv)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_user_error(case: Case, workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    if case.patch:
        inject(case.patch, monkeypatch)
    before = snapshot(workspace)
    code = run_case(case.argv, case.command)
    err = capsys.readouterr().err
    prog = "mmt-ard-train" if case.command == T else "mmt-ard-eval"
    prefix = f"{prog}: " if case.code == EXIT_PREEMPTED else f"{prog}: error: "
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert code == case.code, err
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for text in case.named:
        assert text in lines[0], f"{text!r} is not named in {lines[0]!r}"
    after = snapshot(workspace)
    if case.creates:  # the run started: only its own new folder may have appeared
        after = {k: v for k, v in after.items() if not k.startswith(NEW)}
        shutil.rmtree(workspace / NEW, ignore_errors=True)
    assert after == before, "files on disk changed"


def test_every_listed_case_is_in_the_table():
    """The cases of the issue this table was written for, by name (the table may hold more)."""
    ids = {c.id for c in CASES}
    listed = {
        "data flag without --student",
        "hub dataset without --student",
        "finished run in output_dir",
        "unknown preset",
        "learning rate nan",
        "batch size 0",
        "missing label column",
        "too few class names",
        "output_dir is a file",
        "resume without any checkpoint",
        "a file that is not parquet",
        "student neither folder nor Hub id",
        "teacher neither folder nor Hub id",
        "device that does not exist",
        "truncated image",
        "preempted",
    }
    assert listed <= ids, listed - ids


def test_debug_shows_the_traceback(workspace, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    assert eval_cli.main(eval_args(NEW, "--device", "foo", "--debug")) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("mmt-ard-eval: error: --device='foo'")
    monkeypatch.setenv("MMT_ARD_DEBUG", "1")
    assert train_cli.cli(train_args(NEW, "--preset", "nope")) == EXIT_USAGE
    assert "Traceback" in capsys.readouterr().err
    assert not (workspace / NEW).exists()


def test_a_command_adopts_the_error_path_in_one_call(capsys):
    """What a new command gets from `run_command`: the line, the status of each kind, and --debug taken off."""
    seen = []

    def main(argv):
        seen.append(argv)
        if argv == ["config"]:
            raise ValueError("`x`=3 is wrong: use 4.")
        if argv == ["late"]:
            from mmt_ard.cli.errors import running

            running()
            raise ValueError("`y`=1 went wrong while running.")
        return 0

    assert run_command("mmt-ard-x", main, ["config", "--debug"]) == EXIT_USAGE
    assert seen[-1] == ["config"] and "Traceback" in capsys.readouterr().err
    assert run_command("mmt-ard-x", main, ["late"]) == EXIT_FAILURE
    assert capsys.readouterr().err == "mmt-ard-x: error: `y`=1 went wrong while running.\n"
    assert run_command("mmt-ard-x", main, ["fine"]) == 0


def test_console_processes_exit_with_the_status(workspace):
    """Real processes: the exit status reaches the shell, one line, no traceback."""
    env = {**os.environ, "PYTHONPATH": REPO, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("MMT_ARD_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mmt_ard.cli.train", *train_args(NEW, "--student", "nosuch-model")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workspace,
        env=env,
        check=False,
    )
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("mmt-ard-train: error: --student='nosuch-model'")
    assert not (workspace / NEW).exists()


def test_overwrite_output_dir_starts_over(workspace, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(workspace / "finished", run)
    (run / "notes.txt").write_text("mine")
    monkeypatch.chdir(workspace)
    assert (
        train_cli.cli(train_args(str(run), "--overwrite_output_dir", "--save_strategy", "steps", "--save_steps", "1"))
        == 0
    )
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-1"]  # the old checkpoint-2 is gone
    assert (run / "notes.txt").read_text() == "mine"  # files the library does not write stay
    assert json.loads((run / "results.json").read_text())["training"]["steps"] == 1


def test_resume_with_other_settings_warns(workspace, tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    shutil.copytree(workspace / "finished", run)
    monkeypatch.chdir(workspace)
    argv = train_args(str(run), "--resume_from_checkpoint", "true", "--seed", "7", "--max_steps", "3")
    assert train_cli.cli(argv + ["--save_strategy", "steps", "--save_steps", "1"]) == 0
    warnings = [r.getMessage() for r in caplog.records if "other settings" in r.getMessage()]
    assert len(warnings) == 1 and "seed: 42 -> 7" in warnings[0] and "checkpoint-2" in warnings[0]
    assert json.loads((run / "results.json").read_text())["training"]["steps"] == 3
    # the same settings: no warning
    caplog.clear()
    argv = train_args(str(run), "--resume_from_checkpoint", "true", "--seed", "7", "--max_steps", "4")
    assert train_cli.cli(argv + ["--save_strategy", "steps", "--save_steps", "1"]) == 0
    assert not [r for r in caplog.records if "other settings" in r.getMessage()]


def test_bad_samples_skip_counts_the_skipped_rows(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    out = tmp_path / "eval"
    argv = eval_args(str(out), "--datasets", "evalbad.parquet", "--num-samples", "12", "--bad-samples", "skip")
    assert eval_cli.main(argv) == 0
    (result,) = json.loads((out / "results.json").read_text())["results"]
    assert result["num_skipped"] == 1 and result["num_samples"] == 11 and result["dataset_size"] == 12
    assert result["skipped_rows"][0]["row"] == BAD_ROW and "truncated" in result["skipped_rows"][0]["reason"]
    md = (out / "results.md").read_text()
    assert "evalbad: 1 skipped (rows 5)" in md and "over the rows evaluated" in md
    assert "| student | evalbad | 11/12 |" in md
    # a clean dataset records none
    assert eval_cli.main(eval_args(str(tmp_path / "clean"))) == 0
    (result,) = json.loads((tmp_path / "clean" / "results.json").read_text())["results"]
    assert result["num_skipped"] == 0 and "skipped_rows" not in result


def test_bad_image_in_a_folder_is_named_by_its_file(tmp_path):
    """Evaluation data read through `datasets`' Image feature (an image folder) are decoded where a bad file can be
    named, and skipped."""
    from mmt_ard.data import BadSampleError
    from mmt_ard.evaluation import load_eval_data

    for i, name in enumerate(CLASSES * 2):
        folder = tmp_path / "digits" / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "digits" / "two" / "broken.png").write_bytes(b"\x89PNG\r\n truncated")
    with pytest.raises(BadSampleError, match=r"broken\.png.*--bad-samples skip"):
        load_eval_data(str(tmp_path / "digits"), image_size=16, num_samples=None)
    data = load_eval_data(str(tmp_path / "digits"), image_size=16, num_samples=None, bad_samples="skip")
    assert len(data) == 6 and len(data.skipped) == 1 and data.dataset_size == 7


@pytest.mark.parametrize(
    "outcome, expected",
    [("missing", "the Hub has no such repository"), ("unreachable", "the Hub cannot be reached"), ("found", None)],
)
def test_hub_names_online(monkeypatch, outcome, expected):
    """Online (offline mode off), a name that is not cached is looked up on the Hub: missing or unreachable is
    refused naming the value and saying that offline mode is off."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    from mmt_ard.cli.errors import UsageError
    from mmt_ard.cli.names import check_model_name

    class Missing(RepositoryNotFoundError):
        def __init__(self):
            Exception.__init__(self, "404 Client Error")

    def model_info(self, repo_id, **kwargs):
        if outcome == "missing":
            raise Missing()
        if outcome == "unreachable":
            raise ConnectionError("Name or service not known")
        return object()

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(HfApi, "model_info", model_info)
    if expected is None:
        check_model_name("--student", "someone/model")
        return
    with pytest.raises(UsageError) as err:
        check_model_name("--student", "someone/model")
    message = str(err.value)
    assert "--student='someone/model'" in message and expected in message and "offline mode is off" in message


@pytest.mark.parametrize(
    "prog, argv, named",
    [
        ("mmt-ard-export", ["--student", "nosuch-model", "--into", "emptydir", "--output-dir", NEW], "nosuch-model"),
        ("mmt-ard-export", ["--student", "x", "--into", "x", "--output-dir", NEW, "--frobnicate"], "--frobnicate"),
        ("mmt-ard-eval-lvlm", ["--models", "emptydir", "--datasets", "eval.parquet", "--device", "foo"], "'foo'"),
        ("mmt-ard-eval-lvlm", ["--models", "emptydir", "--datasets", "nosuch", "--output-dir", NEW], "'nosuch'"),
    ],
)
def test_lvlm_commands_share_the_error_path(workspace, monkeypatch, capsys, prog, argv, named):
    from mmt_ard.cli import eval_lvlm, export

    monkeypatch.chdir(workspace)
    before = snapshot(workspace)
    main = export.main if prog == "mmt-ard-export" else eval_lvlm.main
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in err, err
    assert snapshot(workspace) == before
