"""Build script: the pure-Python + Triton package everywhere, plus the CUDA extension
`sgkernels._C` when torch has CUDA and nvcc is found (see csrc/)."""
import glob
import os
import shutil

from setuptools import find_packages, setup


def _cuda_extension():
    """Return ([ext], cmdclass) for sgkernels._C, or ([], {}) with a one-line reason."""
    sources = sorted(glob.glob("csrc/*.cu") + glob.glob("csrc/*.cpp"))
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        print("sgkernels: torch not importable at build time; skipping the CUDA extension")
        return [], {}
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc"))
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
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    include = [os.path.abspath("csrc")]
    import nvidia  # noqa: F401  (cu13 wheels ship CUDA headers under nvidia/cu13/include)

    for root in getattr(nvidia, "__path__", []):
        cand = os.path.join(root, "cu13", "include")
        if os.path.isdir(cand):
            include.append(cand)
    ext = CUDAExtension(
        "sgkernels._C",
        sources,
        include_dirs=include,
        extra_compile_args={"cxx": ["-O3", "-std=c++17"],
                            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _cuda_extension()

setup(
    packages=find_packages(include=["sgkernels", "sgkernels.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
