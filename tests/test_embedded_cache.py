"""The embedded default's shared cache (`mmt_ard.embedded.recipe`): runs started at once build a recipe once, under
a file lock, and publish it with one rename; a published entry is never touched again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mmt_ard.embedded import recipe as recipe_mod
from mmt_ard.embedded.recipe import PHASES, EmbeddedRecipe, build_embedded_models
from mmt_ard.embedded.tiny import DIGIT_NAMES, build_tiny_clip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "run_mmt_ard.py")
TINY = EmbeddedRecipe(clean_steps=1, robust_steps=1, student_steps=1)

# run in a subprocess while the build holds the lock: can another process take it? (it must not)
PROBE = "import sys, filelock\ntry:\n    filelock.FileLock(sys.argv[1]).acquire(timeout=0)\nexcept filelock.Timeout:\n    sys.exit(3)\n"


def _visible(folder) -> list[str]:
    return sorted(e for e in os.listdir(folder) if not e.startswith("."))


@pytest.fixture
def fake_training(monkeypatch):
    """Replace the three training phases by untrained tiny models; record each build and what it saw."""
    calls = []

    def train_phases(recipe, train_dataset, config_kwargs):
        path = os.path.join(calls_dir[0], recipe.fingerprint())
        lock = os.path.join(calls_dir[0], f".{recipe.fingerprint()}.lock")
        probe = subprocess.run([sys.executable, "-c", PROBE, lock], capture_output=True, text=True, check=False)
        calls.append({"entry_exists": os.path.exists(path), "probe": probe.returncode, "stderr": probe.stderr})
        model = build_tiny_clip(hidden=16, layers=1, image_size=16, patch_size=8, seed=0, words=DIGIT_NAMES)
        info = {"steps": 1, "train_runtime_s": 0.0, "images_per_second": 0.0, "cached": False, "description": ""}
        return {**{p: model for p in PHASES}, "phases": {p: dict(info) for p in PHASES}}

    calls_dir = [None]
    monkeypatch.setattr(recipe_mod, "_train_phases", train_phases)
    return calls, calls_dir


def test_build_holds_a_process_lock_and_publishes_once(fake_training, tmp_path):
    calls, calls_dir = fake_training
    cache = tmp_path / "cache"
    calls_dir[0] = str(cache)
    name = TINY.fingerprint()
    os.makedirs(cache / f".tmp_{name}_dead")  # a builder killed while writing left this
    (cache / f".tmp_{name}_dead" / "clean_teacher").mkdir()

    first = build_embedded_models(TINY, str(cache))
    assert len(calls) == 1
    assert calls[0]["probe"] == 3, calls[0]["stderr"]  # another process could not take the lock during the build
    assert not calls[0]["entry_exists"]  # nothing visible under the entry's name until it was complete
    assert _visible(cache) == [name]
    assert not [e for e in os.listdir(cache) if e.startswith(".tmp_")]  # the dead builder's folder is gone
    assert sorted(os.listdir(cache / name)) == sorted([*PHASES, "phases.json", "recipe.json"])
    assert not any(first["phases"][p]["cached"] for p in PHASES)

    published = {p: os.stat(cache / name / p / "model.safetensors").st_ino for p in PHASES}
    os.remove(cache / f".{name}.lock")
    second = build_embedded_models(TINY, str(cache))
    assert len(calls) == 1  # read, not rebuilt
    assert not (cache / f".{name}.lock").exists()  # a complete entry is read without the lock (read-only caches)
    assert all(second["phases"][p]["cached"] for p in PHASES)
    assert {p: os.stat(cache / name / p / "model.safetensors").st_ino for p in PHASES} == published


def test_incomplete_entry_is_rebuilt(fake_training, tmp_path):
    """An entry missing a phase (e.g. written by hand or by an old version) is replaced, under the lock."""
    calls, calls_dir = fake_training
    cache = tmp_path / "cache"
    calls_dir[0] = str(cache)
    name = TINY.fingerprint()
    os.makedirs(cache / name / "student")
    build_embedded_models(TINY, str(cache))
    assert len(calls) == 1
    assert _visible(cache) == [name]
    assert all((cache / name / p / "model.safetensors").is_file() for p in PHASES)


def test_two_concurrent_quick_runs_build_once_and_agree(tmp_path):
    """Two `--quick` embedded runs started at once on one empty cache: both finish, exactly one trains the
    teachers and student (the other waits for the lock, then reads them), and both end with the same weights and the
    same results."""
    cache = tmp_path / "cache"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = []
    for run in ("a", "b"):
        argv = [sys.executable, SCRIPT, "--quick", "--embedded_cache_dir", str(cache), "--dump_checksums"]
        argv += ["--output_dir", str(tmp_path / run), "--disable_tqdm", "true"]
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]

    results = [json.loads((tmp_path / run / "results.json").read_text()) for run in ("a", "b")]
    reused = [all("reused from the cache" in v for v in r["training"]["phases"].values()) for r in results]
    assert sorted(reused) == [False, True], [r["training"]["phases"] for r in results]
    assert len(_visible(cache)) == 1  # one entry, published once
    assert not [e for e in os.listdir(cache) if e.startswith(".tmp_")]

    checksums = [json.loads((tmp_path / run / "checksum_rank0.json").read_text()) for run in ("a", "b")]
    assert checksums[0]["initial"] == checksums[1]["initial"]
    assert checksums[0]["final"] == checksums[1]["final"]
    assert checksums[0]["initial"] != checksums[0]["final"]  # the run trained
    rows = [
        [(r["model"], r["clean_accuracy"], r["robust_accuracy"]) for r in x["robustness"]["rows"]] for x in results
    ]
    assert rows[0] == rows[1]


def test_phases_do_not_depend_on_the_callers_thread_count():
    """The cache key is the recipe: phases built by a caller with 2 torch threads equal those built with 1 (float
    reductions split by thread count would otherwise make them differ, ~1e-4 after 40 steps)."""
    import torch

    recipe = EmbeddedRecipe(clean_steps=2, robust_steps=1, student_steps=2)
    before = torch.get_num_threads()
    built = {}
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            out = build_embedded_models(recipe, None, use_cpu=True, disable_tqdm=True)
            assert torch.get_num_threads() == threads  # the caller's setting is restored
            built[threads] = {p: out[p][0].state_dict() for p in PHASES}
    finally:
        torch.set_num_threads(before)
    for p in PHASES:
        assert all(torch.equal(built[2][p][k], built[1][p][k]) for k in built[1][p]), p
