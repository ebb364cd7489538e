"""Builds regnet_kernels._C, one torch extension, from csrc/ with ninja.

- C++ sources: csrc/*.cpp and csrc/cpu/**/*.cpp (always).
- CUDA sources: csrc/cuda/**/*.cu (kernels, for sm_80 and sm_90) and csrc/cuda/**/*.cpp (their
  host wrappers), when torch is a CUDA build and nvcc is found. REGNET_KERNELS_CUDA=1 forces
  them (and fails loudly without nvcc), =0 skips them.
- -fopenmp so at::parallel_for threads our loops; no -march=native: the CPU kernels select AVX2/AVX-512 at run time (see csrc/cpu/README.md).
- REGNET_KERNELS_ASAN=1 builds with AddressSanitizer (used by tools/asan_check.sh).
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def _cuda_wanted(torch):
    flag = os.environ.get("REGNET_KERNELS_CUDA", "auto").lower()
    if flag not in ("auto", "0", "1"):
        sys.exit(f"REGNET_KERNELS_CUDA={flag!r}: expected auto, 0 or 1")
    have_nvcc = bool(os.environ.get("CUDA_HOME") or shutil.which("nvcc"))
    have = torch.version.cuda is not None and have_nvcc
    if flag == "1" and not have:
        sys.exit("REGNET_KERNELS_CUDA=1 but torch is not a CUDA build or nvcc was not found")
    return have if flag == "auto" else flag == "1"


def _cuda_home():
    """The toolkit directory: $CUDA_HOME, else where nvcc really lives. torch guesses dirname(dirname(which
    nvcc)), which is wrong when nvcc on PATH is a wrapper script (here /usr/local/bin/nvcc ->
    /usr/local/cuda-13.0), and then neither cuda_runtime.h nor libcudart is found."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    import subprocess

    # `nvcc -dryrun` prints the directory of the real binary as `#$ _HERE_=<toolkit>/bin`.
    out = subprocess.run([nvcc, "-dryrun", "-x", "cu", "-E", os.devnull], capture_output=True, text=True).stderr
    for line in out.splitlines():
        if line.startswith("#$ _HERE_="):
            return os.path.dirname(line.split("=", 1)[1].strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


# Device code for the two archs we ship (A100, H100) plus sm_90 PTX for later GPUs; two archs keep
# the CUDA part of the build to a few minutes. tools/cuda_compile_report.py compiles with the same flags.
CUDA_ARCHS = ("80", "90")


def _nvcc_flags():
    return (["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
            + [f"-gencode=arch=compute_{a},code=sm_{a}" for a in CUDA_ARCHS]
            + [f"-gencode=arch=compute_{CUDA_ARCHS[-1]},code=compute_{CUDA_ARCHS[-1]}"])


def _nvidia_wheel_includes():
    """Headers shipped in the nvidia-* wheels (cuBLAS, cuSPARSE...), which the minimal toolkit lacks."""
    dirs = []
    for p in sys.path:
        for base in (os.path.join(p, "nvidia"),):
            dirs += glob.glob(os.path.join(base, "*", "include")) + glob.glob(os.path.join(base, "cu*", "include"))
    return sorted(set(d for d in dirs if os.path.isdir(d)))


def extensions():
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    cpp = _rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp")) + glob.glob(os.path.join(HERE, "csrc", "cpu", "**", "*.cpp"), recursive=True))
    cu = _rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "**", "*.cu"), recursive=True))
    with_cuda = _cuda_wanted(torch) and bool(cu)
    # -fopenmp: at::parallel_for expands to OpenMP pragmas in our objects (csrc/cpu/parallel.h).
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fopenmp"]
    ldflags = ["-fopenmp"]
    if os.environ.get("REGNET_KERNELS_ASAN") == "1":
        cxx += ["-fsanitize=address", "-fno-omit-frame-pointer", "-O1", "-g"]
        ldflags += ["-fsanitize=address"]
    macros = [("REGNET_WITH_CUDA", "1" if with_cuda else "0")]
    include_dirs = [os.path.join(HERE, "csrc")]
    if with_cuda:
        import torch.utils.cpp_extension as cpp_extension

        cpp_extension.CUDA_HOME = _cuda_home() or cpp_extension.CUDA_HOME
        # The CUDA ops' host wrappers (ATen, checks, registration) are .cpp files beside the kernels: the
        # host compiler builds them once, and nvcc's per-arch passes over the .cu files never parse ATen.
        cu_host = _rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "**", "*.cpp"), recursive=True))
        # torch's defaults add gencode flags for TORCH_CUDA_ARCH_LIST; pin ours.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", ";".join(f"{a[0]}.{a[1]}" for a in CUDA_ARCHS))
        return [CUDAExtension("regnet_kernels._C", cpp + cu_host + cu, include_dirs=include_dirs + _nvidia_wheel_includes(),
                              define_macros=macros, extra_compile_args={"cxx": cxx, "nvcc": _nvcc_flags()},
                              extra_link_args=ldflags)]
    return [CppExtension("regnet_kernels._C", cpp, include_dirs=include_dirs, define_macros=macros,
                         extra_compile_args={"cxx": cxx}, extra_link_args=ldflags)]


def main():
    from torch.utils.cpp_extension import BuildExtension

    setup(
        packages=find_packages(include=["regnet", "regnet.*", "regnet_kernels", "regnet_kernels.*"]),
        ext_modules=extensions(),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
