"""Exact resume under DDP: a 2-process run killed with SIGKILL after a checkpoint resumes to the uninterrupted weights.

The run is `resume_helper.py` (`mmt-ard-sigmoid` with learned projection heads, 8 steps, checkpoints at steps 3 and
6, `save_total_limit=1`) on 2 CPU processes (gloo). Two launches: one killed with SIGKILL on both ranks while in
step 7; one that resumes from what the kill left and then, in the same processes, trains the uninterrupted reference.
"""

import json
import os
import signal
import subprocess
import time

import pytest
import safetensors
import safetensors.torch
from _launch import REPO, launch_two_processes, two_process_command

HELPER = os.path.join(REPO, "tests", "resume_helper.py")
KILL_STEP = 7  # after checkpoint-6 is published, inside the next epoch
TOL = 1e-6


def _read_dump(path):
    with safetensors.safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return safetensors.torch.load_file(str(path)), json.loads(meta["weighting"]), meta["setup"]


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """The run SIGKILLed on both ranks while in step 7 (after checkpoint-6): its output dir."""
    killed = tmp_path_factory.mktemp("ddp_killed")
    cmd, env = two_process_command(
        29541, HELPER, "--output_dir", str(killed), "--hang_at_step", str(KILL_STEP), "--save_total_limit", "1"
    )
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    markers = [killed / f"hung-at-{KILL_STEP}-rank{r}" for r in (0, 1)]
    try:
        deadline = time.time() + 240
        while not all(m.exists() and m.read_text() for m in markers):
            if proc.poll() is not None:
                raise AssertionError(f"the run to be killed exited early:\n{proc.stderr.read()[-4000:]}")
            if time.time() > deadline:
                raise AssertionError("the run to be killed did not reach step 7 in time")
            time.sleep(0.2)
        for marker in markers:  # both ranks at once, as on a preempted machine: no process gets to clean up
            os.kill(int(marker.read_text()), signal.SIGKILL)
    finally:
        try:
            proc.wait(timeout=60)  # the launcher notices its dead workers and exits
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    return killed


@pytest.mark.slow
def test_ddp_run_killed_after_a_checkpoint_resumes_exactly(killed_run, tmp_path):
    killed = killed_run
    # the kill left one complete checkpoint: checkpoint-3 was rotated away (save_total_limit=1), nothing staged
    names = sorted(n for n in os.listdir(killed) if not n.startswith("hung-at-"))
    assert names == ["checkpoint-6"], names
    files = set(os.listdir(killed / "checkpoint-6"))
    assert {"model.safetensors", "mmt_ard_projections.safetensors", "optimizer.pt", "trainer_state.json"} <= files
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= files  # each rank's RNG (the attack's random starts)
    state = json.loads((killed / "checkpoint-6" / "mmt_ard_state.json").read_text())
    assert state["distributed_setup"] == "DDP, 2 processes"

    ref = tmp_path / "reference"
    ref.mkdir()
    proc = launch_two_processes(
        29545, HELPER, "--output_dir", str(killed), "--resume", "--save_total_limit", "1",
        "--dump", str(killed / "final.safetensors"),
        "--reference_dir", str(ref),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    res_state, res_weighting, res_setup = _read_dump(killed / "final.safetensors")
    ref_state, ref_weighting, ref_setup = _read_dump(ref / "final.safetensors")
    assert res_setup == ref_setup == "DDP, 2 processes"
    diff = _max_abs_diff(res_state, ref_state)
    print(f"2-process DDP resume from checkpoint-6 after SIGKILL: max |w - w_ref| = {diff:.3g}")
    assert diff <= TOL
    assert res_weighting == ref_weighting  # the sigmoid statistics, the same on every rank (global batch)
    assert res_weighting["steps"] > 0
    assert sorted(n for n in os.listdir(killed) if n.startswith("checkpoint-")) == ["checkpoint-8"]
