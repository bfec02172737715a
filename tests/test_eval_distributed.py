"""`mmt-ard-eval` on 2 CPU processes (gloo): `torchrun --nproc_per_node 2 -m mmt_ard.cli.evaluate` and
`accelerate launch --multi_gpu --num_processes 2 -m mmt_ard.cli.evaluate` give the per-sample outcomes (and checks) of
one process at any batch size, only process 0 writes, `results.json` records `num_processes`, and a preempted
2-process evaluation resumes to the results of an uninterrupted one.
"""

import json
import os
import signal
import subprocess
import time
import warnings

import numpy as np
import pytest
from _eval_tiny import digits_test, saved_tiny_clip_dir
from _launch import REPO, free_port, torchrun_command, two_process_command

from mmt_ard.cli.evaluate import main
from mmt_ard.embedded.tiny import DIGIT_NAMES
from mmt_ard.evaluation import init_eval_group, read_records

HELPER = os.path.join(REPO, "tests", "eval_preempt_helper.py")
N = 60
# PGD-1 at 48/255 and APGD-CE, with the gradient-masking checks (they are split over the processes too)
PROTOCOL = ["--protocol", "quick", "--attacks", "pgd", "apgd-ce", "--n-iter", "4", "--pgd-steps", "1",
            "--eps", "48/255", "--num-samples", str(N), "--check-samples", "20"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    import datasets
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    x, y = digits_test(80)
    images = [Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for img in x]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=DIGIT_NAMES)})
    folder = root / "digits"
    folder.mkdir()
    table = datasets.Dataset.from_dict({"image": images, "label": y.tolist()}, features=features)
    table.to_parquet(str(folder / "test-00000-of-00001.parquet"))
    prompts = root / "prompts.json"
    prompts.write_text(json.dumps({"digits": {"templates": ["a photo of the digit {}"]}}))
    return {"folder": str(folder), "json": str(prompts)}


def cli_args(data, out, *extra) -> list[str]:
    return ["--models", saved_tiny_clip_dir(), "--datasets", data["folder"], "--class-names-json", data["json"],
            "--output-dir", str(out), "--no-progress", *PROTOCOL, *extra]  # fmt: skip


def records(out) -> dict[int, dict]:
    (name,) = os.listdir(os.path.join(out, "samples"))
    return read_records(os.path.join(out, "samples", name))[1]


def numbers(out) -> dict:
    """What a result says about the model (not how it was computed: time, processes, batch size)."""
    with open(os.path.join(out, "results.json")) as f:
        (result,) = json.load(f)["results"]
    return {k: v for k, v in result.items() if k not in ("time_s", "num_processes", "batch_size")}


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    """In-process runs at batch sizes 64 and 13: the reference."""
    outs = {}
    for bs in (64, 13):
        outs[bs] = tmp_path_factory.mktemp(f"one-b{bs}")
        assert main(cli_args(data, outs[bs], "--batch-size", str(bs))) in (0, 2)
    return outs


def run(cmd, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env, check=False)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process_and_only_process_0_writes(data, one_process, tmp_path):
    out = tmp_path / "two"
    cmd, env = torchrun_command("-m", "mmt_ard.cli.evaluate", *cli_args(data, out, "--batch-size", "7"))
    proc = run(cmd, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    reference = records(one_process[64])
    assert len(reference) == N and records(one_process[13]) == reference  # batch size 64 vs 13, one process
    assert records(out) == reference  # 2 processes at batch size 7
    assert numbers(out) == numbers(one_process[64])  # accuracies, per-attack numbers and the (split) checks
    with open(out / "results.json") as f:
        report = json.load(f)
    assert report["num_processes"] == 2 and report["results"][0]["num_processes"] == 2
    assert proc.stdout.count("[mmt-ard-eval] wrote") == 1  # process 0 reports, process 1 does not
    assert sorted(os.listdir(out)) == ["results.json", "results.md", "robustness.png", "samples", "text_heads"]
    assert not [f for _, _, files in os.walk(out) for f in files if f.endswith(".tmp")]


@pytest.mark.slow
def test_preempted_two_process_evaluation_resumes_to_the_same_results(data, one_process, tmp_path):
    """SIGTERM to process 0 during its 2nd batch: both processes stop after that round with exit status 75, every
    finished image saved by process 0 alone. Resumed, the process group then dies (process 1 is killed in its 2nd
    batch); a plain rerun evaluates only what is still missing and ends with the uninterrupted run's records and
    numbers."""
    out, flags = tmp_path / "run", tmp_path / "flags"
    flags.mkdir()
    args = cli_args(data, out, "--batch-size", "8")
    cmd, env = torchrun_command(HELPER, str(flags), "preempt", "--", *args)
    log = tmp_path / "launch.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
        deadline = time.time() + 240
        while not (flags / "in-batch").exists():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        os.kill(int((flags / "in-batch").read_text()), signal.SIGTERM)  # process 0 only
        (flags / "sent").touch()
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode != 0 and "exitcode  : 75" in text, text[-3000:]  # torchrun reports the workers' 75
    assert "evaluation preempted (SIGTERM)" in text
    marker = json.loads((out / "preempted.json").read_text())
    assert marker["exit_code"] == 75 and marker["signal"] == "SIGTERM"
    saved = records(out)
    assert marker["images_done"] == len(saved) == 32  # 2 rounds x 2 processes x 8 images
    writes = [json.loads((flags / f"writes-rank{r}.json").read_text()) for r in (0, 1)]
    assert writes[1] == [], writes[1]  # process 1 wrote nothing
    assert "samples.append" in writes[0] and "write_marker" in writes[0]

    cmd, env = torchrun_command(HELPER, str(flags), "kill", "--", *args)
    killed = run(cmd, env)
    assert killed.returncode != 0 and "Signal 9 (SIGKILL) received" in killed.stderr
    assert len(records(out)) == len(saved) + 16  # the round both processes finished: 2 x 8 images

    cmd, env = torchrun_command("-m", "mmt_ard.cli.evaluate", *args)
    again = run(cmd, env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"{len(saved) + 16} images already in" in again.stdout
    assert records(out) == records(one_process[64])
    assert numbers(out) == numbers(one_process[64])
    assert not (out / "preempted.json").exists()


@pytest.mark.slow
def test_accelerate_launch_with_more_processes_than_images(data, one_process, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on CPU; 1 image for 2 processes, a batch larger than any
    shard: process 1 has nothing to evaluate, the image's outcome is the one it has in the 60-image runs."""
    out = tmp_path / "acc"
    args = cli_args(data, out, "--batch-size", "64", "--no-checks")
    args[args.index("--num-samples") + 1] = "1"
    cmd, env = two_process_command(free_port(), "-m", "mmt_ard.cli.evaluate", *args)
    proc = run(cmd, env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 process(es) have none to evaluate" in proc.stdout
    with open(out / "results.json") as f:
        report = json.load(f)
    assert report["num_processes"] == 2 and report["results"][0]["num_samples"] == 1
    ((index, record),) = records(out).items()
    assert record == records(one_process[64])[index]


def test_accelerate_without_multi_gpu_on_cpu_warns_that_it_started_one_process(monkeypatch):
    """`accelerate launch --num_processes 2` on a machine without GPUs starts one process (its simple launcher, for
    mpirun): the evaluation runs in it and says how to get N processes."""
    for name in ("WORLD_SIZE", "RANK", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.warns(UserWarning, match="torchrun --nproc_per_node N"):
        group, device = init_eval_group("cpu")
    assert (group.rank, group.world_size, str(device)) == (0, 1, "cpu")
    monkeypatch.delenv("MASTER_ADDR")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        init_eval_group("cpu")  # a plain single process: no warning
