#!/usr/bin/env bash
# The GPU check in one command, under 5 minutes on one H100/H200: ours against timm (and HF transformers)
# holding the same weights, in one process, interleaved; batch 128 at 224 px, bf16 autocast, channels-last.
#   1. eager: B0, B2, B2-Li, B5, inference and the training step (forward, loss, backward, AdamW);
#   2. torch.compile: B2, the same two tasks (each implementation compiled for inference and for training:
#      six compilations, most of this step's time).
# Each row has images/s, GFLOP/s and the share of the attainable bf16 matmul peak that pvt bench measures
# on the device first (the model FLOPs utilisation, MFU), and peak memory. Tables go to stdout and to
# benchmarks/results/gpu-*/report.txt, the data to bench.json there.
#   benchmarks/gpu.sh [pvt bench options, which override these; e.g. --models pvt_v2_b2 --rounds 5]
# A quick smoke test of the script on a CPU:
#   benchmarks/gpu.sh --device cpu --batch 2 --train-batch 2 --warmup 0 --rounds 1 --models pvt_v2_b0
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
results=${RESULTS:-benchmarks/results}
limit=${STEP_TIMEOUT:-180}  # seconds per step: a slow compile must not eat the device time of the rest

common=(--device cuda --amp bf16 --channels-last --batch 128 --train-batch 128 --sweep-models --warmup 3 --rounds 10)

step() {  # step NAME OPTIONS...: one pvt bench run into $results/NAME
  local name=$1 out=$results/$1
  shift
  mkdir -p "$out"
  echo "== pvt bench $* --out $out" >&2
  timeout "$limit" "$python" -m pvtv2 bench "$@" --out "$out" | tee "$out/report.txt" \
    || echo "== $name did not finish (exit ${PIPESTATUS[0]}; 124 means past STEP_TIMEOUT=${limit}s)" >&2
}

"$python" - <<'PY'
import torch
print("torch", torch.__version__, "| cuda", torch.version.cuda, "|",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device")
PY
step gpu-bf16-eager "${common[@]}" --models pvt_v2_b0 pvt_v2_b2 pvt_v2_b2_li pvt_v2_b5 "$@"
step gpu-bf16-compiled "${common[@]}" --compile --models pvt_v2_b2 "$@"
