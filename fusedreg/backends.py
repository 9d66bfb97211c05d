"""Chooses the backend that runs a fused step. The only place that knows which backends exist.

  cuda    the C++/CUDA extension (fusedreg._C) on CUDA tensors
  triton  Triton kernels on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)
  cpp     the C++ extension on CPU tensors
  torch   the pure-PyTorch reference (fusedreg.reference), any device

"auto" (the default) takes FUSEDREG_BACKEND when set, else: CUDA tensors -> cuda, else triton, else torch;
CPU tensors -> cpp, else torch.
"""
import importlib
import os
import warnings

import torch

from . import _ops, reference

NAMES = ("cuda", "triton", "cpp", "torch")
OPS = tuple(_ops.ARGS)

_native = None  # (module or None, reason it is missing)
_triton = None
_keys = set()  # the dispatch keys ("CPU", "CUDA") fusedreg._C has registered a kernel of every op for


def _load_native():
    global _native
    if _native is None and os.environ.get("FUSEDREG_NO_EXT") == "1":
        _native = (None, "FUSEDREG_NO_EXT=1 turns the C++ extension off")
    if _native is None:
        try:
            _native = (importlib.import_module("fusedreg._C"), "")
            _check_registered()
        except Exception as e:  # a missing or broken build must never break `import fusedreg`
            _native = (None, f"the C++ extension fusedreg._C did not load ({type(e).__name__}: {e})")
            warnings.warn(f"fusedreg: {_native[1]}; falling back to the reference backend", stacklevel=3)
    return _native


def _check_registered():
    """Every op needs a kernel on each device the extension was built for: one missing (a schema added to
    fusedreg/_ops.py before its CUDA kernel, say) makes the build broken, and says which."""
    for key in ("CPU", "CUDA"):
        have = [op for op in OPS if torch._C._dispatch_has_kernel_for_dispatch_key(f"{_ops.LIB}::{op}", key)]
        if have and len(have) < len(OPS):
            missing = [op for op in OPS if op not in have]
            raise RuntimeError(f"it registers {key} kernels for {have} but none for {missing}; every op in "
                               f"fusedreg/_ops.py needs one")
        if have:
            _keys.add(key)


def lists_ok():
    """fusedreg._C.lists_ok (the native fast path of functional.check_tensors), or None without the extension."""
    return getattr(_load_native()[0], "lists_ok", None)


def distinct_rows():
    """fusedreg._C.distinct_rows (whether a sparse grad's rows can skip the sort of coalesce()), or None."""
    return getattr(_load_native()[0], "distinct_rows", None)


def _load_triton():
    global _triton
    if _triton is None:
        try:
            _triton = (importlib.import_module("fusedreg.triton"), "")
        except Exception as e:
            _triton = (None, f"Triton is not usable here ({type(e).__name__}: {e})")
    return _triton


def _why_not(name):
    """'' when the backend can run on this install, else the reason it cannot."""
    if name == "torch":
        return ""
    if name in ("cpp", "cuda"):
        mod, why = _load_native()
        if mod is None:
            return why
        if name == "cpp":
            return "" if "CPU" in _keys else "fusedreg._C has no CPU kernels"
        if "CUDA" not in _keys:
            return "fusedreg._C was built without CUDA (no CUDA torch or nvcc at build time)"
        return "" if torch.cuda.is_available() else "no CUDA device is available"
    mod, why = _load_triton()
    if mod is None:
        return why
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        return ""
    return "no CUDA device, and TRITON_INTERPRET=1 is not set"


def available():
    """The backends this install can run, in auto's order of preference."""
    return [name for name in NAMES if not _why_not(name)]


def explain():
    """{backend: 'available' or why it is not}."""
    return {name: _why_not(name) or "available" for name in NAMES}


def check_name(backend):
    """Raise ValueError unless `backend` is 'auto' or one of NAMES (whether it can run here is resolve's job)."""
    if not isinstance(backend, str) or backend not in NAMES + ("auto",):
        raise ValueError(f"unknown backend {backend!r}; choose one of {('auto',) + NAMES}")


def resolve(backend, device):
    """The backend name that runs tensors on `device` when the caller asked for `backend`."""
    if backend == "auto":
        backend = os.environ.get("FUSEDREG_BACKEND", "auto") or "auto"
    check_name(backend)
    if backend == "auto":
        order = ("cuda", "triton", "torch") if device.type == "cuda" else ("cpp", "torch")
        return next(name for name in order if not _why_not(name))
    why = _why_not(backend)
    if why:
        raise RuntimeError(f"backend {backend!r} is not available: {why}")
    if backend == "cuda" and device.type != "cuda":
        raise RuntimeError(f"backend 'cuda' runs CUDA tensors, got tensors on {device}")
    if backend == "cpp" and device.type != "cpu":
        raise RuntimeError(f"backend 'cpp' runs CPU tensors, got tensors on {device}")
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"backend 'triton' runs CUDA tensors (CPU tensors need TRITON_INTERPRET=1), got {device}")
    return backend


def kernel(backend, op):
    """The callable that runs `op` ('sgd_', 'adam_', 'adagrad_') on `backend` (a resolved name)."""
    if backend == "torch":
        return getattr(reference, op)
    if backend == "triton":
        return _load_triton()[0].OPS[op]
    return getattr(torch.ops.fusedreg, op)


def _register_default():
    # Any device without a native kernel runs the reference through the same op name.
    for op in OPS:
        torch.library.impl(f"{_ops.LIB}::{op}", "default")(getattr(reference, op))


_register_default()
_load_native()
