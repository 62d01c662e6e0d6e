#!/usr/bin/env bash
# One script for a lent GPU machine (torch + Triton installed, no network, no pip): runs from the
# source tree with PYTHONPATH, in under 8 minutes of wall clock:
#   1. environment (GPU, driver, versions)
#   2. benchmarks/gpu_check_cuda.sh if present: builds sgkernels._C in place, CUDA GPU tests
#   3. GPU tests: pytest -m gpu (ops on CUDA with every backend, Triton + CUDA kernel GPU tests;
#      TRITON_INTERPRET=0 so the Triton kernels run compiled, not in the interpreter)
#   4. kernel benchmarks (bf16, D 1152 / 2048, batch 16 / 256, all layouts; time-boxed)
#   5. quick γ grid on SiT-XL/2 (random weights, batch 64, bf16)
#   6. end-to-end SG vs CFG sampling and TREAD vs dense training on SiT-XL/2, if time is left
# Results (at most 8 files): gpu_check.log, kernels.csv, kernels.json, gamma_grid.{png,csv,json},
# e2e.csv, e2e.json in $OUT when set, else benchmarks/results/gpu_check/.
# Exit status: 0 when every step passed, else 1 (the failing steps are listed at the end).
#
#   bash benchmarks/gpu_check.sh               on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-smoke   the same steps on CPU with tiny settings (to test
#                                              this script without a GPU; GPU tests are skipped)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
SMOKE=0
case "${1:-}" in
  "") ;;
  --cpu-smoke) SMOKE=1 ;;
  *) echo "usage: bash benchmarks/gpu_check.sh [--cpu-smoke]" >&2; exit 2 ;;
esac
DEST=${OUT:-$ROOT/benchmarks/results/gpu_check}
mkdir -p "$DEST"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
LOG="$DEST/gpu_check.log"
: > "$LOG"
BUDGET=${GPU_CHECK_BUDGET_S:-465}   # whole script, seconds (the machine allows 480)
T0=$(date +%s)
FAILED=()

left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
say() { echo "[gpu_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

# step NAME CAP_S CMD...: run CMD with a timeout of min(CAP_S, time left - 5) and log its
# output. An argument @BUDGET@ becomes that limit minus 45 s (the script's own --budget-s, so it
# stops timing and writes its files before the timeout).
step() {
  local name=$1 cap=$2; shift 2
  local limit; limit=$(left)
  limit=$(( limit - 5 < cap ? limit - 5 : cap ))
  if [ "$limit" -lt 10 ]; then
    say "SKIP $name: only $(left) s left"
    return 0
  fi
  local args=() a
  for a in "$@"; do args+=("${a/@BUDGET@/$(( limit > 60 ? limit - 45 : 15 ))}"); done
  say "START $name (limit ${limit}s): ${args[*]}"
  local rc=0
  timeout --signal=TERM --kill-after=5 "$limit" "${args[@]}" >> "$LOG" 2>&1 || rc=$?
  if [ "$rc" -eq 0 ]; then
    say "PASS $name"
  else
    [ "$rc" -eq 124 ] && say "TIMEOUT $name after ${limit}s" || say "FAIL $name (exit $rc)"
    FAILED+=("$name")
  fi
}

if [ "$SMOKE" -eq 1 ]; then
  DEVICE=cpu
  KERNELS=(--quick --device cpu --repeats 1 --warmup 0 --budget-s @BUDGET@)
  GRID=(--quick --device cpu --model Tiny/2 --batch 2 --budget-s @BUDGET@)
  E2E=(--device cpu --model Tiny/2 --batches 2 --train-batches 2 --repeats 1)
  TESTS=(tests/ops/test_ops_gpu.py)
else
  DEVICE=cuda
  KERNELS=(--device cuda --dims 1152 2048 --batches 16 256 --budget-s @BUDGET@)
  GRID=(--quick --device cuda --model SiT-XL/2 --batch 64 --budget-s @BUDGET@)
  E2E=(--device cuda --model SiT-XL/2 --batches 16 64 --train-batches 32 --repeats 3)
  TESTS=(tests)
fi

say "environment"
{
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PYTHON" - <<'EOF'
import os, sys, torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"cuda available {torch.cuda.is_available()}, cpus {os.cpu_count()}")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError as exc:
    print(f"triton missing: {exc}")
EOF
  git -C "$ROOT" log --oneline -1 2>/dev/null || true
} >> "$LOG" 2>&1

if [ "$SMOKE" -eq 0 ] && [ -f benchmarks/gpu_check_cuda.sh ]; then
  step cuda_build_and_tests 200 env OUT="$SCRATCH" PYTHON="$PYTHON" bash benchmarks/gpu_check_cuda.sh
  for f in "$SCRATCH"/*; do
    [ -f "$f" ] && { echo "----- $(basename "$f") -----"; cat "$f"; } >> "$LOG"
  done
fi
step gpu_tests 120 env TRITON_INTERPRET=0 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu \
  "${TESTS[@]}"
step bench_kernels 190 "$PYTHON" benchmarks/bench_kernels.py "${KERNELS[@]}" --out "$DEST"
step gamma_grid 130 "$PYTHON" benchmarks/gamma_grid.py "${GRID[@]}" --out "$DEST"
if [ "$(left)" -gt 60 ]; then
  step bench_e2e $(( $(left) - 10 )) "$PYTHON" benchmarks/bench_e2e.py "${E2E[@]}" --out "$DEST"
else
  say "SKIP bench_e2e: only $(left) s left"
fi

files=$(find "$DEST" -maxdepth 1 -type f | wc -l)
say "done on $DEVICE in $(( $(date +%s) - T0 )) s; $files files in $DEST"
if [ "${#FAILED[@]}" -gt 0 ]; then
  say "FAILED steps: ${FAILED[*]}"
  exit 1
fi
exit 0
