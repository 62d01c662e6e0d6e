"""Build script: the pure-Python + Triton package everywhere, plus the CUDA extension
`sgkernels._C` when torch has CUDA and nvcc is found (see csrc/).

The CUDA build needs the installed torch at build time, so it is built without PEP 517 build
isolation:  `pip install --no-build-isolation .`  (CUDA_HOME, TORCH_CUDA_ARCH_LIST and MAX_JOBS
are honoured; the default arch list, csrc/cuda_arch_list.txt, covers sm_80 and sm_90a). A plain
isolated `pip install .` sees no torch and installs the package without `_C`, saying so in one
line; the torch and Triton backends work without it. SGKERNELS_NO_CUDA=1 skips the extension
explicitly."""
import glob
import os
import shutil

from setuptools import find_packages, setup


def _wheel_cuda_includes():
    """CUDA headers shipped by the nvidia-* wheels of a CUDA torch (nvidia/cu13/include)."""
    try:
        import nvidia
    except ImportError:
        return []
    found = []
    for root in getattr(nvidia, "__path__", []):
        for sub in ("cu13", "cu12"):
            cand = os.path.join(root, sub, "include")
            if os.path.isdir(cand):
                found.append(cand)
    return found


def _nvcc_flags():
    """The nvcc flags of csrc/nvcc_flags.txt (also read by .ci/cuda_check.sh's ptxas check)."""
    with open(os.path.join("csrc", "nvcc_flags.txt")) as f:
        return [flag for line in f for flag in line.split("#", 1)[0].split()]


def _arch_list():
    """The default TORCH_CUDA_ARCH_LIST, csrc/cuda_arch_list.txt (also read by .ci/cuda_check.sh,
    which checks every SASS target of it for register spills)."""
    with open(os.path.join("csrc", "cuda_arch_list.txt")) as f:
        return ";".join(arch for line in f
                        for arch in line.split("#", 1)[0].replace(";", " ").split())


def _cuda_extension():
    """Return ([ext], cmdclass) for sgkernels._C, or ([], {}) with a one-line reason."""
    sources = sorted(glob.glob("csrc/*.cu") + glob.glob("csrc/*.cpp"))
    # torch guesses CUDA_HOME from `which nvcc`, which is wrong for a wrapper script such as a
    # /usr/local/bin/nvcc; prefer the standard toolkit location when neither variable is set.
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")) and \
            os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        print("sgkernels: skipping the CUDA extension sgkernels._C: torch not importable at build "
              "time (build it with `pip install --no-build-isolation .`)")
        return [], {}
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    if torch.version.cuda is None:
        reason = f"torch {torch.__version__} is a CPU build"
    elif not nvcc or not os.path.exists(nvcc):
        reason = "nvcc not found (set CUDA_HOME)"
    elif not sources:
        reason = "no sources in csrc/"
    elif os.environ.get("SGKERNELS_NO_CUDA") == "1":
        reason = "SGKERNELS_NO_CUDA=1"
    else:
        reason = None
    if reason:
        print(f"sgkernels: skipping the CUDA extension sgkernels._C: {reason}")
        return [], {}
    # Default: sm_80 and sm_90a SASS, plus compute_80 PTX that newer GPUs JIT-compile.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _arch_list())
    include = [os.path.abspath("csrc")]
    include += _wheel_cuda_includes()
    ext = CUDAExtension(
        "sgkernels._C",
        sources,
        include_dirs=include,
        extra_compile_args={"cxx": ["-O3"],
                            "nvcc": _nvcc_flags()},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extension()

setup(
    packages=find_packages(include=["sgkernels", "sgkernels.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
