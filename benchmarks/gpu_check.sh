#!/usr/bin/env bash
# One script for a lent GPU machine (torch + Triton + pytest-xdist + pytest-timeout installed,
# `python3` only, no network, no pip). Runs from the source tree (PYTHONPATH), inside ONE time
# budget (GPU_CHECK_BUDGET_S, default 360 s), in this order:
#   environment    GPU, driver, versions, this plan
#   cuda           benchmarks/gpu_check_cuda.sh: builds sgkernels._C in place, tests/kernels/test_cuda.py
#   gpu_tests      pytest -m gpu, each test once (test_cuda.py left out: the cuda step ran it),
#                  bf16 + one fp16 case per op, -n workers, --timeout, compiled Triton kernels
#                  with SGKERNELS_TRITON_ONE_CONFIG=1 (first autotune config only)
#   bench_kernels  every op at SiT-XL/2's D 1152 × B 256 × 256 tokens first, then D 2048,
#                  attention at head dims 72 / 128 / 64, then batch 16 (autotuned kernels)
#   gamma_grid     quick γ grid on SiT-XL/2 (random weights, batch 64, bf16)
#   bench_e2e      SG vs CFG sampling, TREAD vs dense training on SiT-XL/2: gets its cap plus
#                  every second the steps before it left unused
# Every step runs under `timeout` with a cap; the caps of the steps to run must sum to at most
# the budget, or the script refuses (exit 2) before running anything. A step never takes time
# reserved for the caps of the steps after it, so the whole run ends within the budget.
# The benchmarks get --budget-s (cap minus a margin), rewrite their CSV/JSON after every case
# (a killed step keeps what it measured) and exit 3 when the budget left cases out (PARTIAL).
#
# Planned GPU timeline of a 15-minute (900 s) lease, in seconds (counted from the request):
#     machine start (counted against the lease)        120-240   by 240
#     this script, default budget (run timeout_s ~420)   <= 360   by 600
#     transfers back, reading the summary                  ~30   by 630
#     GPU_CHECK_BUDGET_S=200 ... --resume, at once on the   <= 200   by 830
#       same machine (it is given back ~30 s after a call; a fresh one starts bare)
#     slack                                               >= 70   by 900
#   step            cap   ends by
#   environment      15        15
#   cuda            105       120   (nvcc build ~60 s on 16 cores + test_cuda.py)
#   gpu_tests        70       190
#   bench_kernels    95       285
#   gamma_grid       50       335
#   bench_e2e       25+       360
# Override a cap with GPU_CHECK_CAP_<STEP> (e.g. GPU_CHECK_CAP_BENCH_KERNELS=150), pick steps
# with --only, print the plan with --plan. Caps are estimates: revise them from the seconds per
# step in gpu_check.state after a lease.
#
# Files: step status and outputs live in GPU_CHECK_DIR (default benchmarks/results/gpu_check/,
# git-ignored: it survives between calls on a warm machine); the results (at most 8 files:
# gpu_check.log, kernels.{csv,json}, gamma_grid.{png,csv,json}, e2e.{csv,json}) are copied to
# $OUT, when set, after every step. gpu_check.state (one line per step: status, seconds) stays in
# GPU_CHECK_DIR. A run without --resume starts afresh (old results and state removed).
#
#   bash benchmarks/gpu_check.sh                on the GPU machine (results in $OUT)
#   bash benchmarks/gpu_check.sh --resume       skip the steps that passed, rerun the others
#                                               (benchmarks continue their CSVs), log appended
#   bash benchmarks/gpu_check.sh --cpu-smoke    the same steps, order and budget logic on CPU
#                                               with tiny settings (GPU tests skip; CI runs it
#                                               with only python3 on PATH)
#   bash benchmarks/gpu_check.sh --plan         print the plan and exit (2 if over budget)
# Exit status: 0 when no step failed or timed out (PARTIAL benchmarks are not failures), 1 if one
# did (listed at the end), 2 for bad arguments or caps over the budget.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Not TRITON_CACHE_AUTOTUNING: Triton's on-disk autotune key leaves out sgkernels' size bucket,
# so every bucket would reuse the first bucket's choice. Compiled kernels are cached on disk
# (~/.triton/cache), so a --resume rerun on the same machine only re-times the configs.

# The GPU correctness selection: every gpu-marked test once, bf16 + one fp16 case per op. Kept
# here (not in the test files) so the CPU test suite is unchanged; tests/bench/test_gpu_check.py
# checks that every id below exists and what the selection keeps (--print-test-selection).
TEST_SELECTION=(-m gpu tests --ignore=tests/kernels/test_cuda.py
  # attention: bf16 at head dims 64 / 72 / 128, fp16 at 64 only
  --deselect "tests/kernels/test_triton_attention.py::test_gpu_matches_fp32_oracle[72-dtype0]"
  --deselect "tests/kernels/test_triton_attention.py::test_gpu_matches_fp32_oracle[128-dtype0]"
  # norm / residual: bf16 (their fp32 case dropped; they have no fp16 case)
  --deselect "tests/kernels/test_triton_norm.py::test_compiled_kernels_on_gpu[dtype0]"
  --deselect "tests/kernels/test_triton_residual.py::test_compiled_kernels_on_gpu[dtype0]"
  # rope: bf16 at 64 / 72 / 128, fp16 at 64 only, no fp32
  --deselect "tests/kernels/test_triton_rope.py::test_gpu_matches_reference[64-dtype0]"
  --deselect "tests/kernels/test_triton_rope.py::test_gpu_matches_reference[72-dtype0]"
  --deselect "tests/kernels/test_triton_rope.py::test_gpu_matches_reference[72-dtype1]"
  --deselect "tests/kernels/test_triton_rope.py::test_gpu_matches_reference[128-dtype0]"
  --deselect "tests/kernels/test_triton_rope.py::test_gpu_matches_reference[128-dtype1]")

usage() {
  echo "usage: bash benchmarks/gpu_check.sh [--cpu-smoke] [--resume] [--only STEP[,STEP...]]" \
       "[--plan] [--print-test-selection]" >&2
}
SMOKE=0 RESUME=0 PLAN_ONLY=0 ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) SMOKE=1 ;;
    --resume) RESUME=1 ;;
    --plan) PLAN_ONLY=1 ;;
    --only) shift; ONLY=${1:-} ;;
    --only=*) ONLY=${1#--only=} ;;
    --print-test-selection) printf '%s\n' "${TEST_SELECTION[@]}"; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    *) usage; exit 2 ;;
  esac
  shift
done
MODE=gpu
[ "$SMOKE" -eq 1 ] && MODE=cpu-smoke

STEPS=(environment cuda gpu_tests bench_kernels gamma_grid bench_e2e)
REST_STEP=bench_e2e   # the last step: its cap is a minimum, it also gets the time left
declare -A CAP=([environment]=15 [cuda]=105 [gpu_tests]=70 [bench_kernels]=95
                [gamma_grid]=50 [bench_e2e]=25)
is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }
for s in "${STEPS[@]}"; do
  var="GPU_CHECK_CAP_${s^^}"
  if [ -n "${!var:-}" ]; then
    is_int "${!var}" || { echo "gpu_check: $var must be a whole number of seconds" >&2; exit 2; }
    CAP[$s]=${!var}
  fi
done
BUDGET=${GPU_CHECK_BUDGET_S:-360}
is_int "$BUDGET" && [ "$BUDGET" -gt 0 ] ||
  { echo "gpu_check: GPU_CHECK_BUDGET_S must be a positive whole number" >&2; exit 2; }
if [ -n "$ONLY" ]; then
  for s in ${ONLY//,/ }; do
    [[ " ${STEPS[*]} " == *" $s "* ]] ||
      { echo "gpu_check: --only: unknown step '$s' (steps: ${STEPS[*]})" >&2; exit 2; }
  done
fi

WORK=${GPU_CHECK_DIR:-$ROOT/benchmarks/results/gpu_check}
DEST=${OUT:-$WORK}
LOG=$WORK/gpu_check.log
STATE=$WORK/gpu_check.state
RESULTS=(gpu_check.log kernels.csv kernels.json gamma_grid.png gamma_grid.csv gamma_grid.json
         e2e.csv e2e.json)

# ---- state of an earlier run (--resume) ----------------------------------------------------
declare -A PREV=() SECS=()
FRESH=1   # 0: continue the run recorded in $STATE
if [ "$RESUME" -eq 1 ] && [ -f "$STATE" ]; then
  prev_mode=$(sed -n 's/^mode //p' "$STATE")
  if [ "$prev_mode" = "$MODE" ]; then
    FRESH=0
    while read -r name status secs; do
      [ "$name" = mode ] && continue
      PREV[$name]=$status
      SECS[$name]=${secs:-0}
    done < "$STATE"
  else
    echo "gpu_check: $STATE is from a '$prev_mode' run, not '$MODE': nothing to resume" >&2
  fi
fi
cuda_built() { compgen -G "$ROOT/sgkernels/_C*.so" > /dev/null; }

# ---- the plan: which steps run, with which caps ----------------------------------------------
declare -A WHY=()   # step -> reason it does not run
for s in "${STEPS[@]}"; do
  if [ "$s" != environment ] && [ -n "$ONLY" ] && [[ ",$ONLY," != *",$s,"* ]]; then
    WHY[$s]="not in --only"
  elif [ "$s" != environment ] && [ "${PREV[$s]:-}" = pass ]; then
    if [ "$s" = cuda ] && [ "$MODE" = gpu ] && ! cuda_built; then
      :  # passed on another machine: sgkernels/_C*.so is not here, build again
    else
      WHY[$s]="passed in an earlier run (--resume)"
    fi
  fi
done
RUN=()
for s in "${STEPS[@]}"; do [ -z "${WHY[$s]:-}" ] && RUN+=("$s"); done
total=0
for s in "${RUN[@]}"; do total=$(( total + CAP[$s] )); done

print_plan() {
  echo "gpu_check plan ($MODE, budget ${BUDGET} s$([ "$RESUME" -eq 1 ] && echo ', --resume')):"
  printf '  %-14s %6s %8s\n' step cap "ends by"
  local cum=0 s
  for s in "${STEPS[@]}"; do
    if [ -n "${WHY[$s]:-}" ]; then
      printf '  %-14s %6s %8s   SKIP: %s\n' "$s" - - "${WHY[$s]}"
    else
      cum=$(( cum + CAP[$s] ))
      if [ "$s" = "$REST_STEP" ]; then
        printf '  %-14s %5s+ %8s   (also gets the time the steps before leave)\n' "$s" "${CAP[$s]}" "$cum"
      else
        printf '  %-14s %6s %8s\n' "$s" "${CAP[$s]}" "$cum"
      fi
    fi
  done
  printf '  %-14s %6s %8s   (budget %s s)\n' "sum of caps" "$total" "" "$BUDGET"
}
if [ "$total" -gt "$BUDGET" ]; then
  print_plan >&2
  echo "gpu_check: refusing: the caps of the steps to run sum to ${total} s, more than the budget" \
       "GPU_CHECK_BUDGET_S=${BUDGET} s (lower GPU_CHECK_CAP_<STEP>, use --only, or raise the budget)" >&2
  exit 2
fi
if [ "$PLAN_ONLY" -eq 1 ]; then
  print_plan
  exit 0
fi

# ---- files ------------------------------------------------------------------------------------
mkdir -p "$WORK" "$DEST" || exit 2
if [ "$FRESH" -eq 1 ]; then   # no stale results (nor rows of another mode) are kept
  rm -f "$STATE"
  for f in "${RESULTS[@]}"; do rm -f "$WORK/$f" "$DEST/$f"; done
fi
SCRATCH=$(mktemp -d)
T0=$(date +%s)
mirror() {   # results (not the state) from WORK to DEST
  [ "$DEST" -ef "$WORK" ] && return 0
  local f
  for f in "${RESULTS[@]}"; do
    [ -f "$WORK/$f" ] && cp -f "$WORK/$f" "$DEST/$f"
  done
  return 0
}
cleanup() { mirror; rm -rf "$SCRATCH"; }
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

elapsed() { echo $(( $(date +%s) - T0 )); }
say() { echo "[gpu_check +$(elapsed)s] $*" | tee -a "$LOG"; }
save_state() {   # rewrite the state file atomically
  local s tmp="$STATE.tmp.$$"
  { echo "mode $MODE"
    for s in "${STEPS[@]}"; do
      if [ -n "${PREV[$s]:-}" ]; then echo "$s ${PREV[$s]} ${SECS[$s]:-0}"; fi
    done
  } > "$tmp" && mv -f "$tmp" "$STATE"
}

if [ "$FRESH" -eq 0 ] && [ -f "$LOG" ]; then
  echo "" >> "$LOG"
  echo "===== resumed $(date -u '+%Y-%m-%d %H:%M:%S') UTC =====" >> "$LOG"
fi
print_plan | tee -a "$LOG"
for s in "${STEPS[@]}"; do
  [ -n "${WHY[$s]:-}" ] && say "SKIP $s: ${WHY[$s]}"
done
save_state

FAILED=()
# step NAME CMD...: run CMD under `timeout` and log its output. Its limit is its cap, but never
# more than the time left minus the caps of the steps after it (REST_STEP: all the time left).
# An argument @BUDGET@ becomes the limit minus a margin (the benchmark's own --budget-s: it stops
# starting cases in time to write its files). Status: pass, partial (exit 3), timeout, fail.
step() {
  local name=$1; shift
  [ -n "${WHY[$name]:-}" ] && return 0
  local later=0 seen=0 s
  for s in "${RUN[@]}"; do
    [ "$seen" -eq 1 ] && later=$(( later + CAP[$s] ))
    [ "$s" = "$name" ] && seen=1
  done
  local left=$(( BUDGET - $(elapsed) ))
  local limit=${CAP[$name]}
  [ "$name" = "$REST_STEP" ] && limit=$left
  [ "$limit" -gt $(( left - later )) ] && limit=$(( left - later ))
  if [ "$limit" -lt 5 ]; then
    say "SKIP $name: only ${limit} s of the budget left for it"
    return 0
  fi
  local margin=$(( limit / 5 > 10 ? limit / 5 : 10 ))
  local args=() a
  for a in "$@"; do args+=("${a/@BUDGET@/$(( limit - margin > 3 ? limit - margin : 3 ))}"); done
  say "START $name (limit ${limit} s): ${args[*]}"
  local t rc=0
  t=$(date +%s)
  timeout --signal=TERM --kill-after=2 $(( limit - 2 )) "${args[@]}" >> "$LOG" 2>&1 || rc=$?
  local took=$(( $(date +%s) - t ))
  case $rc in
    0) PREV[$name]=pass; say "PASS $name (${took} s)" ;;
    3) PREV[$name]=partial
       say "PARTIAL $name (${took} s): its --budget-s left cases out; --resume continues it" ;;
    124|137) PREV[$name]=timeout; FAILED+=("$name")
       say "TIMEOUT $name after ${took} s (what it wrote is kept; --resume continues it)" ;;
    *) PREV[$name]=fail; FAILED+=("$name"); say "FAIL $name (exit $rc, ${took} s)" ;;
  esac
  SECS[$name]=$took
  save_state
  mirror
}

environment() {
  command -v nvidia-smi > /dev/null &&
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  command -v nvcc > /dev/null && nvcc --version | tail -2
  "$PYTHON" - <<'EOF'
import importlib.metadata as md, os, sys
import torch
print(f"python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__} "
      f"(CUDA {torch.version.cuda}), cuda available {torch.cuda.is_available()}, "
      f"cpus {os.cpu_count()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu {p.name}: {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, "
          f"sm_{p.major}{p.minor}")
for name in ("triton", "pytest", "pytest-xdist", "pytest-timeout", "liger-kernel", "numpy",
             "flash-attn"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} not installed")
EOF
  git -C "$ROOT" log --oneline -1 2>/dev/null || true
}
if [ -z "${WHY[environment]:-}" ]; then
  export -f environment
  export PYTHON ROOT
  step environment bash -c environment
fi

# ---- settings per mode --------------------------------------------------------------------------
has_module() { "$PYTHON" -c "import $1" 2>/dev/null; }
if [ "$SMOKE" -eq 1 ]; then
  WORKERS=${GPU_CHECK_WORKERS:-1}   # 2 cores: one worker collects faster than two
  CUDA_STEP=(env PYTHON="$PYTHON" OUT="$SCRATCH/cuda" bash benchmarks/gpu_check_cuda.sh --dry-run)
  KERNELS=(--quick --device cpu --repeats 1 --warmup 0)
  GRID=(--quick --device cpu --model Tiny/2 --batch 2)
  E2E=(--device cpu --model Tiny/2 --batches 2 --train-batches 2 --repeats 1 --modes eager)
else
  WORKERS=${GPU_CHECK_WORKERS:-8}
  CUDA_STEP=(env PYTHON="$PYTHON" OUT="$SCRATCH/cuda" bash benchmarks/gpu_check_cuda.sh)
  KERNELS=(--device cuda)
  GRID=(--quick --device cuda --model SiT-XL/2 --batch 64)
  # compile mode left out: compiling SiT-XL/2 does not fit the step's budget
  E2E=(--device cuda --model SiT-XL/2 --batches 16 64 --train-batches 32 --repeats 3
       --modes eager graphs)
fi
BENCH_RESUME=()
[ "$FRESH" -eq 0 ] && BENCH_RESUME=(--resume)
PYTEST=()

step cuda "${CUDA_STEP[@]}"
if [ -d "$SCRATCH/cuda" ] && [ -f "$SCRATCH/cuda/cuda_tests.log" ]; then
  { echo "----- cuda_tests.log -----"; cat "$SCRATCH/cuda/cuda_tests.log"; } >> "$LOG"
fi

if [ -z "${WHY[gpu_tests]:-}" ]; then
  PYTEST=(-q -p no:cacheprovider -rfEs --tb=short --durations=15 "${TEST_SELECTION[@]}")
  if has_module xdist; then PYTEST+=(-n "$WORKERS"); else say "pytest-xdist missing: one process"; fi
  if has_module pytest_timeout; then
    # thread method: a test hung inside a CUDA call ends its worker (xdist reports it, starts a
    # new one) instead of waiting for the call to return, as the signal method would
    PYTEST+=(--timeout "${GPU_CHECK_TEST_TIMEOUT_S:-45}" --timeout-method thread)
    # >= 2.3: stop starting tests before the step's limit, so the summary reaches the log
    "$PYTHON" -c "import importlib.metadata as m, sys
sys.exit(tuple(map(int, m.version('pytest-timeout').split('.')[:2])) < (2, 3))" 2>/dev/null &&
      PYTEST+=(--session-timeout @BUDGET@)
  else
    say "pytest-timeout missing: no per-test timeout"
  fi
fi
step gpu_tests env TRITON_INTERPRET=0 SGKERNELS_TRITON_ONE_CONFIG=1 "$PYTHON" -m pytest "${PYTEST[@]}"
step bench_kernels "$PYTHON" benchmarks/bench_kernels.py "${KERNELS[@]}" --budget-s @BUDGET@ \
  "${BENCH_RESUME[@]}" --out "$WORK"
step gamma_grid "$PYTHON" benchmarks/gamma_grid.py "${GRID[@]}" --budget-s @BUDGET@ \
  "${BENCH_RESUME[@]}" --out "$WORK"
step bench_e2e "$PYTHON" benchmarks/bench_e2e.py "${E2E[@]}" --budget-s @BUDGET@ \
  "${BENCH_RESUME[@]}" --out "$WORK"

say "summary ($MODE):"
for s in "${STEPS[@]}"; do
  printf '  %-14s %-8s %5s s\n' "$s" "${PREV[$s]:-not run}" "${SECS[$s]:-0}" | tee -a "$LOG"
done
mirror
files=0
for f in "${RESULTS[@]}"; do [ -f "$DEST/$f" ] && files=$(( files + 1 )); done
say "done on $MODE in $(elapsed) s of the ${BUDGET} s budget; $files result files in $DEST"
if [ "${#FAILED[@]}" -gt 0 ]; then
  say "FAILED steps: ${FAILED[*]}"
  exit 1
fi
exit 0
