"""Exact resume: a run killed with SIGKILL and resumed ends with the weights of an uninterrupted run (to 1e-6).

One training script (`resume_helper.py`, `mmt-ard-sigmoid` with learned projection heads, 8 steps over 1.3 epochs,
checkpoints at steps 3 and 6) runs three ways: uninterrupted in this process; in a subprocess killed with SIGKILL
while it is in step 7; resumed here from its checkpoints.
"""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

HELPER_PATH = os.path.join(os.path.dirname(__file__), "resume_helper.py")
_spec = importlib.util.spec_from_file_location("mmt_ard_resume_helper", HELPER_PATH)
helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helper)

TOL = 1e-6
KILL_STEP = 7  # after checkpoint-6 (end of epoch 0), inside epoch 1


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start the run to be killed, train the reference meanwhile, then SIGKILL the first one inside step 7."""
    killed_dir = str(tmp_path_factory.mktemp("killed"))
    proc = subprocess.Popen(
        [sys.executable, HELPER_PATH, "--output_dir", killed_dir, "--hang_at_step", str(KILL_STEP)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    try:
        reference = helper.build_trainer(str(tmp_path_factory.mktemp("reference")), save_strategy="no")
        reference.train()
        marker = os.path.join(killed_dir, f"hung-at-{KILL_STEP}")
        deadline = time.time() + 240
        while not os.path.exists(marker):
            if proc.poll() is not None:
                raise AssertionError(f"the training subprocess exited early:\n{proc.stderr.read().decode()[-4000:]}")
            if time.time() > deadline:
                raise AssertionError("the training subprocess did not reach step 7 in time")
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return {
        "killed_dir": killed_dir,
        "state": helper.final_state(reference),
        "weighting": reference.weighting.state_dict(),
    }


def _resume(tmp_path, checkpoint_dir: str, drop: tuple = ()) -> "helper.MMTARDTrainer":
    """Copy one checkpoint into a fresh output dir (optionally without some files) and resume from it."""
    out = tmp_path / "resumed"
    target = out / os.path.basename(checkpoint_dir)
    shutil.copytree(checkpoint_dir, target)
    for name in drop:
        os.remove(target / name)
    trainer = helper.build_trainer(str(out))
    trainer.train(resume_from_checkpoint=str(target))
    return trainer


def test_killed_run_left_only_complete_checkpoints(runs):
    names = sorted(os.listdir(runs["killed_dir"]))
    assert names == ["checkpoint-3", "checkpoint-6", f"hung-at-{KILL_STEP}"]
    for name in ("checkpoint-3", "checkpoint-6"):
        files = set(os.listdir(os.path.join(runs["killed_dir"], name)))
        assert {"model.safetensors", "mmt_ard_projections.safetensors", "mmt_ard_state.json"} <= files
        assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= files
        assert "training_args.bin" not in files and "pytorch_model.bin" not in files


def test_resume_after_sigkill_is_exact(runs):
    """`resume_from_checkpoint=True` after the kill picks checkpoint-6 and ends bit-for-bit on the reference."""
    trainer = helper.build_trainer(runs["killed_dir"])
    assert len(trainer.accelerator.unwrap_model(trainer.model).projections) == 2  # both teachers need a projection
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == helper.MAX_STEPS
    diff = max_abs_diff(helper.final_state(trainer), runs["state"])
    print(f"resume from checkpoint-6 after SIGKILL: max |w - w_ref| = {diff:.3g}")
    assert diff <= TOL
    assert trainer.weighting.state_dict() == runs["weighting"]  # sigmoid EMA statistics restored and continued
    assert trainer.weighting.state_dict()["steps"] > 0


def test_resume_mid_epoch_is_exact(runs, tmp_path):
    """From checkpoint-3 (mid epoch 0): skipped batches, RNG re-synced after the skip, then epoch 1's order."""
    trainer = _resume(tmp_path, os.path.join(runs["killed_dir"], "checkpoint-3"))
    diff = max_abs_diff(helper.final_state(trainer), runs["state"])
    print(f"resume from checkpoint-3 (mid-epoch): max |w - w_ref| = {diff:.3g}")
    assert diff <= TOL
    assert trainer.weighting.state_dict() == runs["weighting"]


def test_resume_is_sensitive_to_the_rng_state(runs, tmp_path):
    """Control: without rng_state.pth the attack's random starts (global torch RNG) differ, and so do the weights.

    This shows the exactness above is not vacuous: the RNG the attack draws from is part of what a resume restores.
    """
    trainer = _resume(tmp_path, os.path.join(runs["killed_dir"], "checkpoint-6"), drop=("rng_state.pth",))
    assert max_abs_diff(helper.final_state(trainer), runs["state"]) > 10 * TOL


def test_checkpoint_state_is_json_and_safetensors(runs):
    ckpt = os.path.join(runs["killed_dir"], "checkpoint-6")
    with open(os.path.join(ckpt, "mmt_ard_state.json")) as f:
        state = json.load(f)
    assert state["weighting_name"] == "sigmoid" and len(state["weighting"]["mean"]) == 2
    import safetensors.torch

    proj = safetensors.torch.load_file(os.path.join(ckpt, "mmt_ard_projections.safetensors"))
    assert {k: tuple(v.shape) for k, v in proj.items()} == {"robust.weight": (40, 32), "clean.weight": (44, 32)}
    assert torch.isfinite(torch.cat([v.flatten() for v in proj.values()])).all()
