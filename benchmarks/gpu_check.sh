#!/usr/bin/env bash
# The GPU check: what only a GPU can show, in one script that needs no network and finishes in under 8 minutes on
# one H200. It prints one table with PASS/FAIL per step and writes every log and JSON under $OUT (default
# gpu_check_out/).
#
#   bash benchmarks/gpu_check.sh                  # on a GPU machine, from the repository root
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh  # the same steps at tiny sizes on a CPU (checks the script itself)
#
# Steps:
#   scale       benchmarks/gpu_scale.py: mmt-ard / single-teacher / tecoa at batch 256 and 512, the paper's shapes,
#               default settings; images/s, MFU, phases, peak memory, hours for 5000 x 512
#   targets     the targets measured by `scale` (>= 600 images/s, batch 512 >= 256, mmt-ard >= 0.85x single-teacher)
#   attack      benchmarks/attack_variants.py: the training attack alone (start on CPU vs device, precast weights,
#               torch.compile, CUDA graphs)
#   single_gpu / ddp_1proc / fsdp_1proc
#               examples/run_mmt_ard.py --quick (the embedded default, trained from scratch) under each shipped
#               accelerate config; the run's results.json must record the setup it really ran with
#   fsdp_gpu    the FSDP steps that only a GPU can run (benchmarks/gpu_check_fsdp.sh: FSDP on one process against
#               the same runs without FSDP, exact resume, LoRA)
#
# Without `datasets`/`evaluate` on the machine, put their wheels (and transformers', see docs/benchmarks.md) in .whl/:
# they are installed into .site/ first, offline.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ] && ! python -c "import datasets, evaluate" 2>/dev/null; then
  pip install -q --no-index --no-deps --target .site .whl/*.whl && export PYTHONPATH=$PWD/.site:$PWD
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}

DRY=${GPU_CHECK_DRY:-0}
if [ "$DRY" = 1 ]; then  # a CPU: FSDP needs 2 processes there (one CPU process forms no process group)
  SCALE_ARGS="--size tiny --batch-sizes 16 32 --steps 2 --warmup 1 --attack-steps 3 --cpu"
  ATTACK_ARGS="--size tiny --repeats 2 --no-compile"
  FSDP_NPROC=2
else
  SCALE_ARGS="--size vit-b32 --batch-sizes 256 512 --steps 4 --warmup 2"
  ATTACK_ARGS="--size vit-b32 --batch-size 256 --repeats 5"
  FSDP_NPROC=1
fi

declare -a NAMES STATUS SECONDS_TAKEN NOTES
run_step() {  # run_step NAME TIMEOUT_S CHECK_CMD -- CMD...
  local name=$1 limit=$2 check=$3
  shift 4
  local start=$SECONDS rc note=""
  echo "=== $name: $*" | tee "$OUT/$name.log"
  timeout "$limit" "$@" >>"$OUT/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 124 ]; then
    note="timed out after ${limit}s"
  elif [ $rc -ne 0 ]; then
    note="exit $rc: $(grep -E 'Error|error' "$OUT/$name.log" | tail -1 | cut -c1-90)"
  elif [ -n "$check" ]; then
    note=$(bash -c "$check" 2>&1) || rc=1
  fi
  NAMES+=("$name")
  STATUS+=("$([ $rc -eq 0 ] && echo PASS || echo FAIL)")
  SECONDS_TAKEN+=("$((SECONDS - start))")
  NOTES+=("$(echo "$note" | tr '\n' ' ' | cut -c1-140)")
}

# the run recorded the distributed setup it really ran with (results.json -> training.distributed_setup)
setup_check() {  # setup_check DIR EXPECTED_SUBSTRING
  echo "python -c \"import json,sys; d=json.load(open('$1/results.json'))['training'].get('distributed_setup', '?'); \
print(d); sys.exit(0 if '$2'.lower() in str(d).lower() else 1)\""
}

run_step scale 330 "grep -E '^\| mmt-ard \| ' $OUT/scale.log | cut -d'|' -f3-6 | tr '\n' ';'" -- \
  python benchmarks/gpu_scale.py $SCALE_ARGS --out "$OUT/gpu_scale.json"
# the issue's targets, measured by the scale step: FAIL if any is missed
run_step targets 10 "grep -E '^(PASS|FAIL)' $OUT/scale.log | tr '\n' ';'; ! grep -q '^FAIL' $OUT/scale.log" -- true
run_step attack 150 "grep -E '^\| autocast \+ precast \|' $OUT/attack.log" -- \
  python benchmarks/attack_variants.py $ATTACK_ARGS --out "$OUT/attack_variants.json"
EXAMPLE="examples/run_mmt_ard.py --quick --embedded_cache_dir none"
run_step single_gpu 120 "$(setup_check "$OUT/single_gpu" "single process")" -- \
  accelerate launch --config_file examples/accelerate_configs/single_gpu.yaml \
  $EXAMPLE --output_dir "$OUT/single_gpu"
run_step ddp_1proc 120 "$(setup_check "$OUT/ddp_1proc" "process")" -- \
  accelerate launch --config_file examples/accelerate_configs/multi_gpu_ddp.yaml --num_processes 1 \
  $EXAMPLE --output_dir "$OUT/ddp_1proc"
run_step fsdp_${FSDP_NPROC}proc 150 "$(setup_check "$OUT/fsdp" "FSDP2, $FSDP_NPROC process")" -- \
  accelerate launch --config_file examples/accelerate_configs/fsdp.yaml --num_processes $FSDP_NPROC \
  $EXAMPLE --output_dir "$OUT/fsdp"
if [ "$DRY" != 1 ]; then  # FSDP on one GPU: helper runs against plain runs, resume, LoRA (CPU: tests/test_fsdp.py)
  run_step fsdp_gpu 180 "" -- env FSDP_SKIP_EXAMPLE=1 bash benchmarks/gpu_check_fsdp.sh "$OUT/fsdp_gpu"
fi

echo
echo "| step | result | seconds | note |"
echo "|---|---|---|---|"
failed=0
for i in "${!NAMES[@]}"; do
  echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${SECONDS_TAKEN[$i]} | ${NOTES[$i]} |"
  [ "${STATUS[$i]}" = PASS ] || failed=1
done
echo
echo "logs and JSON: $OUT/"
exit $failed
