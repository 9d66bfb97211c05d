"""Kernel-level tests of every backend's kernels (cpp: the C++ CPU kernels, triton: the Triton kernels, cuda: the
C++/CUDA kernels) against the reference kernels (fusedreg.reference), each test parametrized by backend; a backend
that cannot run here is skipped with the reason fusedreg.backends.explain() gives (cuda needs a GPU; triton on CPU
tensors needs TRITON_INTERPRET=1). Every call is built by tests/cases.py.

- every op x dtype x size x a grid of hyperparameters, several steps, every tensor a step writes compared
  (tolerances.STEP; bf16/fp16: at most twice the error of the reference run in that precision against fp64);
- exact-zero patterns, including values placed exactly at and a few ulps beside each threshold;
- found_inf (skips everything, also for fp64 flags below float32's range), grad_scale, lr_tensor, step counters;
- layouts the kernels must stage (transposed, strided, misaligned storage offsets on CUDA);
- argument errors as each backend reports them;
- one-backend checks: the C++ group prox does not depend on the thread count, CUDA vs the CPU kernel at sizes
  off the vector width and past 2^31 elements, Triton's plan cache, mixed dtypes and custom ops.

The reference always runs on CPU copies: on CUDA, torch divides by a 0-dim CPU scalar as a multiplication by its
reciprocal, so a CUDA run of the reference is not the formula the kernels implement.
"""
import importlib
import math
import os
import subprocess
import sys
import textwrap
import zlib

import pytest
import torch

from fusedreg import _ops, backends
from cases import OPS, REDUCED, build, compare, shrink_groups, unchanged
from tolerances import STEP, rel_err

BACKENDS = ("cpp", "triton", "cuda")
CUDA = torch.cuda.is_available()
DEVICE = {"cpp": "cpu", "triton": "cuda" if CUDA else "cpu", "cuda": "cuda"}
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
# Where the Triton interpreter's launch knobs (and the plan cache) live: the one place that names the module.
TRITON_KNOBS = "fusedreg.triton.launch"


def why_not(backend):
    why = backends.explain()[backend]
    return "" if why == "available" else why


def on(backend, *values):
    """A pytest.param of (backend, *values), skipped with the reason where the backend cannot run here."""
    why = why_not(backend)
    name = "-".join(str(v).removeprefix("torch.") for v in (backend, *values))
    return pytest.param(backend, *values, marks=pytest.mark.skipif(bool(why), reason=f"{backend}: {why}"), id=name)


def each(backends_=BACKENDS, *rows):
    """pytest.params of every backend x every row (a tuple of further arguments)."""
    return [on(b, *(r if isinstance(r, tuple) else (r,))) for b in backends_ for r in (rows or [()])]


def kernel(backend, op):
    return backends.kernel(backend, op)


def ref_kernel(op):
    return backends.kernel("torch", op)


@pytest.fixture(autouse=True)
def small_triton_chunks(monkeypatch):
    # Interpreter only (CPU tensors): several chunks per tensor, full and masked pieces in every chunk.
    try:
        knobs = importlib.import_module(TRITON_KNOBS)
    except Exception:  # Triton not importable: its tests skip
        return
    monkeypatch.setattr(knobs, "INTERPRET_BLOCK", 128)
    monkeypatch.setattr(knobs, "INTERPRET_CHUNK", 256)


def seeded(*key):
    return torch.Generator().manual_seed(zlib.crc32("-".join(map(str, key)).encode()))


# ---- the grid ------------------------------------------------------------------------------------------------

SIZES = {
    "0": [(0,)], "1": [(1,)], "7": [(7,)], "4097": [(4097,)], "2d": [(33, 65)],
    "many": [(n,) for n in (0, 1, 3, 16, 17, 31, 64, 100, 255, 1000, 4097, 0, 5)] + [(7, 9), (2, 3, 4)] * 10,
    "big": [((1 << 20) + 3,)],  # only in the slow tests
    # every size in one call (Triton's interpreter is slow: one call per case), and with groups longer than a block
    "mixed": [(0,), (1,), (7,), (100_003,) if CUDA else (1000,), (257, 129) if CUDA else (13, 17)],
    "over_320_chunks": [(330 * 65536 + 5,), (3,)],  # CUDA only
}
# group: rows and columns longer than a block, columns over several tiles of groups (not a multiple of one), tiny
# groups sharing a program, a conv weight
SIZES["group"] = SIZES["mixed"] + [(3, 4, 5), (2, 300), (300, 2), (40, 70), (3, 10), (6, 4, 3, 3)]
ONE_PER_CALL = ["0", "1", "7", "4097", "2d", "many"]

# name -> (op, hyperparameters by _ops.ARGS name). Three more keys: first (first_step on the first step only),
# scale (grads x1024 with grad_scale = 1024 and found_inf = 0, GradScaler's call) and tiny (every third group of
# the params scaled by 1e-3: cases.shrink_groups).
GRID = {
    "sgd_plain": ("sgd_", dict()),
    "sgd_momentum_l1": ("sgd_", dict(momentum=0.9, dampening=0.1, weight_decay=1e-2, first=True, l1=0.5)),
    "sgd_nesterov_l2_l0_max": ("sgd_", dict(momentum=0.9, nesterov=True, maximize=True, l2=0.3, l0=0.01)),
    "sgd_subgrad_nonneg_scaled": ("sgd_", dict(momentum=0.5, weight_decay=1e-3, first=True, l1=0.5,
                                               l1_subgradient=True, nonneg=True, scale=True)),
    "sgd_elastic_all": ("sgd_", dict(weight_decay=1e-2, l1=0.3, l2=0.2, l0=0.02, nonneg=True)),
    "sgd_group_rows_l1": ("sgd_", dict(momentum=0.9, weight_decay=1e-2, first=True, l1=0.1, group_l1=0.5)),
    "sgd_group_cols_scaled": ("sgd_", dict(l2=0.1, group_l1=0.5, group_dim=1, scale=True)),
    "adam_plain": ("adam_", dict()),
    "adam_l1": ("adam_", dict(weight_decay=1e-2, l1=0.7)),
    "adamw_l1_l2": ("adam_", dict(weight_decay=1e-2, decoupled=True, l1=0.7, l2=0.5)),
    "adam_amsgrad_max_subgrad_scaled": ("adam_", dict(beta2=0.99, weight_decay=1e-2, decoupled=True, amsgrad=True,
                                                      maximize=True, l1=0.1, l1_subgradient=True, scale=True)),
    "adam_bigw_l0_nonneg": ("adam_", dict(beta1=0.3, beta2=0.9, amsgrad=True, l0=0.5, nonneg=True)),
    "adamw_group_rows_l1": ("adam_", dict(weight_decay=1e-2, decoupled=True, l1=0.3, group_l1=0.3)),
    "adam_amsgrad_group_cols_l2_scaled": ("adam_", dict(beta2=0.99, amsgrad=True, l2=0.5, group_l1=0.3,
                                                        group_dim=1, scale=True)),
    "adagrad_plain": ("adagrad_", dict()),
    "adagrad_decay_l1_l2": ("adagrad_", dict(lr_decay=0.01, weight_decay=1e-2, l1=0.7, l2=0.5)),
    "adagrad_max_subgrad_l0_nonneg_scaled": ("adagrad_", dict(weight_decay=1e-3, maximize=True, l1=0.1,
                                                              l1_subgradient=True, l0=0.5, nonneg=True, scale=True)),
    "adagrad_group_rows_l1_l2": ("adagrad_", dict(lr_decay=0.01, l1=0.2, l2=0.5, group_l1=0.3)),
    "adagrad_group_cols_scaled": ("adagrad_", dict(weight_decay=1e-2, group_l1=0.3, group_dim=1, scale=True)),
    # l1_mode="decoupled": threshold lr*l1 (Adagrad clr*l1), group lasso in closed form with that step
    "sgd_decoupled_group_rows_l2": ("sgd_", dict(momentum=0.9, first=True, l1=0.3, l1_decoupled=True, l2=0.1,
                                                 group_l1=0.5)),
    "adamw_decoupled_l1_l0_nonneg": ("adam_", dict(weight_decay=1e-2, decoupled=True, l1=0.7, l1_decoupled=True,
                                                   l0=0.5, nonneg=True)),
    "adamw_decoupled_group_rows_tiny": ("adam_", dict(weight_decay=1e-2, decoupled=True, l1=0.3, l1_decoupled=True,
                                                      group_l1=0.3, tiny=True)),
    "adam_amsgrad_decoupled_group_cols_l2_scaled": ("adam_", dict(amsgrad=True, l1=0.3, l1_decoupled=True, l2=0.5,
                                                                  group_l1=0.3, group_dim=1, scale=True)),
    "adagrad_decoupled_group_rows_l1_l2_max": ("adagrad_", dict(lr_decay=0.01, maximize=True, l1=0.2,
                                                                l1_decoupled=True, l2=0.5, group_l1=0.3)),
    "adagrad_decoupled_group_cols_scaled_tiny": ("adagrad_", dict(l1=0.2, l1_decoupled=True, group_l1=0.3,
                                                                  group_dim=1, scale=True, tiny=True)),
    "ftrl_plain": ("ftrl_", dict()),
    "ftrl_l1_l2_shrink_beta": ("ftrl_", dict(beta=0.5, l2_shrinkage=0.05, l1=0.05, l2=0.1)),
    "ftrl_power_max_l0_nonneg_scaled": ("ftrl_", dict(lr_power=-0.7, maximize=True, l1=0.02, l0=1e-3,
                                                      nonneg=True, scale=True)),
    "ftrl_sgd_power_subgrad": ("ftrl_", dict(lr_power=0.0, l1=0.05, l1_subgradient=True, l2=0.1)),
    # FTRL's w is recomputed from z at every step (q ~ 10 here): a group_l1 that zeroes some groups is large
    "ftrl_group_rows_l1_l2_beta": ("ftrl_", dict(beta=0.5, l2_shrinkage=0.05, l1=0.05, l2=0.1, group_l1=8.0)),
    "ftrl_group_cols_power_l0_nonneg_scaled": ("ftrl_", dict(lr_power=-0.7, l1=0.02, l0=1e-3, nonneg=True,
                                                             group_l1=6.0, group_dim=1, scale=True)),
    # Lion moves every weight by lr: group_l1=2.0 zeroes the tiny groups (norm ~lr*sqrt(size)) and keeps the others
    "lion_plain": ("lion_", dict()),
    "lion_wd_l1_l0_nonneg": ("lion_", dict(weight_decay=0.1, l1=0.5, l1_decoupled=True, l0=1e-4, nonneg=True)),
    "lion_betas_max_subgrad_l2_scaled": ("lion_", dict(beta1=0.5, beta2=0.9, maximize=True, l1=0.5,
                                                       l1_subgradient=True, l2=0.3, scale=True)),
    "lion_group_rows_l1_tiny": ("lion_", dict(weight_decay=0.1, l1=0.3, l1_decoupled=True, group_l1=2.0, tiny=True)),
    "lion_group_cols_l2_scaled_tiny": ("lion_", dict(l1=0.3, l1_decoupled=True, l2=0.1, group_l1=2.0, group_dim=1,
                                                     scale=True, tiny=True)),
    "muon_momentum_nesterov": ("muon_momentum_", dict()),
    "muon_momentum_plain_max_subgrad_scaled": ("muon_momentum_", dict(momentum=0.3, nesterov=False, maximize=True,
                                                                      l1=0.5, l1_subgradient=True, scale=True)),
    "muon_plain": ("muon_", dict()),
    "muon_decay_ratio_l1_l0_nonneg": ("muon_", dict(lr_ratio=1.7, weight_decay=0.1, l1=0.5, l0=0.01, nonneg=True)),
    "muon_group_rows_l1_l2": ("muon_", dict(lr_ratio=0.5, weight_decay=0.1, l1=0.1, l2=0.1, group_l1=0.5)),
    "muon_group_cols_subgrad_scaled_tiny": ("muon_", dict(l1=0.5, l1_subgradient=True, group_l1=0.5, group_dim=1,
                                                          scale=True, tiny=True)),
}
# name -> (op, hyperparameters, size): every size in one call. These run on every backend (on Triton at
# float32/bf16/fp16, or float64 only for the f64_ ones); GRID runs size by size on cpp and cuda only, where a
# call costs little.
MIXED_GRID = {
    "sgd_wd": ("sgd_", dict(weight_decay=0.01), "mixed"),
    "sgd_momentum_first": ("sgd_", dict(momentum=0.9, dampening=0.1, weight_decay=0.01, first=True), "mixed"),
    "sgd_nesterov_l1_l2": ("sgd_", dict(momentum=0.9, nesterov=True, l1=0.05, l2=0.02), "mixed"),
    "sgd_max_elastic_nonneg": ("sgd_", dict(maximize=True, l1=0.05, l2=0.1, l0=0.002, nonneg=True), "mixed"),
    "sgd_subgrad_scaled": ("sgd_", dict(momentum=0.5, l1=0.05, l1_subgradient=True, weight_decay=0.01,
                                        grad_scale=1024.0), "mixed"),
    "adam_default": ("adam_", dict(), "mixed"),
    "adam_amsgrad_l1": ("adam_", dict(amsgrad=True, weight_decay=0.01, l1=0.01), "mixed"),
    "adamw_l1_l2_l0": ("adam_", dict(decoupled=True, weight_decay=0.1, l1=0.01, l2=0.1, l0=1e-4), "mixed"),
    "adam_max_subgrad_nonneg_scaled": ("adam_", dict(maximize=True, l1=0.01, l1_subgradient=True, nonneg=True,
                                                     beta1=0.6, grad_scale=1024.0), "mixed"),
    "adagrad_default": ("adagrad_", dict(), "mixed"),
    "adagrad_decay_l1_l2": ("adagrad_", dict(lr_decay=0.01, weight_decay=0.01, l1=0.01, l2=0.1), "mixed"),
    "adagrad_max_l0_nonneg_scaled": ("adagrad_", dict(maximize=True, l0=1e-3, nonneg=True, grad_scale=8.0),
                                     "mixed"),
    "adagrad_subgrad_eps": ("adagrad_", dict(l1=0.02, l1_subgradient=True, eps=1e-3), "mixed"),
    # group lasso: a second kernel after the update (on Triton one program per tile of rows, group_dim 0, or columns, 1)
    "sgd_group_rows": ("sgd_", dict(momentum=0.9, l1=0.02, group_l1=0.3), "group"),
    "sgd_group_cols_scaled": ("sgd_", dict(l2=0.1, group_l1=2.0, group_dim=1, grad_scale=1024.0), "group"),
    "adamw_group_rows": ("adam_", dict(decoupled=True, weight_decay=0.1, l1=0.01, group_l1=0.05), "mixed"),
    "adam_amsgrad_group_cols": ("adam_", dict(amsgrad=True, l2=0.1, group_l1=0.5, group_dim=1), "group"),
    # every third group tiny: those zeroed, the others kept
    "adamw_group_rows_tiny": ("adam_", dict(decoupled=True, weight_decay=0.1, group_l1=2.0, tiny=True), "group"),
    "adam_amsgrad_group_cols_tiny": ("adam_", dict(amsgrad=True, l2=0.1, group_l1=2.0, group_dim=1, tiny=True),
                                     "group"),
    "adagrad_group_rows": ("adagrad_", dict(l1=0.01, l2=0.1, group_l1=0.05), "mixed"),
    "adagrad_group_cols": ("adagrad_", dict(group_l1=0.5, group_dim=1), "group"),
    "ftrl_default": ("ftrl_", dict(), "mixed"),
    "ftrl_l1_l2_shrink_beta": ("ftrl_", dict(beta=0.5, l2_shrinkage=0.05, l1=0.05, l2=0.1), "mixed"),
    "ftrl_power_max_l0_nonneg_scaled": ("ftrl_", dict(lr_power=-0.7, maximize=True, l1=0.02, l0=1e-3, nonneg=True,
                                                      grad_scale=8.0), "mixed"),
    "ftrl_sgd_power_subgrad": ("ftrl_", dict(lr_power=0.0, l1=0.05, l1_subgradient=True), "mixed"),
    "f64_ftrl": ("ftrl_", dict(lr_power=-0.6, beta=0.1, l2_shrinkage=0.01, l1=0.05, l2=0.1, l0=1e-3), "mixed"),
    "ftrl_group_rows": ("ftrl_", dict(beta=0.5, l1=0.02, l2=0.1, group_l1=6.0), "group"),
    "ftrl_group_cols_power_scaled": ("ftrl_", dict(lr_power=-0.6, maximize=True, l1=0.02, nonneg=True,
                                                   group_l1=6.0, group_dim=1, grad_scale=8.0), "group"),
    "f64_ftrl_group_cols": ("ftrl_", dict(lr_power=-0.6, beta=0.1, l1=0.02, l2=0.1, group_l1=8.0, group_dim=1),
                            "group"),
    "adamw_decoupled_l1_l0": ("adam_", dict(decoupled=True, weight_decay=0.1, l1=1.0, l1_decoupled=True, l0=1e-4),
                              "mixed"),
    "adamw_decoupled_group_rows_tiny": ("adam_", dict(decoupled=True, weight_decay=0.1, l1=0.5, l1_decoupled=True,
                                                      group_l1=2.0, tiny=True), "group"),
    "adam_decoupled_group_cols_l2_scaled": ("adam_", dict(amsgrad=True, l1=0.5, l1_decoupled=True, l2=0.1,
                                                          group_l1=2.0, group_dim=1, grad_scale=1024.0), "group"),
    "adagrad_decoupled_group_rows_l2": ("adagrad_", dict(lr_decay=0.01, l1=0.05, l1_decoupled=True, l2=0.1,
                                                         group_l1=0.5), "group"),
    "adagrad_decoupled_group_cols_tiny": ("adagrad_", dict(l1=0.05, l1_decoupled=True, group_l1=2.0, group_dim=1,
                                                           tiny=True), "group"),
    "f64_adamw_decoupled_group_cols": ("adam_", dict(decoupled=True, weight_decay=0.1, l1=0.5, l1_decoupled=True,
                                                     l0=1e-4, group_l1=1.0, group_dim=1), "group"),
    "f64_sgd": ("sgd_", dict(momentum=0.9, weight_decay=0.01, l1=0.05, l2=0.1), "mixed"),
    "f64_adamw": ("adam_", dict(amsgrad=True, decoupled=True, weight_decay=0.1, l1=0.01, l0=1e-4), "mixed"),
    "f64_adagrad": ("adagrad_", dict(lr_decay=0.01, l1=0.01, l2=0.1, l0=1e-3), "mixed"),
    "f64_adam_group_cols": ("adam_", dict(l1=0.01, l2=0.1, group_l1=0.2, group_dim=1), "group"),
    "f64_adagrad_group_rows": ("adagrad_", dict(l1=0.01, group_l1=0.2), "group"),
    "f64_sgd_group_cols": ("sgd_", dict(momentum=0.9, l2=0.1, group_l1=1.0, group_dim=1), "group"),
    "f64_adam_group_rows_tiny": ("adam_", dict(l1=0.01, group_l1=2.0, tiny=True), "group"),
    "lion_default": ("lion_", dict(), "mixed"),
    "lion_wd_l1_l0_nonneg": ("lion_", dict(weight_decay=0.1, l1=0.5, l1_decoupled=True, l0=1e-4, nonneg=True),
                             "mixed"),
    "lion_betas_max_subgrad_l2_scaled": ("lion_", dict(beta1=0.5, beta2=0.9, maximize=True, l1=0.5,
                                                       l1_subgradient=True, l2=0.1, grad_scale=1024.0), "mixed"),
    "lion_group_rows_tiny": ("lion_", dict(weight_decay=0.1, l1=0.3, l1_decoupled=True, group_l1=2.0, tiny=True),
                             "group"),
    "lion_group_cols_scaled_tiny": ("lion_", dict(l1=0.3, l1_decoupled=True, group_l1=2.0, group_dim=1,
                                                  grad_scale=8.0, tiny=True), "group"),
    "f64_lion_group_cols": ("lion_", dict(weight_decay=0.1, l1=0.3, l1_decoupled=True, l0=1e-4, group_l1=1.0,
                                          group_dim=1), "group"),
    "muon_momentum_nesterov_subgrad": ("muon_momentum_", dict(l1=0.05, l1_subgradient=True), "mixed"),
    "muon_momentum_plain_max_scaled": ("muon_momentum_", dict(momentum=0.9, nesterov=False, maximize=True,
                                                              grad_scale=1024.0), "mixed"),
    "muon_decay_l1_l0_nonneg": ("muon_", dict(lr_ratio=1.5, weight_decay=0.1, l1=0.05, l0=1e-4, nonneg=True),
                                "mixed"),
    "muon_group_rows_l1": ("muon_", dict(weight_decay=0.1, l1=0.05, group_l1=0.3), "group"),
    "muon_group_cols_tiny": ("muon_", dict(lr_ratio=2.0, l2=0.1, group_l1=2.0, group_dim=1, tiny=True), "group"),
    "f64_muon_momentum": ("muon_momentum_", dict(momentum=0.8, l1=0.05, l1_subgradient=True), "mixed"),
    "f64_muon_group_cols": ("muon_", dict(lr_ratio=1.5, weight_decay=0.1, l1=0.05, group_l1=1.0, group_dim=1),
                            "group"),
}
CONFIGS = {**{k: (op, hp) for k, (op, hp) in GRID.items()},
           **{"mixed_" + k: (op, hp) for k, (op, hp, _) in MIXED_GRID.items()}}
BIG = ["sgd_momentum_l1", "adamw_l1_l2", "adagrad_decay_l1_l2"]
STEPS = 3


def _matrix():
    rows = []
    for backend in BACKENDS:
        if backend != "triton":
            rows += [(backend, c, d, s) for c in GRID for d in DTYPES for s in ONE_PER_CALL]
        for name, (_, _, size) in MIXED_GRID.items():
            if backend != "triton":
                dtypes = DTYPES
            else:
                dtypes = [torch.float64] if name.startswith("f64_") else [torch.float32, torch.bfloat16,
                                                                           torch.float16]
            rows += [(backend, "mixed_" + name, d, size) for d in dtypes]
    return [on(*r) for r in rows]


def make(config, dtype, shapes, gen):
    """(case, first): the Case of a grid config, and whether its first step is torch.optim.SGD's first."""
    op, hp = CONFIGS[config]
    hp = dict(hp)
    first, scale, tiny = hp.pop("first", False), hp.pop("scale", False), hp.pop("tiny", False)
    gs = hp.pop("grad_scale", 1024.0 if scale else None)
    case = build(op, shapes, dtype, gen=gen, scale=gs, **hp)
    if tiny:
        shrink_groups(case)
    if "grad_scale" in CONFIGS[config][1]:  # Triton's grid: grad_scale without found_inf
        case.kw["found_inf"] = None
    return case, first


def run(backend, case, gen, first=False, steps=STEPS):
    """Steps `case` on the backend (on its device) and on the reference (CPU, and fp64 for bf16/fp16) with the
    same grads; returns (mine, ref, ref64)."""
    op = case.op
    mine, ref = case.clone(device=DEVICE[backend]), case.clone()
    ref64 = case.clone(torch.float64) if case.dtype in REDUCED else None
    for k in range(steps):
        grads = case.new_grads(gen)
        over = {"first_step": True} if first and k == 0 else {}
        mine.call(kernel(backend, op), grads=[g.to(DEVICE[backend]) for g in grads], **over)
        ref.call(ref_kernel(op), grads=grads, **over)
        if ref64 is not None:
            ref64.call(ref_kernel(op), grads=[g.double() for g in grads], **over)
    return mine, ref, ref64


@pytest.mark.parametrize("backend,config,dtype,size", _matrix())
def test_matches_reference(backend, config, dtype, size):
    gen = seeded(config, size)
    case, first = make(config, dtype, SIZES[size], gen)
    compare(*run(backend, case, gen, first))


@pytest.mark.slow
@pytest.mark.parametrize("backend,config,dtype", [on(b, c, d) for b in ("cpp", "cuda") for c in BIG for d in DTYPES])
def test_matches_reference_big(backend, config, dtype):
    gen = seeded(config, "big")
    case, first = make(config, dtype, SIZES["big"], gen)
    compare(*run(backend, case, gen, first))


# ---- sparse grads (rows) ---------------------------------------------------------------------------------------

# Params of 1, 2 and 3 dims (and one with empty rows); per param the rows the grad holds, distinct as the ops take
# them (duplicates are summed before, by fusedreg.functional: tests/test_sparse.py).
SPARSE_SHAPES = [(9,), (7, 5), (6, 3, 4), (5, 0), (1,)]
SPARSE_ROWS = {
    "some": [[0, 4, 8], [1, 2, 6], [3, 5], [0, 4], [0]],
    "none": [[], [], [], [], []],
    "all": [range(9), range(7), range(6), range(5), range(1)],
    "unsorted": [[8, 0, 4, 5], [6, 1, 2], [5, 0, 3], [4, 0], [0]],
}
SPARSE_GRID = {
    "sgd_plain": ("sgd_", dict()),
    "sgd_l1_l2_l0_nonneg_max_scaled": ("sgd_", dict(l1=0.3, l2=0.2, l0=0.01, nonneg=True, maximize=True,
                                                    grad_scale=1024.0)),
    "sgd_momentum_subgrad": ("sgd_", dict(momentum=0.9, nesterov=True, l1=0.1, l1_subgradient=True)),
    "adagrad_plain": ("adagrad_", dict()),
    "adagrad_decay_l1_l2_l0_nonneg": ("adagrad_", dict(lr_decay=0.01, l1=0.3, l2=0.2, l0=0.01, nonneg=True)),
    "adagrad_max_scaled_eps": ("adagrad_", dict(maximize=True, eps=1e-3, grad_scale=8.0)),
    "adagrad_decoupled_l1_l2_l0_scaled": ("adagrad_", dict(lr_decay=0.01, l1=0.3, l1_decoupled=True, l2=0.2, l0=0.01,
                                                           grad_scale=8.0)),
    "sgd_decoupled_l1_nonneg": ("sgd_", dict(l1=0.3, l1_decoupled=True, nonneg=True)),
    "ftrl_plain": ("ftrl_", dict()),
    "ftrl_l1_l2_shrink_beta_l0_nonneg": ("ftrl_", dict(beta=0.5, l2_shrinkage=0.05, l1=0.05, l2=0.1, l0=1e-3,
                                                       nonneg=True)),
    "ftrl_power_max_scaled_subgrad": ("ftrl_", dict(lr_power=-0.7, maximize=True, l1=0.02, l1_subgradient=True,
                                                    grad_scale=8.0)),
}


def sparse_case(config, present, dtype, gen):
    op, hp = SPARSE_GRID[config]
    hp = dict(hp)
    gs = hp.pop("grad_scale", None)
    return build(op, SPARSE_SHAPES, dtype, gen=gen, scale=gs, rows=SPARSE_ROWS[present], **hp)


def absent_rows_unchanged(case, before):
    """Every row of a param and of its state that the grads do not hold is bit for bit what it was."""
    for name, tensors in case.state().items():
        if name == "state_steps":
            continue
        for i, (a, b) in enumerate(zip(tensors, before.lists[name], strict=True)):
            keep = torch.ones(a.shape[0], dtype=torch.bool)
            keep[case.kw["rows"][i].cpu()] = False
            assert torch.equal(a.cpu()[keep], b.cpu()[keep]), f"{name}[{i}]: a row the grad lacks changed"


@pytest.mark.parametrize("backend,config,present,dtype", [
    on(b, c, r, d) for b in BACKENDS for c in SPARSE_GRID for r in SPARSE_ROWS
    for d in (DTYPES if b != "triton" else (torch.float32, torch.bfloat16))])
def test_sparse_rows_match_reference(backend, config, present, dtype):
    gen = seeded(config, present, "sparse")
    case = sparse_case(config, present, dtype, gen)
    mine, ref, ref64 = run(backend, case, gen)
    compare(mine, ref, ref64)
    absent_rows_unchanged(mine, case)
    absent_rows_unchanged(ref, case)


@pytest.mark.parametrize("backend,config", each(("torch",) + BACKENDS, *SPARSE_GRID))
def test_sparse_step_of_all_rows_is_the_dense_step(backend, config):
    # The sparse path against the dense one of the same kernel: every row present is the dense step, bit for bit.
    device = DEVICE.get(backend, "cpu")
    gen = seeded(config, "all-rows")
    sparse = sparse_case(config, "all", torch.float32, gen).clone(device=device)
    dense = sparse.clone()
    dense.kw["rows"] = None
    for _ in range(2):
        grads = [g.to(device) for g in sparse.new_grads(gen)]
        sparse.call(kernel(backend, sparse.op), grads=grads)
        dense.call(kernel(backend, dense.op), grads=grads)
    for name, tensors in sparse.state().items():
        for a, b in zip(tensors, dense.lists[name]):
            assert torch.equal(a, b), name


@pytest.mark.parametrize("backend,op", each(("cpp", "triton"), "sgd_", "adagrad_", "ftrl_"))
def test_bad_rows_are_refused_before_anything_changes(backend, op):
    gen = seeded(op, "bad-rows")
    case = build(op, [(6, 2), (4,)], gen=gen, rows=[[1, 3], [2]], device=DEVICE[backend])
    before = case.clone()
    dev = DEVICE[backend]
    ix = lambda *v, **kw: torch.tensor(v, dtype=kw.get("dtype", torch.int64), device=dev)  # noqa: E731
    bad = {
        "repeated": ([ix(3, 3), ix(2)], None, "distinct"),
        "out of range": ([ix(1, 6), ix(2)], None, "distinct"),
        "negative": ([ix(-1, 3), ix(2)], None, "distinct"),
        "int32": ([ix(1, 3, dtype=torch.int32), ix(2)], None, "int64"),
        "one list short": ([ix(1, 3)], None, "rows"),
        "values of the wrong shape": ([ix(1, 3, 4), ix(2)], None, "values"),
        "group lasso": ([ix(1, 3), ix(2)], dict(group_l1=0.1), "group"),
    }
    for what, (rows, over, words) in bad.items():
        with pytest.raises(RuntimeError, match=words):
            case.call(kernel(backend, op), rows=rows, **(over or {}))
        unchanged(case, before)


# ---- found_inf, grad_scale, lr_tensor, step counters -----------------------------------------------------------

@pytest.mark.parametrize("backend,config,dtype", [
    on(b, c, d) for b in BACKENDS for c in GRID
    for d in (DTYPES if b != "triton" else (torch.float32,))])  # the interpreter is slow
def test_found_inf_changes_nothing(backend, config, dtype):
    gen = seeded(config, "found_inf")
    # Triton's interpreter still launches the group programs that found_inf stops: fewer tensors there
    case, _ = make(config, dtype, SIZES["many" if backend != "triton" else "mixed"], gen)
    mine = case.clone(device=DEVICE[backend])
    before = mine.clone()
    over = {"first_step": True} if case.op == "sgd_" else {}
    # the config's grad_scale, or none and then one (found_inf is read with and without a scale)
    gs = mine.kw["grad_scale"]
    for gs in (gs,) if gs is not None else (None, torch.tensor(2.0, device=DEVICE[backend])):
        for flag in (1.0, math.inf, math.nan):
            mine.call(kernel(backend, case.op), grad_scale=gs,
                      found_inf=torch.tensor(flag, dtype=torch.float32, device=DEVICE[backend]), **over)
            unchanged(mine, before)


@pytest.mark.parametrize("backend,op", each(BACKENDS, *OPS))
def test_found_inf_zero_runs_the_step(backend, op):
    decay = {"ftrl_": {"l2_shrinkage": 0.1}, "muon_momentum_": {}}.get(op, {"weight_decay": 0.1})
    case = build(op, SIZES["mixed"], torch.float32, device=DEVICE[backend], gen=seeded(op, "fi0"), scale=2.0,
                 l1=0.01, **({"momentum": 0.9} if op == "sgd_" else {}), **decay)
    before = case.clone()
    case.call(kernel(backend, op))
    written = "momentum_buffers" if op == "muon_momentum_" else "params"  # muon_momentum_ only reads the params
    assert not torch.equal(case.lists[written][-1], before.lists[written][-1])
    for name in ("state_steps",) if op in ("adam_", "adagrad_") else ():
        assert all(s.item() == b.item() + 1 for s, b in zip(case.lists[name], before.lists[name]))


# The hyperparameters of the CUDA-vs-CPU-kernel tests: every penalty that can run together, group lasso included.
HP = {
    "sgd_": dict(momentum=0.9, dampening=0.1, weight_decay=1e-2, l1=0.5, l2=0.1, l0=0.01, group_l1=0.05),
    "adam_": dict(weight_decay=1e-2, decoupled=True, amsgrad=True, l1=0.7, l2=0.3, l0=0.1, group_l1=0.05,
                  group_dim=1),
    "adagrad_": dict(lr_decay=0.01, weight_decay=1e-2, maximize=True, l1=0.7, l2=0.3, nonneg=True,
                     group_l1=0.05),
    "ftrl_": dict(lr_power=-0.6, beta=0.2, l2_shrinkage=0.01, maximize=True, l1=0.2, l2=0.3, l0=1e-3, nonneg=True,
                  group_l1=3.0, group_dim=1),
    "lion_": dict(beta1=0.8, beta2=0.95, weight_decay=0.1, maximize=True, l1=0.5, l1_decoupled=True, l2=0.3, l0=1e-4,
                  nonneg=True, group_l1=0.5, group_dim=1),
    "muon_momentum_": dict(momentum=0.9, maximize=True, l1=0.2, l1_subgradient=True),
    "muon_": dict(lr_ratio=1.5, weight_decay=1e-2, l1=0.2, l2=0.3, l0=1e-3, nonneg=True, group_l1=0.05),
}
# The ops with an lr (muon_momentum_ has none).
LR_OPS = [op for op in OPS if "lr" in _ops.defaults(op) or any(a.name == "lr" for a in _ops.ARGS[op])]


@pytest.mark.parametrize("backend,op", each(BACKENDS, *OPS))
def test_float64_grad_scale_and_found_inf_are_read_in_full(backend, op):
    # fp64 params: a scale float32 cannot hold is used in full (as the reference does), and a nonzero found_inf
    # below float32's range still skips the step.
    gen = seeded(op, "f64amp")
    case = build(op, SIZES["many" if backend != "triton" else "mixed"], torch.float64, gen=gen, scale=1024.0,
                 **HP[op])
    case.kw.update(grad_scale=torch.tensor(1000.1234567, dtype=torch.float64),
                   found_inf=torch.tensor(0.0, dtype=torch.float64))
    mine, ref, _ = run(backend, case, gen, steps=1)
    compare(mine, ref)
    before = mine.clone()
    mine.call(kernel(backend, op), found_inf=torch.tensor(1e-300, dtype=torch.float64, device=DEVICE[backend]))
    unchanged(mine, before)


@pytest.mark.parametrize("backend,op", each(BACKENDS, *LR_OPS))
def test_lr_tensor_steps_like_the_float_lr(backend, op):
    gen = seeded(op, "lr")
    shapes = SIZES["many"] + [(33, 65)] if backend != "triton" else SIZES["mixed"]
    case = build(op, shapes, torch.float32, gen=gen, scale=1024.0, **HP[op])
    mine, ref = case.clone(device=DEVICE[backend]), case.clone()
    lr = torch.tensor(case.kw["lr"], dtype=torch.float64, device=DEVICE[backend])
    for _ in range(3):
        grads = case.new_grads(gen)
        mine.call(kernel(backend, op), grads=[g.to(DEVICE[backend]) for g in grads], lr=math.nan, lr_tensor=lr)
        ref.call(ref_kernel(op), grads=grads)
    compare(mine, ref)


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_steps_advance_on_the_device_once_per_call(backend):
    shapes = (SIZES["over_320_chunks"] if backend == "cuda" else []) + SIZES["many"]
    case = build("adam_", shapes, torch.float32, device=DEVICE[backend], gen=seeded("steps"))
    steps0 = [s.clone() for s in case.lists["state_steps"]]
    case.call(kernel(backend, "adam_"))
    for s, s0 in zip(case.lists["state_steps"], steps0):
        assert s.device.type == DEVICE[backend] and s.item() == s0.item() + 1


# ---- exact zeros at the thresholds -----------------------------------------------------------------------------

def ulp_neighbours(x, dtype, k=3):
    """x and its k nearest representable neighbours on each side in dtype, both signs."""
    if dtype in REDUCED:  # nextafter in fp32 moves less than one reduced ulp: step by the reduced ulp instead
        e = torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(x))
        v = torch.cat([torch.tensor([x + j * e], dtype=dtype) for j in range(-k, k + 1)])
        return torch.cat([v, -v])
    t = torch.tensor([x], dtype=dtype)
    vals, up, down = [t], t.clone(), t.clone()
    for _ in range(k):
        up = torch.nextafter(up, torch.tensor([math.inf], dtype=dtype))
        down = torch.nextafter(down, torch.tensor([-math.inf], dtype=dtype))
        vals += [up, down]
    v = torch.cat(vals)
    return torch.cat([v, -v])


THRESHOLDS = {
    # name: (op, penalty, threshold), chosen so that the threshold is exact: SGD lr = 1/2, thr = lr*l1 = 1/8,
    # l0: sqrt(2*lr*l0) = 1/8; Adam/Adagrad at a zero grad and zero state: denom = eps = 2^-8,
    # thr = lr*l1/eps = 1/4 and sqrt(2*lr*l0/eps) = 1.
    "sgd_l1": ("sgd_", dict(l1=0.25), 0.125),
    "sgd_l0": ("sgd_", dict(l0=1 / 64), 0.125),
    "sgd_l1_nonneg": ("sgd_", dict(l1=0.25, nonneg=True), 0.125),
    "adam_l1": ("adam_", dict(l1=2.0 ** -6), 0.25),
    "adam_l0": ("adam_", dict(l0=2.0 ** -5), 1.0),
    "adagrad_l1": ("adagrad_", dict(l1=2.0 ** -6), 0.25),
    "adagrad_l0": ("adagrad_", dict(l0=2.0 ** -5), 1.0),
    # decoupled: thr = lr*l1 = 1/8 whatever the denominator
    "adam_l1_decoupled": ("adam_", dict(l1=2.0, l1_decoupled=True), 0.125),
    "adagrad_l1_decoupled": ("adagrad_", dict(l1=2.0, l1_decoupled=True), 0.125),
}
EXACT_HP = {"sgd_": dict(lr=0.5, momentum=0.9, first_step=True),
            "adam_": dict(lr=2.0 ** -4, eps=2.0 ** -8, decoupled=True),
            "adagrad_": dict(lr=2.0 ** -4, eps=2.0 ** -8)}


@pytest.mark.parametrize("backend,name,dtype,with_grad", [
    on(b, n, d, w) for b in BACKENDS for n in THRESHOLDS for d in DTYPES for w in (False, True)
    if not w or THRESHOLDS[n][0] == "sgd_"])  # the exact construction with a nonzero grad is SGD's
def test_exact_zeros_at_threshold(backend, name, dtype, with_grad):
    op, pen, thr = THRESHOLDS[name]
    v = ulp_neighbours(thr, dtype)
    # SGD (lr = 1/2): every other element gets g = -sign(v)*2*thr, so p = v - sign(v)*thr is a few ulps of thr
    # (exact) and p - lr*g lands exactly on v. Adam/Adagrad: g = 0 leaves p unchanged (v = p).
    lr = EXACT_HP["sgd_"]["lr"]
    if with_grad:
        g = torch.where(torch.arange(v.numel()) % 2 == 1, -torch.sign(v.double()) * thr / lr, 0.0)
    else:
        g = torch.zeros(v.numel(), dtype=torch.float64)
    p = (v.double() + lr * g).to(dtype)
    g = g.to(dtype)
    assert torch.equal(p.double() - lr * g.double(), v.double()), "the construction must be exact"
    case = build(op, [p.shape, (100,)], dtype, gen=seeded(name), init=0.0, **EXACT_HP[op], **pen)
    case.lists["params"][0], case.lists["grads"][0] = p, g  # the second tensor stays random, in the same call
    mine, ref = case.clone(device=DEVICE[backend]), case.clone()
    mine.call(kernel(backend, op))
    ref.call(ref_kernel(op))
    zeros = ref.params[0] == 0
    assert 0 < zeros.sum() < zeros.numel(), "the construction must put values on both sides of the threshold"
    for a, b in zip(mine.params, ref.params):
        a = a.cpu()
        assert torch.equal(a == 0, b == 0)
        assert rel_err(a, b) <= STEP[dtype]
    assert torch.equal(mine.params[0].cpu(), ref.params[0])


def _ulps(x, dtype, k):
    """x (positive, representable in dtype) moved by k ulps of dtype."""
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[dtype]
    return (torch.tensor([x], dtype=dtype).view(bits) + k).view(dtype)[0]


def _around(thr, dtype):
    """thr rounded to dtype, -3..+3 ulps around it, both signs, and zeros."""
    base = float(torch.tensor(thr, dtype=torch.float32).to(dtype))
    vals = torch.stack([_ulps(base, dtype, k) for k in range(-3, 4)])
    return torch.cat([vals, -vals, torch.tensor([0.0, -0.0], dtype=dtype)])


def _threshold_case(op, penalty):
    """(hyperparameters, state values, thr): a zero grad and states for which the update leaves p unchanged and
    the denominator is exact."""
    f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    if op == "sgd_":
        if penalty == "l1":
            return dict(lr=0.1, l1=0.3, l2=0.5), {}, f32(0.1 * 0.3)
        return dict(lr=0.25, l0=0.125), {}, torch.sqrt(f32(2 * 0.25 * 0.125))  # 0.25, exact
    if op == "adam_":  # m = 0, v = 0.5*0.5 = 0.25 -> sqrt exact; step 1: bc2 = 0.5
        denom = torch.sqrt(f32(0.25)) / f32(math.sqrt(0.5)) + f32(1e-3)
        return (dict(lr=0.1, beta2=0.5, eps=1e-3, l1=0.3), {"exp_avgs": 0.0, "exp_avg_sqs": 0.5},
                f32(0.1 * 0.3) / denom)
    if penalty == "l1":  # sum 0.25 -> denom = 0.5 + eps; step 1: clr = lr
        return (dict(lr=0.1, eps=1e-3, l1=0.3, lr_decay=0.5), {"state_sums": 0.25},
                f32(0.1 * 0.3) / (f32(0.5) + f32(1e-3)))
    return dict(lr=0.25, eps=0.5, l0=0.125), {"state_sums": 0.25}, torch.sqrt(f32(2 * 0.25 * 0.125))  # denom 1


@pytest.mark.parametrize("backend,op,penalty,dtype", [
    on(b, op, pen, d) for b in BACKENDS
    for op, pen in (("sgd_", "l1"), ("sgd_", "l0"), ("adam_", "l1"), ("adagrad_", "l1"), ("adagrad_", "l0"))
    for d in (torch.float32, torch.bfloat16, torch.float16)])
def test_exact_at_threshold_in_float32_arithmetic(backend, op, penalty, dtype):
    hp, init, thr = _threshold_case(op, penalty)
    p = _around(thr.item(), dtype)
    case = build(op, [p.shape], dtype, init={**init, "state_steps": 0.0}, **hp)
    case.lists["params"][0], case.lists["grads"][0] = p, torch.zeros_like(p)
    mine, ref = case.clone(device=DEVICE[backend]), case.clone()
    mine.call(kernel(backend, op))
    ref.call(ref_kernel(op))
    a, b = mine.params[0].cpu(), ref.params[0]
    assert torch.equal(a, b), (p, a, b)
    # and the reference does what the threshold says (a check of the construction)
    zero = p.float().abs() <= thr
    assert torch.equal(b == 0, zero), (p, b, thr)
    if dtype == torch.float32:
        assert zero.sum() == 2 * 4 + 2 and (~zero).sum() == 2 * 3  # on and below: zero; above: kept


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_nonneg_at_zero(backend):
    p = torch.tensor([-1e-30, -0.0, 0.0, 1e-30, -1.0, 1.0])
    case = build("sgd_", [p.shape], torch.float32, nonneg=True)
    case.lists["params"][0], case.lists["grads"][0] = p, torch.zeros(6)
    mine, ref = case.clone(device=DEVICE[backend]), case.clone()
    mine.call(kernel(backend, "sgd_"))
    ref.call(ref_kernel("sgd_"))
    assert torch.equal(mine.params[0].cpu(), ref.params[0])
    assert torch.equal(ref.params[0] == 0, torch.tensor([True, True, True, False, True, False]))


# ---- layouts --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,dtype", each(BACKENDS, torch.float32, torch.bfloat16))
def test_non_contiguous_and_mixed_layouts(backend, dtype):
    # Permuted and strided param views (the untouched columns of the base must stay), contiguous grads whose
    # strides differ from the params'.
    gen = seeded("layouts")
    dev = DEVICE[backend]
    bases = [torch.randn(40, 30, generator=gen).to(dtype).to(dev) for _ in range(2)]
    ref_bases = [b.cpu().clone() for b in bases]
    last = torch.randn(5, 6, generator=gen).to(dtype)
    case = build("adam_", [(30, 40), (40, 15), (5, 6)], dtype, gen=gen, init=0.0, weight_decay=1e-2,
                 decoupled=True, l1=0.7, l2=0.1)
    mine, ref = case.clone(device=dev), case.clone()
    mine.lists["params"] = [bases[0].t(), bases[1][:, ::2], last.to(dev)]
    ref.lists["params"] = [ref_bases[0].t(), ref_bases[1][:, ::2], last.clone()]
    mine.call(kernel(backend, "adam_"))
    ref.call(ref_kernel("adam_"))
    for a, b in zip(bases, ref_bases):  # the untouched columns too
        assert torch.equal(a.cpu() == 0, b == 0)
        assert rel_err(a.cpu(), b) <= STEP[dtype]
    for a, b in zip(mine.params, ref.params):
        assert rel_err(a.cpu(), b) <= STEP[dtype]
    for name in ("exp_avgs", "exp_avg_sqs", "state_steps"):
        for a, b in zip(mine.lists[name], ref.lists[name]):
            assert rel_err(a.cpu(), b) <= 1e-6


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_non_contiguous_state_and_grads(backend):
    p, buf, g = torch.randn(13, 9).t(), torch.randn(13, 9).t(), torch.randn(13, 18)[:, ::2].t()
    assert not p.is_contiguous() and not g.is_contiguous() and p.shape == g.shape
    dev = DEVICE[backend]
    case = build("sgd_", [p.shape], torch.float32, momentum=0.9, l1=0.05)
    mine, ref = case.clone(), case.clone()
    # clone keeps the transposed strides
    mine.lists.update(params=[p.clone().to(dev)], grads=[g.to(dev)], momentum_buffers=[buf.clone().to(dev)])
    ref.lists.update(params=[p.clone()], grads=[g], momentum_buffers=[buf.clone()])
    assert not mine.params[0].is_contiguous()
    mine.call(kernel(backend, "sgd_"))
    ref.call(ref_kernel("sgd_"))
    for name in ("params", "momentum_buffers"):
        assert rel_err(mine.lists[name][0].cpu(), ref.lists[name][0]) <= STEP[torch.float32], name


# ---- argument errors, as each backend words them ---------------------------------------------------------------

@pytest.mark.parametrize("backend", each(["cpp"]))
def test_argument_errors(backend):
    sgd = lambda **kw: build("sgd_", [(3,)], **kw)  # noqa: E731
    fn = kernel(backend, "sgd_")
    with pytest.raises(RuntimeError, match="grads"):
        sgd().call(fn, grads=[])
    with pytest.raises(RuntimeError, match="momentum_buffers"):
        sgd(momentum=0.9).call(fn, momentum_buffers=[])
    with pytest.raises(RuntimeError, match="momentum_buffers"):  # a list its option leaves unused is empty
        sgd().call(fn, momentum_buffers=[torch.zeros(3)])
    adam = build("adam_", [(3,)], torch.bfloat16)
    with pytest.raises(RuntimeError, match="exp_avgs"):  # state in the param dtype instead of opmath
        adam.call(kernel(backend, "adam_"), exp_avgs=[torch.zeros(3, dtype=torch.bfloat16)])
    mixed, f64 = build("adagrad_", [(3,)]), build("adagrad_", [(3,)], torch.float64)
    for name, tensors in f64.lists.items():
        mixed.lists[name] += tensors
    with pytest.raises(RuntimeError, match="share dtype"):
        mixed.call(kernel(backend, "adagrad_"))
    with pytest.raises(RuntimeError, match="state_steps"):
        build("adagrad_", [(3,)]).call(kernel(backend, "adagrad_"),
                                       state_steps=[torch.zeros((), dtype=torch.float64)])


@pytest.mark.parametrize("backend", each(["triton"]))
def test_bad_input_triton(backend):
    dev = DEVICE[backend]
    fn = kernel(backend, "sgd_")
    case = build("sgd_", [(3,)], device=dev)
    # The contract's errors (fusedreg._ops.check), raised before anything changes.
    with pytest.raises(RuntimeError, match="one per param"):
        case.call(fn, grads=[])
    with pytest.raises(RuntimeError, match="shape"):
        case.call(fn, grads=[torch.zeros(4, device=dev)])
    with pytest.raises(RuntimeError, match="float32, float64"):
        q = [torch.zeros(3, dtype=torch.int32, device=dev)]
        case.call(fn, params=q, grads=q)
    case.call(fn, params=[], grads=[])  # empty: a no-op


# ---- one backend's own checks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,config", each(["cpp"], *[c for c in GRID if "group" in c]))
def test_group_prox_does_not_depend_on_thread_count(backend, config):
    # Column groups are summed per fixed column strip (each column by one task, rows in order) and row groups
    # within one thread: bitwise the same result on 1 and 2 threads, for matrices big enough to be split (and a
    # 3-D param). fp64 params, so that a different summation order would show (in fp32 it mostly rounds away).
    results = []
    for threads in (1, 2):
        n = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            gen = torch.Generator().manual_seed(4)
            case, first = make(config, torch.float64, [(600, 70), (70, 600), (6, 50, 40)], gen)
            for k in range(2):
                case.call(kernel(backend, case.op), grads=case.new_grads(gen),
                          **({"first_step": True} if first and k == 0 else {}))
        finally:
            torch.set_num_threads(n)
        results.append(case.params)
    for a, b in zip(*results):
        assert torch.equal(a, b)


CUDA_SIZES = {
    "1": [(1,)], "3": [(3,)], "5": [(5,)], "4097": [(4097,)], "2d": [(33, 65)],
    "chunk_edge": [(65536,), (65536 + 3,), (2 * 65536 - 1,)],
    "many": [(n,) for n in (0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 100, 1000, 4099)] * 5 + [(7, 9)] * 20,
    "over_320_chunks": SIZES["over_320_chunks"],
}


@pytest.mark.parametrize("backend,op,dtype,size,offset", [
    on("cuda", op, d, s, o) for op in OPS for d in DTYPES for s in CUDA_SIZES for o in (0, 1)
    if s != "over_320_chunks" or (d != torch.float64 and not o)])  # one dtype is enough for the launch split
def test_cuda_matches_the_cpu_kernel(backend, op, dtype, size, offset):
    # offset 1: every tensor a view at storage offset 1 (misaligned for vector loads).
    case = build(op, CUDA_SIZES[size], dtype, gen=torch.Generator().manual_seed(0),
                 scale=1024.0 if size == "many" else None, **HP[op])
    cpu, cuda = case.clone(), case.clone(device="cuda", offset=offset)
    for _ in range(3):
        cpu.call(kernel("cpp", op))
        cuda.call(kernel(backend, op))
    torch.cuda.synchronize()
    compare(cuda, cpu)


@pytest.mark.slow
@pytest.mark.parametrize("backend", each(["cuda"]))
def test_a_tensor_of_more_than_2_31_elements(backend):
    # 64-bit indexing: the elements past 2^31 are stepped like the CPU kernel steps them (~17 GB of GPU memory).
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs a GPU with 40 GB")
    n = 2**31 + 5
    p = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    buf = torch.randn(n, device="cuda") * 0.1
    hp = dict(momentum=0.9, weight_decay=1e-2, nesterov=True, l1=1e-2, l2=1e-3)
    big = build("sgd_", [], torch.bfloat16, **hp)
    big.lists.update(params=[p], grads=[g], momentum_buffers=[buf])
    where = [slice(0, 8), slice(2**31 - 4, n)]
    before = [(p[s].cpu(), g[s].cpu(), buf[s].cpu()) for s in where]
    big.call(kernel(backend, "sgd_"))
    torch.cuda.synchronize()
    for s, (pc, gc, bc) in zip(where, before):
        piece = build("sgd_", [], torch.bfloat16, **hp)
        piece.lists.update(params=[pc], grads=[gc], momentum_buffers=[bc])
        piece.call(kernel("cpp", "sgd_"))
        mine = build("sgd_", [], torch.bfloat16, **hp)
        mine.lists.update(params=[p[s]], grads=[g[s]], momentum_buffers=[buf[s]])
        compare(mine, piece)


@pytest.mark.parametrize("backend", each(["triton"]))
def test_many_tensors_in_one_call(backend):
    # 40 tensors of assorted sizes, fp32 and bf16 params: one call per dtype (the contract: one dtype per call, as
    # fusedreg.functional splits them), each one launch over many chunks.
    gen = seeded("mixed dtypes")
    sizes = [int(n) for n in torch.randint(0, 300 if not CUDA else 5000, (40,), generator=gen)]
    dts = [torch.float32 if i % 3 else torch.bfloat16 for i in range(40)]
    case = build("adam_", [(n,) for n in sizes], torch.float32, gen=gen, amsgrad=True, weight_decay=0.01, l1=0.01)
    case.lists["params"] = [p.to(d) for p, d in zip(case.params, dts)]
    mine, ref = case.clone(device=DEVICE[backend]), case.clone()
    for _ in range(2):
        grads = [torch.randn(n, generator=gen).to(d) for n, d in zip(sizes, dts)]
        for d in (torch.float32, torch.bfloat16):
            idx = [i for i in range(40) if dts[i] == d]
            for c, fn, gs in ((mine, kernel(backend, "adam_"), [g.to(DEVICE[backend]) for g in grads]),
                              (ref, ref_kernel("adam_"), grads)):
                part = {k: [ts[i] for i in idx] for k, ts in c.lists.items() if k != "grads"}
                c.call(fn, **part, grads=[gs[i] for i in idx])
    for name, tensors in ref.state().items():
        for a, b in zip(mine.lists[name], tensors):
            tol = 1e-2 if b.dtype == torch.bfloat16 else STEP[torch.float32]
            assert rel_err(a.cpu(), b) <= tol, name
            assert torch.equal(a.cpu() == 0, b == 0), name


@pytest.mark.parametrize("backend", each(["triton"]))
def test_triton_plans_are_cached_and_hyperparameters_change_freely(backend):
    T = importlib.import_module(TRITON_KNOBS)
    case = build("adam_", SIZES["mixed"], device=DEVICE[backend], gen=seeded("cache"))
    fn = kernel(backend, "adam_")
    case.call(fn)
    n = len(T._cache)
    for lr, l1 in ((0.02, 0.0), (0.03, 0.1), (0.001, 1e-5)):
        case.call(fn, lr=lr, l1=l1)
    assert len(T._cache) == n
    if CUDA:  # one compiled variant for all those hyperparameters
        caches = getattr(importlib.import_module("fusedreg.triton.adam").adam_kernel, "device_caches", None)
        if caches and all(isinstance(c, tuple) and isinstance(c[0], dict) for c in caches.values()):
            assert sum(len(c[0]) for c in caches.values()) == 1


@pytest.mark.parametrize("backend", each(["triton"]))
def test_triton_sparse_plans_are_cached_by_the_row_counts(backend, monkeypatch):
    # Every sparse step brings new grad values and indices: the plan is keyed by the row counts, and a hit must
    # still read this step's rows.
    T = importlib.import_module(TRITON_KNOBS)
    monkeypatch.setattr(T, "_cache", type(T._cache)())  # empty: a full cache would evict as it adds
    shapes = [(20, 3), (9, 4)]
    case = build("sgd_", shapes, device=DEVICE[backend], gen=seeded("sparse-cache"), rows=[[1, 5, 7], [0, 2]],
                 l1=0.05)
    ref = case.clone(device="cpu")
    gen = seeded("sparse-cache-grads")
    n = None
    for rows, new_plan in (([[1, 5, 7], [0, 2]], True), ([[4, 2, 19], [8, 3]], False), ([[4, 2], [8, 3, 1]], True),
                           ([[0, 9, 3], [5, 1]], False)):
        index = [torch.tensor(r, dtype=torch.int64) for r in rows]
        grads = [torch.randn(len(r), s[1], generator=gen) for r, s in zip(rows, shapes)]
        case.call(kernel(backend, "sgd_"), grads=[g.to(DEVICE[backend]) for g in grads],
                  rows=[r.to(DEVICE[backend]) for r in index])
        ref.call(ref_kernel("sgd_"), grads=grads, rows=index)
        if n is not None:
            assert len(T._cache) == n + new_plan
        n = len(T._cache)
        for a, b in zip(case.params, ref.params):
            assert rel_err(a.cpu(), b) <= STEP[torch.float32] and torch.equal(a.cpu() == 0, b == 0)


def _triton_custom_ops():
    if not all(hasattr(torch.ops.fusedreg, f"triton_{op}") for op in OPS):
        pytest.skip("the Triton custom ops fusedreg::triton_* did not register")


COMPILE_GROUP = textwrap.dedent("""
    import os, sys
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from fusedreg.triton import group

    if not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")):
        sys.exit(77)
    ptr = {tl.float32: "*fp32", tl.bfloat16: "*bf16", tl.float64: "*fp64"}
    # METRIC off for SGD, and for Adam / Adagrad with decoupled l1 (the closed form with their scalar step)
    for dt, kind, shape, metric in [(tl.float32, group.ADAM, (4096, 4096, 1), True),
                                    (tl.bfloat16, group.SGD, (300, 2, 1), False),
                                    (tl.float32, group.FTRL, (1, 13, 17), True),
                                    (tl.float64, group.ADAGRAD, (6, 20, 9), True),
                                    (tl.float32, group.ADAM, (1, 2, 5000), True),
                                    (tl.float32, group.ADAM, (2048, 2048, 1), False),
                                    (tl.bfloat16, group.ADAGRAD, (1, 64, 300), False)]:
        BA, BG, BK = group.tile(*shape, 1024)
        cdt = tl.float64 if dt == tl.float64 else tl.float32
        sig = {"param": ptr[dt], "state": ptr[cdt], "step_ptr": "*fp32", "found_inf": "*fp32", "A": "i32", "G": "i32",
               "K": "i32", **dict.fromkeys(["lr", "group_l1", "l2", "beta2", "lr_decay", "eps", "beta", "neg_power"],
                                          "fp64")}
        const = dict(CDT=cdt, KIND=kind.value, HAS_L2=True, HAS_FI=True, BA=BA, BG=BG, BK=BK, POWER=2, METRIC=metric)
        src = ASTSource(group.group_kernel, {**sig, **dict.fromkeys(const, "constexpr")}, const)
        c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=group.options(BA, BG, BK))
        assert c.asm["cubin"]
        print(shape, BA, BG, BK, c.asm["ttgir"].count("threadsPerWarp = [1, 32, 1]"))
""")


@pytest.mark.parametrize("backend", each(["triton"]))
def test_triton_group_kernel_compiles_for_a_gpu(backend):
    # The interpreter runs the kernel's Python, not the compiler: compile it for sm_90 here (no GPU needed), and
    # check that a column tile puts a warp's 32 lanes on 32 consecutive columns of a row (coalesced reads).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", COMPILE_GROUP], cwd=root, capture_output=True, text=True, env=env)
    if out.returncode == 77:
        pytest.skip("Triton has no ptxas here")
    assert out.returncode == 0, out.stderr[-4000:]
    warps = {line.split(")")[0] + ")": int(line.split()[-1]) for line in out.stdout.splitlines()}
    assert warps["(4096, 4096, 1)"] > 0, out.stdout


@pytest.mark.parametrize("backend", each(["triton"]))
def test_triton_custom_op_matches(backend):
    _triton_custom_ops()
    gen = seeded("custom op")
    case = build("adagrad_", SIZES["mixed"], gen=gen, lr_decay=0.01, l1=0.01)
    mine, ref = case.clone(device=DEVICE[backend]), case.clone()
    mine.call(torch.ops.fusedreg.triton_adagrad_)
    ref.call(ref_kernel("adagrad_"))
    compare(mine, ref)


@pytest.mark.parametrize("backend", each(["triton"]))
def test_torch_compile_sees_one_triton_custom_op(backend):
    # Under torch.compile the entry points dispatch to the registered custom op, which dynamo keeps whole.
    _triton_custom_ops()
    case = build("adam_", SIZES["mixed"], gen=seeded("compile"), l1=0.01, amsgrad=True)
    mine, ref = case.clone(device=DEVICE[backend]), case.clone()
    fn = kernel(backend, "adam_")

    def step(lists, lr):
        fn(*lists, **{**mine.kw, "lr": lr})

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    for lr in (0.01, 0.02):
        compiled(mine.args()[0], lr)
        ref.call(ref_kernel("adam_"), lr=lr)
    compare(mine, ref)


# FTRL's zeros come from its state: w = 0 where |z| <= l1 (then l0 on w, with the step 1/q). With a zero grad the
# accumulator does not move (sigma = 0) and z is kept exactly, so z placed a few ulps around l1 (and w = -z/q
# around the l0 threshold) tests the comparisons themselves, in the state's precision.
FTRL_THRESHOLDS = {
    # lr = 1/2, n = 1, beta = l2 = 0: q = 2. l1 = 1/4: zero where |z| <= 1/4.
    "l1": (dict(lr=0.5, l1=0.25), 0.25),
    # l0 = 1/4: zero where |w| = |z|/2 <= sqrt(2*l0/q) = 1/2, i.e. |z| <= 1.
    "l0": (dict(lr=0.5, l0=0.25), 1.0),
}


@pytest.mark.parametrize("backend,penalty,dtype", [on(b, pen, d) for b in BACKENDS for pen in FTRL_THRESHOLDS
                                                   for d in DTYPES])
def test_ftrl_exact_zeros_at_threshold(backend, penalty, dtype):
    hp, zthr = FTRL_THRESHOLDS[penalty]
    state = torch.float64 if dtype == torch.float64 else torch.float32
    z = ulp_neighbours(zthr, state)
    case = build("ftrl_", [z.shape], dtype, gen=seeded("ftrl", penalty), init={"accumulators": 1.0}, **hp)
    case.lists["linears"][0] = z.clone()
    case.lists["grads"][0] = torch.zeros(z.shape, dtype=dtype)
    mine, ref = case.clone(device=DEVICE[backend]), case.clone()
    mine.call(kernel(backend, "ftrl_"))
    ref.call(ref_kernel("ftrl_"))
    assert torch.equal(ref.lists["linears"][0], z), "the construction must keep z exactly"
    if dtype != torch.float16:  # fp16 flushes the few-ulp w beside the l1 threshold to 0 on the way out
        assert torch.equal(ref.params[0] == 0, z.abs() <= zthr)
    assert 0 < (ref.params[0] == 0).sum() < z.numel()
    assert torch.equal(mine.params[0].cpu(), ref.params[0])


@pytest.mark.parametrize("backend", each(BACKENDS))
def test_ftrl_lr_zero_takes_no_step(backend):
    # FTRL divides by lr: lr = 0 (torch.distributed.checkpoint's state initialization steps with it) changes
    # nothing on any backend, given as a float or as lr_tensor.
    case = build("ftrl_", SIZES["mixed"], device=DEVICE[backend], gen=seeded("ftrl", "lr0"), l1=0.01, l2_shrinkage=0.1)
    before = case.clone()
    case.call(kernel(backend, "ftrl_"), lr=0.0)
    unchanged(case, before)
    case.call(kernel(backend, "ftrl_"), lr=math.nan,
              lr_tensor=torch.zeros((), dtype=torch.float64, device=DEVICE[backend]))
    unchanged(case, before)


@pytest.mark.parametrize("backend,lr_power,l1",
                         each(BACKENDS, *[(p, l1) for p in (-0.5, -0.3, 0.0) for l1 in (0.0, 1.0)]))
def test_ftrl_zero_accumulator_and_zero_grad_follow_tensorflow(backend, lr_power, l1):
    # initial_accumulator_value = 0 and a zero grad: n' = 0, so n'^(-lr_power) = 0 (lr_power < 0; 1 for
    # lr_power = 0: 0^0 = 1) and sigma = 0. With beta = l2 = 0 the denominator is 0 there: as TensorFlow's
    # select, w = 0 where |z| <= l1 (z = 0 with l1 = 0 too, not 0/0 = NaN), and -sign(z)*inf elsewhere.
    z = torch.tensor([0.0, 0.5, -0.5, 2.0, -2.0, 1.0])
    case = build("ftrl_", [z.shape], init={"accumulators": 0.0}, lr_power=lr_power, l1=l1)
    case.lists["linears"][0] = z.clone()
    case.lists["grads"][0] = torch.zeros_like(z)
    mine = case.clone(device=DEVICE[backend])
    mine.call(kernel(backend, "ftrl_"))
    w = mine.params[0].cpu()
    if lr_power == 0:  # q = 1/lr: an ordinary step
        want = torch.where(z.abs() <= l1, 0.0, -torch.sign(z) * (z.abs() - l1) * case.kw["lr"])
    else:
        want = torch.where(z.abs() <= l1, 0.0, -torch.sign(z) * math.inf)
    assert torch.equal(w, want), w
    assert torch.equal(mine.lists["linears"][0].cpu(), z) and not mine.lists["accumulators"][0].cpu().any()
