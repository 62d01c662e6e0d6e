#!/usr/bin/env bash
# CUDA C++ part of benchmarks/gpu_check.sh, for a lent GPU machine (no network): builds
# sgkernels._C in place for the local GPU's architecture, prints each kernel's registers and
# spills from the built binary, and runs the CUDA GPU tests (tests/kernels/test_cuda.py, in
# parallel with pytest-xdist and with a per-test --timeout when those plugins are installed).
# Standalone: `bash benchmarks/gpu_check_cuda.sh`; exits non-zero if the build or a test fails.
# `--dry-run`: check the set-up (python, nvcc, the files) and print the commands, run nothing
# (what `gpu_check.sh --cpu-smoke` does on a machine without a GPU).
# Environment: PYTHON (default python3), CUDA_HOME (default /usr/local/cuda), MAX_JOBS (default:
# all cores), TORCH_CUDA_ARCH_LIST (default: the visible GPU's, e.g. 9.0a on an H100),
# CUDA_TEST_WORKERS (default 4), CUDA_TEST_TIMEOUT_S (per test, default 60), OUT (if set, the
# logs cuda_build.log, cuda_res_usage.txt, cuda_tests.log are written there as they grow).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DRY=0
case "${1:-}" in
  "") ;;
  --dry-run) DRY=1 ;;
  *) echo "usage: bash benchmarks/gpu_check_cuda.sh [--dry-run]" >&2; exit 2 ;;
esac
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 4)}
t0=$(date +%s)
since() { echo $(( $(date +%s) - $1 )); }
if [ -n "${OUT:-}" ]; then
  log=$OUT
  mkdir -p "$log"
else
  log=$(mktemp -d)
  trap 'rm -rf "$log"' EXIT
fi

TEST_ARGS=(-q -p no:cacheprovider -rfEs --tb=short tests/kernels/test_cuda.py)
if "$PYTHON" -c "import xdist" 2>/dev/null; then
  TEST_ARGS+=(-n "${CUDA_TEST_WORKERS:-4}")
fi
if "$PYTHON" -c "import pytest_timeout" 2>/dev/null; then
  TEST_ARGS+=(--timeout "${CUDA_TEST_TIMEOUT_S:-60}" --timeout-method thread)
fi

if [ "$DRY" -eq 1 ]; then
  version=$("$PYTHON" -c "import sys; print(sys.version.split()[0])")
  echo "[cuda] dry run: $PYTHON is Python $version; CUDA_HOME=$CUDA_HOME; MAX_JOBS=$MAX_JOBS;" \
       "nvcc: $(command -v nvcc || echo 'not found')"
  for f in setup.py tests/kernels/test_cuda.py; do
    [ -f "$f" ] || { echo "[cuda] FAIL: $f is missing"; exit 1; }
  done
  ls csrc/*.cu > /dev/null || { echo "[cuda] FAIL: no csrc/*.cu"; exit 1; }
  echo "[cuda] would run: $PYTHON setup.py -q build_ext --inplace (logs in $log)"
  echo "[cuda] would run: $PYTHON -m pytest ${TEST_ARGS[*]}"
  exit 0
fi

"$PYTHON" - <<'EOF'
import torch
assert torch.cuda.is_available(), "gpu_check_cuda.sh needs a CUDA device"
print(f"[cuda] torch {torch.__version__} (CUDA {torch.version.cuda}) on "
      f"{torch.cuda.get_device_name()} sm_{''.join(map(str, torch.cuda.get_device_capability()))}")
EOF
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PYTHON" -c "import torch; major, minor = torch.cuda.get_device_capability(); print(f'{major}.{minor}' + ('a' if major >= 9 else ''))")
  export TORCH_CUDA_ARCH_LIST
fi
echo "[cuda] building sgkernels._C in place (arch $TORCH_CUDA_ARCH_LIST, MAX_JOBS=$MAX_JOBS)"
if ! "$PYTHON" setup.py -q build_ext --inplace > "$log/cuda_build.log" 2>&1; then
  tail -40 "$log/cuda_build.log"
  echo "[cuda] FAIL: the extension did not build"
  exit 1
fi
so=$(ls sgkernels/_C*.so 2>/dev/null || true)
if [ -z "$so" ]; then
  grep -h "^sgkernels:" "$log/cuda_build.log" || true
  echo "[cuda] FAIL: setup.py did not build sgkernels._C (reason above)"
  exit 1
fi
echo "[cuda] built $so in $(since "$t0") s"
if command -v cuobjdump > /dev/null; then
  echo "[cuda] registers / stack / local memory per kernel (cuobjdump -res-usage):"
  cuobjdump -res-usage "$so" 2>/dev/null \
    | awk '/^arch =/ {arch = $3} /Function/ {name = $2; sub(/:$/, "", name)}
           /REG:/ {print arch "\t" $1 " " $2 " " $4 "\t" name}' \
    | c++filt | sed -E 's/\(.*\)$//' | tee "$log/cuda_res_usage.txt" | sed 's/^/   /' || true
fi
ts=$(date +%s)
echo "[cuda] $PYTHON -m pytest ${TEST_ARGS[*]}"
set +e
"$PYTHON" -m pytest "${TEST_ARGS[@]}" > "$log/cuda_tests.log" 2>&1
status=$?
set -e
tail -25 "$log/cuda_tests.log"
echo "[cuda] GPU tests finished in $(since "$ts") s (status $status); total $(since "$t0") s"
exit $status
