"""FSDP2 through Accelerate, end to end, on 2 CPU processes (gloo) with the shipped `fsdp.yaml`.

`fsdp_helper.py` runs under `accelerate launch --config_file examples/accelerate_configs/fsdp.yaml --num_processes 2`:
evaluation before training, 4 training steps with the attack through the sharded student, evaluation and an (atomic)
checkpoint every 2 steps, the final save; then a resume from `checkpoint-2`; then both again with a LoRA student.
The same runs in this process with one process and the same global batch are the reference.
"""

import json
import os
import subprocess

import fsdp_helper
import pytest
import safetensors.torch
import torch
from _launch import REPO, two_process_command

FSDP_YAML = os.path.join(REPO, "examples", "accelerate_configs", "fsdp.yaml")
TOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """`(fsdp_dir, single_dir)`: the 2-process FSDP runs (launched first) and the one-process reference (meanwhile)."""
    fsdp_dir = tmp_path_factory.mktemp("fsdp")
    single_dir = tmp_path_factory.mktemp("single")
    cmd, env = two_process_command(
        29551, os.path.join(REPO, "tests", "fsdp_helper.py"), str(fsdp_dir), config_file=FSDP_YAML
    )
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        fsdp_helper.run_case(str(single_dir), 1, "full")
        fsdp_helper.run_case(str(single_dir), 1, "lora")
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output[-6000:]
    return fsdp_dir, single_dir


def _report(run_dir, case="full"):
    return json.loads((run_dir / case / "report.json").read_text())


def _losses(report):
    return [h["loss"] for h in report["log_history"] if "loss" in h]


def _weights(path):
    return safetensors.torch.load_file(str(path))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.mark.slow
def test_fsdp_yaml_really_shards_the_student_and_not_the_teachers(runs):
    fsdp_dir, _ = runs
    report = _report(fsdp_dir)
    assert report["setup"] == "FSDP2, 2 processes"  # not DDP, not two separate runs
    ranks = report["sharding"]
    assert len(ranks) == 2
    for rank in ranks:
        assert rank["model_class"] == "FSDPStudentBundle"
        assert rank["plain"] == ["student.clip.logit_scale"]  # the one 0-d parameter, kept whole (and frozen)
        assert rank["num_dtensors"] > 0 and rank["local_numel"] < rank["full_numel"]
        assert rank["projection_heads"] == ["clean", "robust"]
        assert rank["teachers_dtensors"] == rank["teachers_trainable"] == rank["teachers_in_optimizer"] == 0
    assert sum(r["local_numel"] for r in ranks) == ranks[0]["full_numel"]  # the shards partition the student


@pytest.mark.slow
def test_fsdp_losses_evaluation_and_weights_equal_one_process(runs):
    fsdp_dir, single_dir = runs
    fsdp, single = _report(fsdp_dir), _report(single_dir)
    assert single["setup"] == "single process"
    assert len(_losses(fsdp)) == fsdp_helper.MAX_STEPS
    torch.testing.assert_close(_losses(fsdp), _losses(single), rtol=0, atol=TOL)

    # evaluation before training (the whole student on every process) and after steps 2 and 4 (the sharded one)
    assert fsdp["eval_before"]["eval_num_samples"] == 16
    assert fsdp["eval_before"]["eval_clean_accuracy"] == single["eval_before"]["eval_clean_accuracy"]
    evals = [
        [h["eval_clean_accuracy"] for h in r["log_history"] if "eval_clean_accuracy" in h] for r in (fsdp, single)
    ]
    assert len(evals[0]) == 2 and evals[0] == evals[1]

    final = _weights(fsdp_dir / "full" / "final" / "model.safetensors")
    diff = _max_diff(final, _weights(single_dir / "full" / "final" / "model.safetensors"))
    print(f"FSDP2 (2 processes) vs one process, final weights: max |diff| = {diff:.3g}")
    assert diff <= TOL
    proj = "mmt_ard_projections.safetensors"
    assert (
        _max_diff(_weights(fsdp_dir / "full" / "final" / proj), _weights(single_dir / "full" / "final" / proj)) <= TOL
    )


@pytest.mark.slow
def test_fsdp_final_save_is_a_plain_clip_model(runs):
    from transformers import CLIPModel

    fsdp_dir, _ = runs
    final = fsdp_dir / "full" / "final"
    model = CLIPModel.from_pretrained(str(final))
    assert model.logit_scale.dim() == 0  # saved as CLIP has it, not reshaped for sharding
    saved = _weights(final / "model.safetensors")
    assert all(not k.startswith(("student.", "projections.")) for k in saved)
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(tensor, saved[name]), name
    state = json.loads((final / "mmt_ard_state.json").read_text())
    assert state["distributed_setup"] == "FSDP2, 2 processes"
    # the whole trained model in memory on every process (what `embedded.train_zero_shot` hands back under FSDP)
    assert _report(fsdp_dir)["unsharded_copy_diff"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("case, weights", [("full", "model.safetensors"), ("lora", "adapter_model.safetensors")])
def test_fsdp_checkpoints_and_exact_resume(runs, case, weights):
    fsdp_dir, _ = runs
    run = fsdp_dir / case
    assert sorted(n for n in os.listdir(run) if "checkpoint" in n) == ["checkpoint-2", "checkpoint-4"]  # no tmp-*
    files = set(os.listdir(run / "checkpoint-2"))
    assert {weights, "optimizer.bin", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth"} <= files
    assert "pytorch_model_fsdp.bin" not in files  # no second, pickled copy of the weights
    resumed = _weights(fsdp_dir / f"{case}-resumed" / "final" / weights)
    diff = _max_diff(resumed, _weights(run / "final" / weights))
    print(f"FSDP2 {case} resume from checkpoint-2: max |w - w_ref| = {diff:.3g}")
    assert diff <= 1e-6


@pytest.mark.slow
def test_fsdp_lora_student(runs, tmp_path):
    from transformers import CLIPModel

    from mmt_ard.embedded.tiny import build_tiny_clip
    from mmt_ard.training.lora import merge_checkpoint

    fsdp_dir, single_dir = runs
    fsdp, single = _report(fsdp_dir, "lora"), _report(single_dir, "lora")
    assert fsdp["setup"] == "FSDP2, 2 processes"
    assert all(r["local_numel"] < r["full_numel"] for r in fsdp["sharding"])
    torch.testing.assert_close(_losses(fsdp), _losses(single), rtol=0, atol=TOL)
    assert fsdp["eval_before"]["eval_clean_accuracy"] == single["eval_before"]["eval_clean_accuracy"]
    adapter = "adapter_model.safetensors"
    fsdp_adapter = _weights(fsdp_dir / "lora" / "final" / adapter)
    assert fsdp_adapter and all("lora_" in k for k in fsdp_adapter)
    assert _max_diff(fsdp_adapter, _weights(single_dir / "lora" / "final" / adapter)) <= TOL

    base, processor = build_tiny_clip(hidden=32, image_size=16, seed=0)
    merge_checkpoint(base, str(fsdp_dir / "lora" / "final"), str(tmp_path / "merged"), processor=processor)
    merged = CLIPModel.from_pretrained(str(tmp_path / "merged"))
    assert not hasattr(merged, "peft_config") and merged.logit_scale.dim() == 0


def test_example_script_quick_run_under_the_shipped_fsdp_yaml(tmp_path):
    """`accelerate launch --config_file fsdp.yaml examples/run_mmt_ard.py --quick` completes on 2 CPU processes, really
    sharded, and its results.json and model card say so; the saved student is a plain CLIPModel."""
    from _launch import launch_two_processes
    from transformers import CLIPModel

    out = tmp_path / "run"
    proc = launch_two_processes(
        29563,
        os.path.join(REPO, "examples", "run_mmt_ard.py"),
        "--quick",
        "--output_dir",
        str(out),
        "--embedded_cache_dir",
        str(tmp_path / "cache"),
        config_file=os.path.join(REPO, "examples", "accelerate_configs", "fsdp.yaml"),
        timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out / "results.json") as f:
        training = json.load(f)["training"]
    assert training["distributed_setup"] == "FSDP2, 2 processes"
    assert training["num_processes"] == 2
    with open(out / "README.md") as f:
        assert "**Distributed setup:** FSDP2, 2 processes" in f.read()
    CLIPModel.from_pretrained(str(out))  # a plain CLIPModel
