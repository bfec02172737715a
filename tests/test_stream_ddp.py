"""Streamed training on 2 processes (gloo, CPU) with a DataLoader worker each: every process reads its own shards and
saves its own position; a run resumed from a checkpoint after the first pass ends bit-identical to the run it was
cut from (`stream_helper.py`, webdataset shards). One launch: the run, then, in the same processes, a new trainer
(new loader, new workers) that resumes from the checkpoint on disk."""

import json
import os

import pytest
import safetensors
import safetensors.torch
import stream_helper as helper
from _launch import REPO, free_port, launch_two_processes

HELPER = os.path.join(REPO, "tests", "stream_helper.py")


@pytest.mark.slow
def test_two_process_streamed_resume_after_the_first_pass_is_exact(tmp_path):
    data = str(tmp_path / "shards")
    helper.write_data(data, "webdataset")
    run, full, resumed = tmp_path / "run", tmp_path / "full.safetensors", tmp_path / "resumed.safetensors"
    checkpoint = run / "checkpoint-6"
    proc = launch_two_processes(
        free_port(), HELPER, "--data", data, "--kind", "webdataset", "--workers", "1", "--output_dir", str(run),
        "--dump", str(full), "--resume_from", str(checkpoint), "--resume_dir", str(tmp_path / "resumed"),
        "--resume_dump", str(resumed),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "replay" not in proc.stderr

    states = [json.loads((checkpoint / f"data_state_rank{r}.json").read_text()) for r in (0, 1)]
    assert [sorted(s["positions"]) for s in states] == [["0"], ["1"]]  # one slot (reader) per process
    assert all(s["world_size"] == 2 and p[0] >= 1 for s in states for p in s["positions"].values())  # pass 2+
    for path in (full, resumed):
        with safetensors.safe_open(str(path), "pt") as f:
            assert f.metadata()["setup"] == "DDP, 2 processes"
    a, b = safetensors.torch.load_file(str(full)), safetensors.torch.load_file(str(resumed))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"2-process streamed resume from checkpoint-6 (1 worker each): max |w - w_ref| = {diff:.3g}")
    assert a.keys() == b.keys() and diff == 0.0
