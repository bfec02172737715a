#!/usr/bin/env bash
# FSDP2 through the shipped examples/accelerate_configs/fsdp.yaml on ONE GPU: the steps the CPU tests cannot take.
#
#   bash benchmarks/gpu_check_fsdp.sh [OUT_DIR]        # no network; a few minutes on one H200
#
# tests/test_fsdp.py covers FSDP2 on 2 CPU processes (gloo). What only a GPU shows:
#   * FSDP with ONE process: on CPU, Accelerate sets up no process group for a single process, so there is nothing to
#     shard; on a GPU `fsdp.yaml --num_processes 1` shards over a 1-process NCCL group (the case that failed in issue
#     12: evaluation before training, then `fully_shard` refusing CLIP's 0-d `logit_scale`);
#   * NCCL and CUDA placement: the student moved to the GPU for evaluation before training, full-state gathers from
#     the GPU to the CPU for saving, checkpoints loaded from the CPU into CUDA shards.
# Steps: the FSDP helper run (evaluate, train with the attack, evaluate and checkpoint every 2 steps, final save,
# resume; plain and LoRA students), the same runs without FSDP, their comparison, and the example script's --quick run.
# Prints one markdown table, pass/fail per step; exits non-zero if a step failed.
# FSDP_PROCESSES=2 runs the FSDP steps on 2 processes (how this script is checked on a CPU machine, gloo);
# FSDP_SKIP_EXAMPLE=1 leaves out the example script's run (benchmarks/gpu_check.sh runs it).
set -u
cd "$(dirname "$0")/.."
OUT=${1:-$(mktemp -d -t gpu_check_fsdp.XXXXXX)}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
FSDP_YAML=examples/accelerate_configs/fsdp.yaml
N=${FSDP_PROCESSES:-1}
SETUP="FSDP2, $N process$([ "$N" -gt 1 ] && echo es)"
failed=0
rows=()

step() {  # step NAME COMMAND...: run it, log to $OUT/NAME.log, record pass/fail and the time
    local name=$1
    shift
    local start=$SECONDS
    if "$@" >"$OUT/$name.log" 2>&1; then
        rows+=("| $name | pass | $((SECONDS - start)) s |")
    else
        rows+=("| $name | FAIL (see $OUT/$name.log) | $((SECONDS - start)) s |")
        failed=1
    fi
}

step fsdp-helper accelerate launch --config_file "$FSDP_YAML" --num_processes "$N" --main_process_port 29561 \
    tests/fsdp_helper.py "$OUT/fsdp"
step plain-helper python tests/fsdp_helper.py "$OUT/plain"
step fsdp-vs-plain python - "$OUT/fsdp" "$OUT/plain" "$SETUP" <<'EOF'
"""FSDP (1 GPU) against the same runs without FSDP: sharded, same losses and weights, exact resume, plain CLIPModel."""
import json
import sys

import safetensors.torch
import torch
from transformers import CLIPModel

fsdp, plain, setup = sys.argv[1], sys.argv[2], sys.argv[3]
TOL = 1e-4  # GPU kernels may sum in another order with and without FSDP


def report(root, case):
    with open(f"{root}/{case}/report.json") as f:
        return json.load(f)


def weights(path):
    return safetensors.torch.load_file(path)


def max_diff(a, b):
    assert a.keys() == b.keys(), (sorted(a)[:3], sorted(b)[:3])
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


for case, name in (("full", "model.safetensors"), ("lora", "adapter_model.safetensors")):
    f, p = report(fsdp, case), report(plain, case)
    assert f["setup"] == setup, f["setup"]
    assert p["setup"] == "single process", p["setup"]
    for rank in f["sharding"]:
        assert rank["model_class"] == "FSDPStudentBundle" and rank["num_dtensors"] > 0, rank
        assert len(rank["plain"]) == 1 and rank["plain"][0].endswith(".logit_scale"), rank["plain"]
        assert rank["teachers_dtensors"] == rank["teachers_trainable"] == rank["teachers_in_optimizer"] == 0, rank
    losses = [[h["loss"] for h in r["log_history"] if "loss" in h] for r in (f, p)]
    assert len(losses[0]) == 4 and max(abs(a - b) for a, b in zip(*losses)) <= TOL, losses
    final = weights(f"{fsdp}/{case}/final/{name}")
    d = max_diff(final, weights(f"{plain}/{case}/final/{name}"))
    assert d <= TOL, f"{case}: FSDP vs plain final weights differ by {d}"
    r = max_diff(weights(f"{fsdp}/{case}-resumed/final/{name}"), final)
    assert r <= 1e-5, f"{case}: resumed run differs from the uninterrupted one by {r}"
    print(f"{case}: losses {losses[0]}, FSDP vs plain max |dw| = {d:.3g}, resume max |dw| = {r:.3g}")
model = CLIPModel.from_pretrained(f"{fsdp}/full/final")
assert model.logit_scale.dim() == 0
print("final save loads as a plain CLIPModel")
EOF
if [ "${FSDP_SKIP_EXAMPLE:-0}" != 1 ]; then  # gpu_check.sh runs the example under fsdp.yaml itself
step example-quick-fsdp accelerate launch --config_file "$FSDP_YAML" --num_processes "$N" --main_process_port 29563 \
    examples/run_mmt_ard.py --quick --output_dir "$OUT/example" --embedded_cache_dir "$OUT/cache" --disable_tqdm true
step example-quick-fsdp-check python -c "
import json, sys
state = json.load(open('$OUT/example/mmt_ard_state.json'))
assert state['distributed_setup'] == '$SETUP', state['distributed_setup']
from transformers import CLIPModel
CLIPModel.from_pretrained('$OUT/example')
print('example script: $SETUP; output loads as a CLIPModel')
"
fi

echo "| step (gpu_check_fsdp.sh) | result | time |"
echo "|---|---|---|"
printf '%s\n' "${rows[@]}"
echo "logs: $OUT"
exit $failed
