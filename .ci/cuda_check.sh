#!/usr/bin/env bash
# CUDA checks that need no GPU (called by .ci/run; safe to rerun).
#   (a) every csrc/*.cu compiles alone with the build's nvcc flags (csrc/nvcc_flags.txt) for every
#       SASS target the build ships (TORCH_CUDA_ARCH_LIST, default csrc/cuda_arch_list.txt; setup.py
#       reads both files too) plus -Xptxas -v: prints registers / stack / spills per kernel and
#       architecture and fails on any spill. (+PTX entries also ship PTX, which ptxas compiles
#       only on the GPU that loads it: it is not checked here.)
#   (b) in a second virtualenv (.venv-cuda, reused when its torch is right) with a CUDA build of
#       torch, `pip install --no-build-isolation .` builds and links sgkernels._C, and
#       `import sgkernels._C` succeeds from outside the source tree (importing needs no GPU).
#   (c) the kernels' CPU-emulation tests (tests/kernels/test_cuda_emulated.py) again, built with
#       AddressSanitizer, in the test venv (.venv, or TEST_PYTHON).
# Environment: NVCC (default: nvcc on PATH, else $CUDA_HOME/bin/nvcc), CUDA_HOME
# (default /usr/local/cuda), CUDA_TORCH (default torch==2.14.1), MAX_JOBS (default 2),
# TORCH_CUDA_ARCH_LIST (default: csrc/cuda_arch_list.txt; steps (a) and (b) both use it).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$(command -v nvcc || echo "$CUDA_HOME/bin/nvcc")}
CUDA_TORCH=${CUDA_TORCH:-torch==2.14.1}
export MAX_JOBS=${MAX_JOBS:-2}
t0=$(date +%s)
since() { echo $(( $(date +%s) - $1 )); }

# the build's nvcc flags: whitespace-separated, '#' starts a comment (as setup.py reads them)
read -ra nvcc_flags <<< "$(sed 's/#.*//' csrc/nvcc_flags.txt | tr '\n' ' ')"
# the build's architectures: TORCH_CUDA_ARCH_LIST, else csrc/cuda_arch_list.txt (as setup.py);
# each entry X.Y[a|f][+PTX] ships sm_XY[a|f] SASS, compiled here with torch's -gencode for it.
arch_list=${TORCH_CUDA_ARCH_LIST:-$(sed 's/#.*//' csrc/cuda_arch_list.txt | tr '\n' ' ')}
gencode=() sass=()
for arch in $(tr ';' ' ' <<< "$arch_list"); do
  sm=${arch%+PTX}
  if [[ ! $sm =~ ^[0-9]+\.[0-9]+[af]?$ ]]; then
    echo "FAIL: cannot read the architecture '$arch' of TORCH_CUDA_ARCH_LIST='$arch_list'"
    exit 1
  fi
  sm=${sm/./}
  gencode+=(-gencode "arch=compute_$sm,code=sm_$sm") sass+=("sm_$sm")
done
[ ${#sass[@]} -gt 0 ] || { echo "FAIL: no architectures in '$arch_list'"; exit 1; }
echo "-- (a) standalone ${sass[*]} compile of csrc/*.cu with ${nvcc_flags[*]} ($("$NVCC" --version | tail -1))"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for cu in csrc/*.cu; do
  ts=$(date +%s)
  "$NVCC" "${gencode[@]}" -Xptxas -v "${nvcc_flags[@]}" -Icsrc -c "$cu" \
    -o "$tmp/$(basename "$cu").o" 2> "$tmp/$(basename "$cu").log" \
    || { cat "$tmp/$(basename "$cu").log"; echo "FAIL: $cu does not compile"; exit 1; }
  echo "   $cu compiled in $(since "$ts") s"
done
python3 - "$tmp" "${sass[@]}" <<'EOF'
"""Parse ptxas -v logs: one table per architecture, one row per kernel; exit 1 if any kernel
spills or an architecture has no kernels."""
import pathlib, re, subprocess, sys

archs = sys.argv[2:]
rows, bad = [], []
for log in sorted(pathlib.Path(sys.argv[1]).glob("*.log")):
    name = None
    for line in log.read_text().splitlines():
        if m := re.search(r"Compiling entry function '(\w+)' for '(\w+)'", line):
            name, arch, stack, spill = m.group(1), m.group(2), 0, (0, 0)
        elif name and (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                                      r"(\d+) bytes spill loads", line)):
            stack, spill = int(m.group(1)), (int(m.group(2)), int(m.group(3)))
        elif name and (m := re.search(r"Used (\d+) registers", line)):
            rows.append((arch, log.name[:-4], name, int(m.group(1)), stack, *spill))
            name = None
names = subprocess.run(["c++filt"], input="\n".join(r[2] for r in rows), capture_output=True,
                       text=True).stdout.splitlines() or [r[2] for r in rows]
for arch in archs:
    print(f"   {arch:<7} {'file':<16} {'regs':>4} {'stack':>5} {'spill st/ld':>11}  kernel")
    n = 0
    for (a, f, _, regs, stack, st, ld), pretty in zip(rows, names):
        if a != arch:
            continue
        n += 1
        pretty = re.sub(r"\(.*\)$", "", pretty.replace("sgk::", ""))
        print(f"   {a:<7} {f:<16} {regs:>4} {stack:>5} {f'{st}/{ld}':>11}  {pretty}")
        bad += [f"{pretty} ({arch})"] if st or ld else []
    print(f"   {arch}: {n} kernels, {sum(b.endswith(f'({arch})') for b in bad)} with spills")
    if n == 0:
        sys.exit(f"FAIL: no {arch} kernels found in the ptxas output")
if bad:
    sys.exit("FAIL: register spills in " + ", ".join(bad))
EOF
echo "   (a) done in $(since "$t0") s"

echo "-- (b) build sgkernels._C against $CUDA_TORCH in .venv-cuda"
tb=$(date +%s)
venv="$root/.venv-cuda"
want=${CUDA_TORCH#torch==}
if ! "$venv/bin/python" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$want' or torch.version.cuda is None)" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$CUDA_TORCH" ninja setuptools wheel numpy
  echo "   created .venv-cuda in $(since "$tb") s"
else
  echo "   reusing .venv-cuda"
fi
"$venv/bin/python" -c "import torch; print('   torch', torch.__version__, 'cuda', torch.version.cuda)"
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
export CPATH="$site/nvidia/cu13/include${CPATH:+:$CPATH}"
tp=$(date +%s)
if ! "$venv/bin/pip" install --no-build-isolation --no-deps --force-reinstall . \
    > "$tmp/pip.log" 2>&1; then
  tail -40 "$tmp/pip.log"
  echo "FAIL: pip install --no-build-isolation . did not build sgkernels._C"
  exit 1
fi
grep -h "^sgkernels:" "$tmp/pip.log" || true
echo "   pip install --no-build-isolation . took $(since "$tp") s (MAX_JOBS=$MAX_JOBS)"
(cd "$tmp" && "$venv/bin/python" - <<'EOF'
import torch
import sgkernels._C
import sgkernels.kernels.cuda as cuda

ops = [name for name in cuda.__all__ if name.endswith(("_fwd", "_bwd"))]
missing = [name for name in ops if not hasattr(torch.ops.sgkernels_C, name)]
assert not missing, f"ops missing from torch.ops.sgkernels_C: {missing}"
print(f"   import sgkernels._C OK from {sgkernels._C.__file__}: {len(ops)} ops registered")
print(f"   cuda.available() = {cuda.available()} ({cuda.unavailable_reason()})")
EOF
)
echo "   (b) done in $(since "$tb") s"

echo "-- (c) kernels on the CPU emulation under AddressSanitizer (out-of-bounds accesses)"
tc=$(date +%s)
test_python=${TEST_PYTHON:-$root/.venv/bin/python}
libasan=$(gcc -print-file-name=libasan.so)
if [ ! -x "$test_python" ] || [ ! -e "$libasan" ]; then
  echo "   skipped: needs the test venv ($test_python) and gcc's libasan"
else
  if ! SGK_EMU_ASAN=1 LD_PRELOAD="$libasan" ASAN_OPTIONS="detect_leaks=0:log_path=$tmp/asan" \
      "$test_python" -m pytest -q -p no:cacheprovider tests/kernels/test_cuda_emulated.py \
      > "$tmp/asan_pytest.log" 2>&1; then
    tail -20 "$tmp/asan_pytest.log"
    cat "$tmp"/asan.* 2>/dev/null | head -60
    echo "FAIL: the emulated kernel tests failed under AddressSanitizer"
    exit 1
  fi
  tail -1 "$tmp/asan_pytest.log" | sed 's/^/   /'
  echo "   (c) done in $(since "$tc") s"
fi
echo "-- CUDA checks passed in $(since "$t0") s"
