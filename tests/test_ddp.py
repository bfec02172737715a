"""Two-process DDP on CPU (gloo) through `accelerate launch`: the embedded default with a few steps.

Each rank trains on its own shard of every batch, so identical weights on both ranks after training (and different
from the start) show that gradients were all-reduced, with the attack running on the unwrapped student. The embedded
teachers are trained under DDP too (a fresh cache), then cached by rank 0 only.

The launcher is `_launch.launch_two_processes` (`accelerate launch --multi_gpu --num_processes 2` on CPU, gloo).
"""

from __future__ import annotations

import json
import os

import pytest
from _launch import REPO, launch_two_processes

SCRIPT = os.path.join(REPO, "examples", "run_mmt_ard.py")


@pytest.mark.slow
def test_two_process_cpu_ddp_keeps_replicas_in_sync(tmp_path):
    out = tmp_path / "ddp"
    proc = launch_two_processes(
        29531, SCRIPT, "--quick", "--dump_checksums", "--disable_tqdm", "true",
        "--output_dir", str(out), "--embedded_cache_dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    ranks = [json.loads((out / f"checksum_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2], "the two processes did not form one process group"
    assert ranks[0]["initial"] == ranks[1]["initial"]
    assert ranks[0]["final"] != ranks[0]["initial"], "the student did not train"
    assert ranks[0]["final"] == ranks[1]["final"], "the replicas diverged: gradients were not synchronised"

    results = json.loads((out / "results.json").read_text())
    assert results["training"]["num_processes"] == 2
    assert [r["model"] for r in results["robustness"]["rows"]][-1] == "student (after)"
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file()
    entries = [e for e in os.listdir(tmp_path / "cache") if not e.startswith(".")]  # not the lock file
    assert len(entries) == 1  # rank 0 alone wrote the embedded cache


@pytest.mark.parametrize("name, kind", [("single_gpu", "NO"), ("multi_gpu_ddp", "MULTI_GPU"), ("fsdp", "FSDP")])
def test_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(os.path.join(REPO, "examples", "accelerate_configs", f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "no"
    if kind == "FSDP":
        fsdp = config.fsdp_config
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        # no layer class named: the trainer wraps the student family's own encoder layers (CLIPEncoderLayer,
        # SiglipEncoderLayer, ...; test_fsdp.py and test_families_training.py); teachers are not in the Trainer's model
        assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp
        assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.slow
def test_evaluate_before_train_still_wraps_in_ddp(tmp_path):
    """`evaluate()` first must not leave the student unwrapped (and the ranks drifting apart) in `train()`."""
    helper = os.path.join(REPO, "tests", "ddp_eval_first_helper.py")
    proc = launch_two_processes(29533, helper, str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["wrapped"] == "DistributedDataParallel" for r in ranks), ranks
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=0, abs=1e-9), ranks
