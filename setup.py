"""Builds fusedreg._C: CPU kernels always, CUDA kernels when torch is a CUDA build and nvcc is found.

FUSEDREG_NO_EXT=1 skips the extension (pure-Python install). FUSEDREG_CPU_ARCH=default|avx2|avx512 overrides the
vector ISA of the CPU kernels, which is otherwise the best this machine's CPU has (the build is for this machine).
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def cpu_arch_flags():
    arch = os.environ.get("FUSEDREG_CPU_ARCH")
    if arch is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = set(next((ln for ln in f if ln.startswith("flags")), "").split())
        except OSError:
            flags = set()
        if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c"} <= flags:
            arch = "avx512"
        elif {"avx2", "fma", "f16c"} <= flags:
            arch = "avx2"
        else:
            arch = "default"
    # A namespace name of our own keeps these at::vec instantiations apart from libtorch's.
    return {
        "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
                   "-DCPU_CAPABILITY=fusedreg_avx512", "-DCPU_CAPABILITY_AVX512"],
        "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=fusedreg_avx2", "-DCPU_CAPABILITY_AVX2"],
        "default": ["-DCPU_CAPABILITY=fusedreg_default"],
    }[arch]


def extensions():
    if os.environ.get("FUSEDREG_NO_EXT") == "1":
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    # No contraction to FMA: one rounding per operation, as eager PyTorch (fusedreg/reference.py) does.
    # -fno-math-errno: sqrt never sets errno, so loops calling it vectorize (the results are the same IEEE ones).
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno", "-Wno-unknown-pragmas"] + cpu_arch_flags()
    # One file per op stem in csrc/cpu and csrc/cuda, each registering its own op's kernel.
    sources = ["csrc/module.cpp", "csrc/check.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    kwargs = dict(name="fusedreg._C", extra_link_args=["-fopenmp"], include_dirs=[os.path.join(ROOT, "csrc")])
    if torch.version.cuda and CUDA_HOME and os.environ.get("FUSEDREG_NO_CUDA") != "1":
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        nvcc = ["-O3", "--fmad=false", "--expt-relaxed-constexpr"]
        ext = CUDAExtension(sources=sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
