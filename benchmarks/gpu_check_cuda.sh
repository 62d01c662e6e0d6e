#!/usr/bin/env bash
# CUDA C++ part of benchmarks/gpu_check.sh, for a lent GPU machine (no network): builds
# sgkernels._C in place for the local GPU's architecture, prints each kernel's registers and
# spills from the built binary, and runs the CUDA GPU tests (tests/kernels/test_cuda.py).
# Standalone: `bash benchmarks/gpu_check_cuda.sh`; exits non-zero if the build or a test fails.
# Environment: PYTHON (default python), CUDA_HOME (default /usr/local/cuda), MAX_JOBS (default:
# all cores), TORCH_CUDA_ARCH_LIST (default: the visible GPU's, e.g. 9.0a on an H100), OUT (if
# set, logs are copied there).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
t0=$(date +%s)
since() { echo $(( $(date +%s) - $1 )); }
log=$(mktemp -d)

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
set +e
"$PYTHON" -m pytest -q -p no:cacheprovider tests/kernels/test_cuda.py > "$log/cuda_tests.log" 2>&1
status=$?
set -e
tail -25 "$log/cuda_tests.log"
echo "[cuda] GPU tests finished in $(since "$ts") s (status $status); total $(since "$t0") s"
if [ -n "${OUT:-}" ]; then cp "$log"/* "$OUT"/ 2>/dev/null || true; fi
rm -rf "$log"
exit $status
