#!/usr/bin/env bash
# The runs RESULTS.md records, one folder each under benchmarks/results/: the printed tables (report.txt),
# bench.json and resolution.png. CPU: float32, eager and compiled, with glibc's allocator as is and keeping
# freed memory. GPU: float32 eager, then bf16 autocast
# with channels-last, eager and compiled.
#   benchmarks/run.sh cpu|cuda [extra pvt bench options]
set -euo pipefail
device=${1:?usage: benchmarks/run.sh cpu|cuda [pvt bench options]}
shift
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}

run() {  # run NAME OPTIONS...: one variant of the suite into benchmarks/results/NAME
  local out=benchmarks/results/$1
  shift
  mkdir -p "$out"
  echo "== pvt bench --device $device $* --out $out" >&2
  "$python" -m pvtv2 bench --device "$device" "$@" --out "$out" | tee "$out/report.txt"
}

case $device in
  cpu)
    # Both allocator settings: the system one is what users get, "keep" compares the kernels alone.
    for allocator in system keep; do
      run cpu-eager-$allocator --allocator $allocator "$@"
      run cpu-compiled-$allocator --compile --allocator $allocator "$@"
    done
    ;;
  cuda)
    run cuda-eager "$@"
    run cuda-bf16-eager --amp bf16 --channels-last "$@"
    run cuda-bf16-compiled --amp bf16 --channels-last --compile "$@"
    ;;
  *)
    echo "device must be cpu or cuda, got $device" >&2
    exit 2
    ;;
esac
