#!/usr/bin/env bash
# The GPU benchmark table of docs/performance.md in one call: `gptjax bench` over the configs
# below, one process per row (XLA flags differ per row), JSON lines in $OUT/bench.jsonl, then
# the markdown table in $OUT/performance_table.md (launch/bench_table.py).
#
#   bash launch/gpu_bench.sh [GROUP ...]      # groups: gpt2 attention flags large recipe
#                                             # (default: all; ~15 min on one H100)
#   DRY_RUN=1 bash launch/gpu_bench.sh        # print the commands only
#
# Each row runs under `timeout ${ROW_TIMEOUT:-300}` so one stuck compile cannot eat the budget;
# a row that fails (e.g. out of memory) is recorded as {"tag":..., "error":...} and the rest go
# on. Run groups in separate calls when a call is limited to 10 minutes.
#
# On a machine without gptjax's dependencies installed (e.g. the lent H100 image has jax,
# flax, optax but not ml_collections), carry ml_collections as a wheel. Once, in the repo root
# of the machine that has pip and network:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl ml_collections==1.1.0
# (ml_collections is pure Python; its needs absl-py and PyYAML are in that image.) Then every
# call that runs this script carries `.whl` and starts with:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# This script puts the checkout itself on PYTHONPATH, so gptjax needs no install. TensorFlow
# is not needed: `gptjax bench` never imports it.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-runs/bench}"
mkdir -p "$OUT"
RESULTS="$OUT/bench.jsonl"
PY="${PYTHON:-python3}"
STEPS="${STEPS:-20}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# shellcheck source=launch/env/gpu.env
source launch/env/gpu.env
BASE_XLA_FLAGS="$XLA_FLAGS"

row() {  # row TAG EXTRA_XLA_FLAGS gptjax-bench-args...
  local tag="$1" flags="$2"
  shift 2
  local cmd=("$PY" -m gptjax bench --steps "$STEPS" --json --out "$RESULTS" --tag "$tag" "$@")
  echo "== $tag: XLA_FLAGS='$BASE_XLA_FLAGS $flags' ${cmd[*]}"
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    return 0
  fi
  local status=0
  XLA_FLAGS="$BASE_XLA_FLAGS $flags" timeout "${ROW_TIMEOUT:-300}" "${cmd[@]}" \
    >"$OUT/$tag.log" 2>&1 || status=$?
  if [[ "$status" != 0 ]]; then  # e.g. out of memory (1) or killed by timeout (124)
    tail -n 5 "$OUT/$tag.log" >&2
    "$PY" -c 'import json, sys
lines = open(sys.argv[2], errors="replace").read().strip().splitlines() or ["no output"]
print(json.dumps({"tag": sys.argv[1], "status": int(sys.argv[3]), "error": lines[-1][:200]}))' \
      "$tag" "$OUT/$tag.log" "$status" >>"$RESULTS"
  else
    tail -n 1 "$OUT/$tag.log"
  fi
}

GPT2=(--config configs/gpt2.py:124m)
T2K=(--config.data.seq_len=2048 --config.model.max_seq_len=2048)

group_gpt2() {  # nanoGPT's reference point: GPT-2 124M, T=1024, bf16, cuDNN attention
  local b
  for b in 8 16 32; do
    row "gpt2-124m-b$b" "" "${GPT2[@]}" --config.train.batch_size="$b"
  done
}

group_attention() {  # fused cuDNN flash attention vs XLA's unfused softmax(QK^T)V
  row "gpt2-124m-b16-cudnn" "" "${GPT2[@]}" --config.train.batch_size=16 \
    --config.model.attention=cudnn
  row "gpt2-124m-b16-xla" "" "${GPT2[@]}" --config.train.batch_size=16 \
    --config.model.attention=xla
}

group_flags() {  # XLA:GPU flag variants on the same step
  row "gpt2-124m-b16-no-triton-gemm" "--xla_gpu_enable_triton_gemm=false" \
    "${GPT2[@]}" --config.train.batch_size=16
  row "gpt2-124m-b16-no-command-buffer" "--xla_gpu_enable_command_buffer=" \
    "${GPT2[@]}" --config.train.batch_size=16
  row "gpt2-124m-b16-no-lhs" "--xla_gpu_enable_latency_hiding_scheduler=false" \
    "${GPT2[@]}" --config.train.batch_size=16
}

group_large() {  # GPT-3 XL (1.3B) and 2.7B at T=2048: remat and optimizer-state choices
  row "gpt3-xl-t2048-b8-save_proj" "" --config configs/gpt3.py:xl "${T2K[@]}" \
    --config.train.batch_size=8 --config.model.remat=save_proj
  row "gpt3-xl-t2048-b8-full" "" --config configs/gpt3.py:xl "${T2K[@]}" \
    --config.train.batch_size=8 --config.model.remat=full
  row "gpt3-2.7b-t2048-b4-full" "" --config configs/gpt3.py:2.7b "${T2K[@]}" \
    --config.train.batch_size=4 --config.model.remat=full
  row "gpt3-2.7b-t2048-b4-full-bf16adam" "" --config configs/gpt3.py:2.7b "${T2K[@]}" \
    --config.train.batch_size=4 --config.model.remat=full --config.optim.state_dtype=bfloat16
  row "gpt3-2.7b-t2048-b8-save_proj-bf16adam" "" --config configs/gpt3.py:2.7b "${T2K[@]}" \
    --config.train.batch_size=8 --config.model.remat=save_proj \
    --config.optim.state_dtype=bfloat16
}

group_recipe() {  # nanoGPT's train_shakespeare_char step (the full run = 5000 of these + eval)
  row "shakespeare_char" "" --config configs/shakespeare_char.py
}

groups=("$@")
if [[ ${#groups[@]} -eq 0 ]]; then
  groups=(gpt2 attention flags large recipe)
fi
for g in "${groups[@]}"; do
  case "$g" in
    gpt2 | attention | flags | large | recipe) "group_$g" ;;
    *) echo "gpu_bench.sh: unknown group '$g' (gpt2 attention flags large recipe)" >&2; exit 2 ;;
  esac
done
if [[ "${DRY_RUN:-0}" != 1 ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$OUT/gpu.csv" || true
  "$PY" launch/bench_table.py "$RESULTS" >"$OUT/performance_table.md"
  cat "$OUT/performance_table.md"
fi
