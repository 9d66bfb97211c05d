"""The "triton" backend: `sgd_`, `adam_`, `adagrad_` as Triton kernels, same signatures as fusedreg.reference.

How a step is launched
----------------------
A call updates a whole list of tensors in at most 1 + G launches (plus one per grouped param with group_l1),
G = the number of distinct (param, grad, state, step) dtype combinations in the list (usually 1):

* a chunk table: one row of 8 int64 per CHUNK elements of every non-empty param (the param's, grad's, state
  tensors' and step tensor's addresses already advanced to the chunk, and the chunk's element count). It is
  built on the host once per list and cached, keyed by the tensors' addresses, sizes and dtypes, so a
  steady-state step only rebuilds the key (one pass of `data_ptr()` over the lists) and launches.
* Adam/Adagrad: one launch of `_steps_kernel` over a table of the step tensors' addresses adds 1 to every step
  (unless found_inf). The step must be advanced before any program reads it, and programs of one launch are
  unordered, hence the separate launch.
* one launch per dtype combination of the optimizer's kernel, grid = number of chunks: program i loads row i,
  turns the addresses into typed pointers and walks its chunk in BLOCK-wide pieces (full pieces unmasked, so
  the compiler can vectorize them when every address is 16-byte aligned; the last piece masked).
* with group_l1 > 0, one launch of `_group_kernel` per param with dim >= 2 after the update, one program per
  group (row or column), reading the param as just written (and Adam's v_hat / Adagrad's sum for the metric).

Non-contiguous params/states go through contiguous copies written back afterwards (a slow path that also
rebuilds the table every step). The first call on a new list copies its table to the device (synchronously),
so capture a CUDA graph only after a warm-up step.

The same code runs on CUDA tensors (compiled with triton.jit) and on CPU tensors (run by Triton's interpreter,
where a pointer is a host address, so the address tables work unchanged). Each device type gets its own copy
of the kernels, so CPU tensors run interpreted whether or not TRITON_INTERPRET=1 was set before import, while
CUDA tensors are compiled (CUDA tensors with TRITON_INTERPRET=1 are refused: the interpreter cannot read
device addresses).

Numerics (reproducing fusedreg.reference)
-----------------------------------------
* Per-element math in fp32 for fp32/bf16/fp16 params (state in its own dtype, normally fp32), in fp64 for fp64
  params. Divisions and square roots are IEEE-rounded (div_rn/sqrt_rn), contraction into FMAs is off
  (enable_fp_fusion=False), and lerp is the explicit FMA torch uses, so results match the reference bit for
  bit where torch's own kernels are correctly rounded. (torch's CPU sqrt is not: in torch 2.13 about one fp32
  result in five is 1 ulp off, so against the CPU reference Adam/Adagrad agree to ~1 ulp, not bitwise.)
* bf16 stores round to nearest-even; the interpreter's own fp32 -> bf16 cast truncates, so its copy of the
  kernels rounds by hand (_SOFT_BF16).
* Hyperparameters are fp64 runtime arguments, never constexpr: changing lr, l1, betas, ... never recompiles.
  Each kernel forms the reference's host doubles from them in fp64 (lr/bc1, 1 - lr*wd, clr*l1, ...) and rounds
  once to the compute dtype. Step-dependent scalars (Adam's bias corrections, Adagrad's clr) are computed per
  program in fp64 from the step tensor, so there is no host sync: beta**step by square-and-multiply on the
  integer step (a few ulps of fp64 from libm's pow; the step counts are integers).
* constexpr: dtypes, BLOCK/CHUNK, alignment, presence of grad_scale/found_inf, and the structural flags
  (momentum buffers present, nesterov, first_step, amsgrad, decoupled, maximize, l1_subgradient, nonneg).
  Each penalty is skipped by a runtime branch when its strength is 0.

torch.compile: the ops are also registered as opaque custom ops `fusedreg::triton_sgd_`, `triton_adam_` and
`triton_adagrad_` with the schemas of fusedreg._ops (mutations declared there). They are not `triton_op`s: the
kernels write through addresses loaded from a table, which Inductor's kernel mutation analysis cannot see.
"""
import os
import types
from collections import OrderedDict

import torch
import triton
import triton.language as tl

from . import _ops, reference

# GPU launch shape. Each program handles CHUNK elements (one table row) in BLOCK-wide pieces.
BLOCK = 1024
CHUNK = 4096
NUM_WARPS = 4
# The interpreter runs one program at a time in numpy: big blocks, few programs.
INTERPRET_BLOCK = 4096
INTERPRET_CHUNK = 4096

_ROW = 8  # int64 per chunk row: param, grad, state0, state1, state2, step, count, (pad)
_ALIGN = 16

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
              torch.float64: tl.float64}

_RAW = []  # the jit functions, undecorated; _kernels() decorates one copy per mode
# True in the interpreter's copy: its fp32 -> bf16 cast truncates (Triton 3.6-3.9), so _store rounds by hand.
_SOFT_BF16 = tl.constexpr(False)


def _jit(fn):
    _RAW.append(fn)
    return fn


# --------------------------------------------------------------------------------------------------------------
# Element-wise building blocks (each formula exists once)

@_jit
def _f64(x):
    # A runtime fp64 scalar argument. Compiled, it already is one; the interpreter hands over the Python float.
    return tl.full([], x, tl.float64)


@_jit
def _div(a, b):
    a, b = tl.broadcast(a, b)
    if a.dtype == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)


@_jit
def _sqrt(x):
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@_jit
def _sign(x):
    # torch.sign: 0 for 0 and NaN
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


@_jit
def _powi(base, e):
    # base ** e for an fp64 base and an integer-valued e >= 0, by square-and-multiply.
    n = e.to(tl.int64)
    r = tl.full([], 1.0, tl.float64)
    b = base
    while n > 0:
        r = tl.where((n & 1) == 1, r * b, r)
        b = b * b
        n = n >> 1
    return r


@_jit
def _grad(p, g, gs, wd, l1, HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, SUBGRAD: tl.constexpr):
    """grad / grad_scale -> negate if maximize -> + l1*sign(p) (subgradient L1) -> + wd*p (coupled decay)."""
    if HAS_GS:
        g = _div(g, gs)
    if MAXIMIZE:
        g = -g
    if SUBGRAD:
        if l1 != 0:
            g = g + l1.to(p.dtype) * _sign(p)
    if wd != 0:
        g = g + wd.to(p.dtype) * p
    return g


@_jit
def _prox(v, denom, t, l1, l2, l0, SUBGRAD: tl.constexpr, NONNEG: tl.constexpr, HAS_DENOM: tl.constexpr):
    """The proximal penalties with per-element step t/denom (t an fp64 scalar; no denom: SGD, denom = 1)."""
    if not SUBGRAD:
        if l1 != 0:
            thr = (t * l1).to(v.dtype)
            if HAS_DENOM:
                thr = _div(thr, denom)
            v = _sign(v) * tl.maximum(tl.abs(v) - thr, 0.0, propagate_nan=tl.PropagateNan.ALL)
    if l2 != 0:
        s2 = (t * l2).to(v.dtype)
        if HAS_DENOM:
            s2 = _div(s2, denom)
        v = _div(v, 1.0 + s2)
    if l0 != 0:
        s0 = (2.0 * t * l0).to(v.dtype)
        if HAS_DENOM:
            s0 = _div(s0, denom)
        v = tl.where(tl.abs(v) <= _sqrt(s0), 0.0, v)
    if NONNEG:
        v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return v


@_jit
def _lerp(a, b, w):
    """torch.lerp(a, b, w) for a scalar weight, as torch computes it (one FMA, the branch on |w| < 0.5)."""
    d = b - a
    if tl.abs(w) < 0.5:
        r = tl.fma(tl.broadcast_to(w, d.shape), d, a)
    else:
        r = tl.fma(tl.broadcast_to(w - 1.0, d.shape), d, b)
    return r


@_jit
def _store(ptr, x, mask):
    """Store x rounded to nearest-even to the pointer's dtype (as torch's copy_ does)."""
    if _SOFT_BF16 and ptr.dtype.element_ty == tl.bfloat16 and x.dtype == tl.float32:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, (bits >> 16) | 0x40, rounded)  # NaN stays a (quiet) NaN
        tl.store(ptr, rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)


@_jit
def _col(row, K: tl.constexpr, DT: tl.constexpr, ALIGNED: tl.constexpr):
    """Column K of a chunk row as a pointer to DT."""
    ptr = tl.load(row + K).to(tl.pointer_type(DT))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, 16)  # _ALIGN
    return ptr


# --------------------------------------------------------------------------------------------------------------
# SGD

@_jit
def _sgd_update(p, g, buf, gs, lr, momentum, dampening, wd, l1, l2, l0,
                HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, SUBGRAD: tl.constexpr, NONNEG: tl.constexpr,
                MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, FIRST_STEP: tl.constexpr):
    g = _grad(p, g, gs, wd, l1, HAS_GS, MAXIMIZE, SUBGRAD)
    if MOMENTUM:
        mu = momentum.to(p.dtype)
        if FIRST_STEP:
            buf = g
        else:
            buf = buf * mu + (1.0 - dampening).to(p.dtype) * g
        if NESTEROV:
            g = g + mu * buf
        else:
            g = buf
    p = p - lr.to(p.dtype) * g
    p = _prox(p, 1.0, lr, l1, l2, l0, SUBGRAD, NONNEG, False)
    return p, buf


@_jit
def _sgd_piece(p_ptr, g_ptr, b_ptr, offs, mask, gs, lr, momentum, dampening, wd, l1, l2, l0,
               CDT: tl.constexpr, HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, SUBGRAD: tl.constexpr,
               NONNEG: tl.constexpr, MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, FIRST_STEP: tl.constexpr):
    p = tl.load(p_ptr + offs, mask=mask).to(CDT)
    g = tl.load(g_ptr + offs, mask=mask).to(CDT)
    buf = p
    if MOMENTUM:
        if not FIRST_STEP:
            buf = tl.load(b_ptr + offs, mask=mask).to(CDT)
    p, buf = _sgd_update(p, g, buf, gs, lr, momentum, dampening, wd, l1, l2, l0,
                         HAS_GS, MAXIMIZE, SUBGRAD, NONNEG, MOMENTUM, NESTEROV, FIRST_STEP)
    if MOMENTUM:
        _store(b_ptr + offs, buf, mask)
    _store(p_ptr + offs, p, mask)


@_jit
def _sgd_kernel(rows, gs_ptr, fi_ptr, lr, momentum, dampening, wd, l1, l2, l0,
                P_DT: tl.constexpr, G_DT: tl.constexpr, B_DT: tl.constexpr, CDT: tl.constexpr,
                HAS_GS: tl.constexpr, HAS_FI: tl.constexpr, MAXIMIZE: tl.constexpr, SUBGRAD: tl.constexpr,
                NONNEG: tl.constexpr, MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, FIRST_STEP: tl.constexpr,
                ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    row = rows + tl.program_id(0).to(tl.int64) * 8
    p_ptr = _col(row, 0, P_DT, ALIGNED)
    g_ptr = _col(row, 1, G_DT, ALIGNED)
    b_ptr = _col(row, 2, B_DT, ALIGNED)
    n = tl.load(row + 6)
    if HAS_FI:
        n = tl.where(tl.load(fi_ptr) == 0, n, 0)
    gs = 1.0
    if HAS_GS:
        gs = tl.load(gs_ptr).to(CDT)
    lr = _f64(lr)
    momentum = _f64(momentum)
    dampening = _f64(dampening)
    wd = _f64(wd)
    l1 = _f64(l1)
    l2 = _f64(l2)
    l0 = _f64(l0)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            _sgd_piece(p_ptr, g_ptr, b_ptr, offs, None, gs, lr, momentum, dampening, wd, l1, l2, l0, CDT,
                       HAS_GS, MAXIMIZE, SUBGRAD, NONNEG, MOMENTUM, NESTEROV, FIRST_STEP)
        elif start < n:
            _sgd_piece(p_ptr, g_ptr, b_ptr, offs, offs < n, gs, lr, momentum, dampening, wd, l1, l2, l0, CDT,
                       HAS_GS, MAXIMIZE, SUBGRAD, NONNEG, MOMENTUM, NESTEROV, FIRST_STEP)


# --------------------------------------------------------------------------------------------------------------
# Adam / AdamW

@_jit
def _adam_update(p, g, m, v, vmax, gs, lr, beta1, beta2, eps, wd, l1, l2, l0, lr_bc1, bc2_sqrt,
                 HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, SUBGRAD: tl.constexpr, NONNEG: tl.constexpr,
                 DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr):
    """lr, beta1, beta2, eps, wd, l1, l2, l0 fp64; lr_bc1 = lr/bc1 and bc2_sqrt = sqrt(bc2) in the compute dtype."""
    dt = p.dtype
    if DECOUPLED:
        g = _grad(p, g, gs, 0.0, l1, HAS_GS, MAXIMIZE, SUBGRAD)
        if wd != 0:
            p = p * (1.0 - lr * wd).to(dt)
    else:
        g = _grad(p, g, gs, wd, l1, HAS_GS, MAXIMIZE, SUBGRAD)
    m = _lerp(m, g, (1.0 - beta1).to(dt))
    v = v * beta2.to(dt) + (1.0 - beta2).to(dt) * g * g
    vhat = v
    if AMSGRAD:
        vmax = tl.maximum(vmax, v, propagate_nan=tl.PropagateNan.ALL)
        vhat = vmax
    denom = _div(_sqrt(vhat), bc2_sqrt) + eps.to(dt)
    p = p - lr_bc1 * _div(m, denom)
    p = _prox(p, denom, lr, l1, l2, l0, SUBGRAD, NONNEG, True)
    return p, m, v, vmax


@_jit
def _adam_piece(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, offs, mask, gs, lr, beta1, beta2, eps, wd, l1, l2, l0,
                lr_bc1, bc2_sqrt, CDT: tl.constexpr, HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr,
                SUBGRAD: tl.constexpr, NONNEG: tl.constexpr, DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr):
    p = tl.load(p_ptr + offs, mask=mask).to(CDT)
    g = tl.load(g_ptr + offs, mask=mask).to(CDT)
    m = tl.load(m_ptr + offs, mask=mask).to(CDT)
    v = tl.load(v_ptr + offs, mask=mask).to(CDT)
    vmax = v
    if AMSGRAD:
        vmax = tl.load(x_ptr + offs, mask=mask).to(CDT)
    p, m, v, vmax = _adam_update(p, g, m, v, vmax, gs, lr, beta1, beta2, eps, wd, l1, l2, l0, lr_bc1, bc2_sqrt,
                                 HAS_GS, MAXIMIZE, SUBGRAD, NONNEG, DECOUPLED, AMSGRAD)
    _store(m_ptr + offs, m, mask)
    _store(v_ptr + offs, v, mask)
    if AMSGRAD:
        _store(x_ptr + offs, vmax, mask)
    _store(p_ptr + offs, p, mask)


@_jit
def _adam_kernel(rows, gs_ptr, fi_ptr, lr, beta1, beta2, eps, wd, l1, l2, l0,
                 P_DT: tl.constexpr, G_DT: tl.constexpr, M_DT: tl.constexpr, V_DT: tl.constexpr,
                 X_DT: tl.constexpr, S_DT: tl.constexpr, CDT: tl.constexpr,
                 HAS_GS: tl.constexpr, HAS_FI: tl.constexpr, MAXIMIZE: tl.constexpr, SUBGRAD: tl.constexpr,
                 NONNEG: tl.constexpr, DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr,
                 ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    row = rows + tl.program_id(0).to(tl.int64) * 8
    p_ptr = _col(row, 0, P_DT, ALIGNED)
    g_ptr = _col(row, 1, G_DT, ALIGNED)
    m_ptr = _col(row, 2, M_DT, ALIGNED)
    v_ptr = _col(row, 3, V_DT, ALIGNED)
    x_ptr = _col(row, 4, X_DT, ALIGNED)
    s_ptr = _col(row, 5, S_DT, False)
    n = tl.load(row + 6)
    if HAS_FI:
        n = tl.where(tl.load(fi_ptr) == 0, n, 0)
    gs = 1.0
    if HAS_GS:
        gs = tl.load(gs_ptr).to(CDT)
    lr = _f64(lr)
    beta1 = _f64(beta1)
    beta2 = _f64(beta2)
    # The step was already advanced by _steps_kernel. Bias corrections in fp64, as the reference's host doubles.
    step = tl.load(s_ptr).to(tl.float64)
    lr_bc1 = (lr / (1.0 - _powi(beta1, step))).to(CDT)
    bc2_sqrt = tl.sqrt(1.0 - _powi(beta2, step)).to(CDT)
    eps = _f64(eps)
    wd = _f64(wd)
    l1 = _f64(l1)
    l2 = _f64(l2)
    l0 = _f64(l0)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            _adam_piece(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, offs, None, gs, lr, beta1, beta2, eps, wd, l1, l2, l0,
                        lr_bc1, bc2_sqrt, CDT, HAS_GS, MAXIMIZE, SUBGRAD, NONNEG, DECOUPLED, AMSGRAD)
        elif start < n:
            _adam_piece(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, offs, offs < n, gs, lr, beta1, beta2, eps, wd, l1, l2,
                        l0, lr_bc1, bc2_sqrt, CDT, HAS_GS, MAXIMIZE, SUBGRAD, NONNEG, DECOUPLED, AMSGRAD)


# --------------------------------------------------------------------------------------------------------------
# Adagrad

@_jit
def _adagrad_update(p, g, s, gs, clr, eps, wd, l1, l2, l0,
                    HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, SUBGRAD: tl.constexpr, NONNEG: tl.constexpr):
    """clr = lr / (1 + (step - 1) * lr_decay) in fp64."""
    dt = p.dtype
    g = _grad(p, g, gs, wd, l1, HAS_GS, MAXIMIZE, SUBGRAD)
    s = s + g * g
    denom = _sqrt(s) + eps.to(dt)
    p = p - clr.to(dt) * _div(g, denom)
    p = _prox(p, denom, clr, l1, l2, l0, SUBGRAD, NONNEG, True)
    return p, s


@_jit
def _adagrad_piece(p_ptr, g_ptr, s_ptr, offs, mask, gs, clr, eps, wd, l1, l2, l0, CDT: tl.constexpr,
                   HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, SUBGRAD: tl.constexpr, NONNEG: tl.constexpr):
    p = tl.load(p_ptr + offs, mask=mask).to(CDT)
    g = tl.load(g_ptr + offs, mask=mask).to(CDT)
    s = tl.load(s_ptr + offs, mask=mask).to(CDT)
    p, s = _adagrad_update(p, g, s, gs, clr, eps, wd, l1, l2, l0, HAS_GS, MAXIMIZE, SUBGRAD, NONNEG)
    _store(s_ptr + offs, s, mask)
    _store(p_ptr + offs, p, mask)


@_jit
def _adagrad_kernel(rows, gs_ptr, fi_ptr, lr, lr_decay, eps, wd, l1, l2, l0,
                    P_DT: tl.constexpr, G_DT: tl.constexpr, A_DT: tl.constexpr, S_DT: tl.constexpr,
                    CDT: tl.constexpr, HAS_GS: tl.constexpr, HAS_FI: tl.constexpr, MAXIMIZE: tl.constexpr,
                    SUBGRAD: tl.constexpr, NONNEG: tl.constexpr,
                    ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    row = rows + tl.program_id(0).to(tl.int64) * 8
    p_ptr = _col(row, 0, P_DT, ALIGNED)
    g_ptr = _col(row, 1, G_DT, ALIGNED)
    a_ptr = _col(row, 2, A_DT, ALIGNED)
    st_ptr = _col(row, 5, S_DT, False)
    n = tl.load(row + 6)
    if HAS_FI:
        n = tl.where(tl.load(fi_ptr) == 0, n, 0)
    gs = 1.0
    if HAS_GS:
        gs = tl.load(gs_ptr).to(CDT)
    step = tl.load(st_ptr).to(tl.float64)
    clr = _f64(lr) / (1.0 + (step - 1.0) * _f64(lr_decay))
    eps = _f64(eps)
    wd = _f64(wd)
    l1 = _f64(l1)
    l2 = _f64(l2)
    l0 = _f64(l0)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            _adagrad_piece(p_ptr, g_ptr, a_ptr, offs, None, gs, clr, eps, wd, l1, l2, l0, CDT,
                           HAS_GS, MAXIMIZE, SUBGRAD, NONNEG)
        elif start < n:
            _adagrad_piece(p_ptr, g_ptr, a_ptr, offs, offs < n, gs, clr, eps, wd, l1, l2, l0, CDT,
                           HAS_GS, MAXIMIZE, SUBGRAD, NONNEG)


# --------------------------------------------------------------------------------------------------------------
# Group lasso (after the op's kernel): one program per group, the formulas of csrc/fusedreg_math.h and
# fusedreg.reference.group_prox. A param with dim >= 2 is (A, G, K): element k of group g in outer slice a at
# (a*G + g)*K + k (rows: A = 1; columns: A = size(0)). KIND 0 is SGD (scalar step), 1 Adam, 2 Adagrad (the
# metric prox with the op's per-element denominators, read back from the state the op has just written).

@_jit
def _group_a(x_ptr, offs, mask, c, c2, bdiv, eps, CDT: tl.constexpr, HAS_L2: tl.constexpr):
    """a_i = opmath(c) / (denom_i [+ opmath(step*l2)]) in fp64, denom = sqrt(x)/bdiv + eps (bdiv 1: Adagrad)."""
    x = tl.load(x_ptr + offs, mask=mask, other=1.0).to(CDT)
    denom = _div(_sqrt(x), bdiv) + eps
    if HAS_L2:
        denom = denom + c2
    return _div(tl.broadcast_to(c, denom.shape), denom).to(tl.float64)


@_jit
def _group_va(p_ptr, x_ptr, offs, mask, c, c2, bdiv, eps, CDT: tl.constexpr, HAS_L2: tl.constexpr):
    """The param's values (fp64, after rounding to the compute dtype) and their a_i."""
    v = tl.load(p_ptr + offs, mask=mask, other=0.0).to(CDT).to(tl.float64)
    return v, _group_a(x_ptr, offs, mask, c, c2, bdiv, eps, CDT, HAS_L2)


@_jit
def _group_offs(gid, m, G, K):
    return (m // K * G + gid) * K + m % K


@_jit
def _group_kernel(p_ptr, x_ptr, s_ptr, fi_ptr, A, G, K, lr, group_l1, l2, beta2, lr_decay, eps,
                  P_DT: tl.constexpr, X_DT: tl.constexpr, S_DT: tl.constexpr, CDT: tl.constexpr,
                  KIND: tl.constexpr, HAS_L2: tl.constexpr, HAS_FI: tl.constexpr, BLOCK: tl.constexpr):
    gid = tl.program_id(0).to(tl.int64)
    p_ptr = p_ptr.to(tl.pointer_type(P_DT))
    x_ptr = x_ptr.to(tl.pointer_type(X_DT))
    size = A.to(tl.int64) * K
    n = size
    if HAS_FI:
        n = tl.where(tl.load(fi_ptr) == 0, n, 0)
    lr = _f64(lr)
    group_l1 = _f64(group_l1)
    l2 = _f64(l2)
    bdiv = tl.full([], 1.0, tl.float64).to(CDT)
    step = lr
    if KIND != 0:
        t = tl.load(s_ptr.to(tl.pointer_type(S_DT))).to(tl.float64)  # already advanced by the op's kernel
        if KIND == 1:
            bdiv = tl.sqrt(1.0 - _powi(_f64(beta2), t)).to(CDT)
        else:
            step = lr / (1.0 + (t - 1.0) * _f64(lr_decay))
    c = step * group_l1 * tl.sqrt(size.to(tl.float64))
    if step * group_l1 == 0:
        n = 0
    if KIND == 0:
        c = c / (1.0 + step * l2)
        ss = tl.zeros([BLOCK], tl.float64)
        for start in range(0, n, BLOCK):
            m = start + tl.arange(0, BLOCK)
            v = tl.load(p_ptr + _group_offs(gid, m, G, K), mask=m < n, other=0.0).to(CDT).to(tl.float64)
            ss += v * v
        f = 1.0 - c / tl.sqrt(tl.sum(ss, 0))
        f = tl.where((f > 0) | (f != f), f, 0.0).to(CDT)
        for start in range(0, n, BLOCK):
            m = start + tl.arange(0, BLOCK)
            offs = _group_offs(gid, m, G, K)
            _store(p_ptr + offs, tl.load(p_ptr + offs, mask=m < n).to(CDT) * f, m < n)
    else:
        c_o = c.to(CDT)
        c2 = (step * l2).to(CDT)
        eps = _f64(eps).to(CDT)
        q = tl.zeros([BLOCK], tl.float64)
        nn = tl.zeros([BLOCK], tl.float64)
        amax = tl.zeros([BLOCK], tl.float64)
        for start in range(0, n, BLOCK):
            m = start + tl.arange(0, BLOCK)
            offs = _group_offs(gid, m, G, K)
            v, a = _group_va(p_ptr, x_ptr, offs, m < n, c_o, c2, bdiv, eps, CDT, HAS_L2)
            q += (v / a) * (v / a)
            nn += v * v
            amax = tl.maximum(amax, tl.where(m < n, a, 0.0), propagate_nan=tl.PropagateNan.ALL)
        r = tl.sqrt(tl.sum(nn, 0)) - tl.max(amax, 0)
        r = tl.where(r > 0, r, 0.0)
        r = tl.where(tl.sqrt(tl.sum(q, 0)) > 1, r, -1.0)  # -1: the prox zeroes the group
        go = r >= 0
        it = 0
        while go & (it < 100):  # kMetricMaxIter; Newton from the left, as fusedreg_math.h's newton_step
            s = tl.zeros([BLOCK], tl.float64)
            t3 = tl.zeros([BLOCK], tl.float64)
            for start in range(0, n, BLOCK):
                m = start + tl.arange(0, BLOCK)
                offs = _group_offs(gid, m, G, K)
                v, a = _group_va(p_ptr, x_ptr, offs, m < n, c_o, c2, bdiv, eps, CDT, HAS_L2)
                inv = 1.0 / (r + a)
                w = v * v * inv * inv
                s += w
                t3 += w * inv
            s_sum = tl.sum(s, 0)
            dr = s_sum * (tl.sqrt(s_sum) - 1.0) / tl.sum(t3, 0)
            r = r + tl.where(dr > 0, dr, 0.0)
            go = dr > 8.881784197001252e-16 * r  # kMetricTol
            it += 1
        for start in range(0, n, BLOCK):
            m = start + tl.arange(0, BLOCK)
            offs = _group_offs(gid, m, G, K)
            a = _group_a(x_ptr, offs, m < n, c_o, c2, bdiv, eps, CDT, HAS_L2)
            f = tl.where(r < 0, 0.0, r / (r + a)).to(CDT)
            _store(p_ptr + offs, tl.load(p_ptr + offs, mask=m < n).to(CDT) * f, m < n)


# --------------------------------------------------------------------------------------------------------------
# Step counters

@_jit
def _steps_kernel(addrs, n, fi_ptr, S_DT: tl.constexpr, HAS_FI: tl.constexpr, BLOCK: tl.constexpr):
    if HAS_FI:
        n = tl.where(tl.load(fi_ptr) == 0, n, 0)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    ptrs = tl.load(addrs + offs, mask=mask, other=0).to(tl.pointer_type(S_DT))
    tl.store(ptrs, tl.load(ptrs, mask=mask) + 1, mask=mask)


_FP64_ARGS = {  # runtime scalars typed fp64 (a plain Python float would be passed as fp32)
    "_sgd_kernel": ("lr", "momentum", "dampening", "wd", "l1", "l2", "l0"),
    "_adam_kernel": ("lr", "beta1", "beta2", "eps", "wd", "l1", "l2", "l0"),
    "_adagrad_kernel": ("lr", "lr_decay", "eps", "wd", "l1", "l2", "l0"),
    "_group_kernel": ("lr", "group_l1", "l2", "beta2", "lr_decay", "eps"),
}


# --------------------------------------------------------------------------------------------------------------
# Host side

_MODES = {}


def _kernels(interpret):
    """The jit functions decorated for one mode, in their own globals so helpers resolve within the mode."""
    ns = _MODES.get(interpret)
    if ns is None:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction

        ns = dict(globals())
        ns["_SOFT_BF16"] = tl.constexpr(interpret)
        for raw in _RAW:
            fn = types.FunctionType(raw.__code__, ns, raw.__name__, raw.__defaults__, raw.__closure__)
            fn.__qualname__, fn.__module__, fn.__doc__ = raw.__qualname__, raw.__module__, raw.__doc__
            fn.__kwdefaults__ = raw.__kwdefaults__
            fn.__annotations__ = dict(raw.__annotations__)
            for arg in _FP64_ARGS.get(raw.__name__, ()):
                fn.__annotations__[arg] = tl.float64
            kw = {"do_not_specialize": ["n"]} if raw.__name__ == "_steps_kernel" else {}
            if not interpret:
                ns[raw.__name__] = JITFunction(fn, **kw)
            elif raw.__name__.endswith("_kernel"):
                ns[raw.__name__] = InterpretedFunction(fn, **kw)
            else:
                # A helper: the interpreter's AST-rewritten function, called directly. (Called as an
                # InterpretedFunction it would re-patch triton.language on every call, which dominates the
                # run time; the launch of the enclosing kernel has patched it already.)
                ns[raw.__name__] = InterpretedFunction(fn, **kw).rewrite()
        _MODES[interpret] = ns
    return ns


def _mode(device):
    if device.type == "cpu":
        return True, INTERPRET_BLOCK, INTERPRET_CHUNK
    if device.type != "cuda":
        raise ValueError(f"fusedreg triton: runs CUDA tensors (and CPU tensors, interpreted), got {device}")
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("fusedreg's Triton kernels read tensors through address tables, which Triton's "
                           "interpreter (TRITON_INTERPRET=1) can only do for CPU tensors; move the tensors to "
                           "the CPU or unset TRITON_INTERPRET")
    return False, BLOCK, CHUNK


_CACHE = OrderedDict()
_CACHE_SIZE = 64


def _plan(kind, device, chunk, cols, steps):
    """The chunk tables for one call, cached: [(constexpr dtypes, rows, n_chunks, aligned)], steps table."""
    key = (kind, device, chunk,
           tuple(tuple(map(torch.Tensor.data_ptr, c)) for c in cols),
           tuple(tuple(t.dtype for t in c) for c in cols),
           tuple(map(torch.Tensor.numel, cols[0])),
           tuple(map(torch.Tensor.data_ptr, steps)) if steps is not None else None,
           tuple(t.dtype for t in steps) if steps is not None else None)
    plan = _CACHE.get(key)
    if plan is not None:
        _CACHE.move_to_end(key)
        return plan
    plan = _build_plan(device, chunk, cols, steps)
    _CACHE[key] = plan
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return plan


def _build_plan(device, chunk, cols, steps):
    params = cols[0]
    for c in cols[1:]:
        for p, t in zip(params, c):
            if t.numel() != p.numel():
                raise ValueError(f"fusedreg triton: a tensor of shape {tuple(t.shape)} goes with a param of shape "
                                 f"{tuple(p.shape)}")
    for c in cols:
        for t in c:
            if t.device != device:
                raise ValueError(f"fusedreg triton: all tensors must be on one device, got {t.device} and {device}")
            if t.dtype not in _TL_DTYPES:
                raise TypeError(f"fusedreg triton: unsupported dtype {t.dtype} (float32, bfloat16, float16, "
                                f"float64 only)")
    if steps is not None:
        for s in steps:
            if s.device != device or s.numel() != 1 or not s.dtype.is_floating_point:
                raise ValueError(f"fusedreg triton: state_steps must be 1-element float tensors on {device}, "
                                 f"got {s.dtype} of shape {tuple(s.shape)} on {s.device}")
    groups = {}
    for i, p in enumerate(params):
        if p.numel() == 0:
            continue
        sig = tuple(c[i].dtype for c in cols) + ((steps[i].dtype,) if steps is not None else ())
        groups.setdefault(sig, []).append(i)
    out = []
    for sig, idx in groups.items():
        addrs = torch.zeros(len(idx), 6, dtype=torch.int64)
        esize = torch.zeros(6, dtype=torch.int64)
        for k, c in enumerate(cols):
            addrs[:, k] = torch.tensor([c[i].data_ptr() for i in idx], dtype=torch.int64)
            esize[k] = c[idx[0]].element_size()
        if steps is not None:
            addrs[:, 5] = torch.tensor([steps[i].data_ptr() for i in idx], dtype=torch.int64)
        numel = torch.tensor([params[i].numel() for i in idx], dtype=torch.int64)
        nchunks = (numel + chunk - 1) // chunk
        owner = torch.repeat_interleave(torch.arange(len(idx)), nchunks)
        first = torch.cumsum(nchunks, 0) - nchunks
        start = (torch.arange(int(nchunks.sum())) - first[owner]) * chunk
        rows = torch.zeros(len(owner), _ROW, dtype=torch.int64)
        rows[:, :6] = addrs[owner] + start[:, None] * esize[None, :]
        rows[:, 6] = torch.clamp_max(numel[owner] - start, chunk)
        aligned = bool((rows[:, :5] % _ALIGN == 0).all())
        dts = tuple(_TL_DTYPES[d] for d in sig)
        out.append((dts, rows.reshape(-1).to(device), len(owner), aligned))
    step_table = None
    if steps is not None and len(steps):
        by_dtype = {}
        for s in steps:
            by_dtype.setdefault(s.dtype, []).append(s.data_ptr())
        step_table = [(_TL_DTYPES[d], torch.tensor(a, dtype=torch.int64).to(device), len(a))
                      for d, a in by_dtype.items()]
    return out, step_table


def _dense(lists):
    """Swap non-contiguous tensors for contiguous copies: (lists, [(original, copy)] to write back)."""
    back = []
    done = {}  # an unused column is another column's list: reuse its copies, or a stale copy is written back last
    for k, lst in enumerate(lists):
        if id(lst) in done or all(map(torch.Tensor.is_contiguous, lst)):
            done.setdefault(id(lst), lst)
            continue
        new = []
        for t in lst:
            c = t.contiguous()
            if c is not t and k != 1:  # grads are only read
                back.append((t, c))
            new.append(c)
        done[id(lst)] = new
    return [done[id(lst)] for lst in lists], back


def _scalar_tensor(t, device, name):
    if t is None:
        return None
    if t.device != device or t.numel() != 1:
        raise ValueError(f"fusedreg triton: {name} must be a 1-element tensor on {device}")
    return t


def _run(kind, cols, steps, scalars, flags, grad_scale, found_inf):
    params = cols[0]
    if not params:
        return
    device = params[0].device
    interpret, block, chunk = _mode(device)
    if steps is not None and len(steps) != len(params):
        raise ValueError("fusedreg triton: state_steps must have one tensor per param")
    cols, back = _dense(cols)
    gs = _scalar_tensor(grad_scale, device, "grad_scale")
    fi = _scalar_tensor(found_inf, device, "found_inf")
    groups, step_table = _plan(kind, device, chunk, cols, steps)
    ns = _kernels(interpret)
    launch = {} if interpret else {"num_warps": NUM_WARPS, "enable_fp_fusion": False}
    # Interpreted, masked-off lanes compute on zeros (0/0 in numpy warns); compiled, launch on the tensors' GPU.
    with _quiet_numpy() if interpret else torch.cuda.device(device):
        _launch(ns, kind, groups, step_table, scalars, flags, gs, fi, interpret, block, chunk, launch)
    for t, c in back:
        t.copy_(c)


def _quiet_numpy():
    import numpy as np
    return np.errstate(all="ignore")


def _launch(ns, kind, groups, step_table, scalars, flags, gs, fi, interpret, block, chunk, launch):
    if step_table is not None:
        for sdt, addrs, n in step_table:
            ns["_steps_kernel"][(triton.cdiv(n, 256),)](addrs, n, fi, S_DT=sdt, HAS_FI=fi is not None, BLOCK=256)
    kernel = ns[f"_{kind}_kernel"]
    for dts, rows, n_chunks, aligned in groups:
        cdt = tl.float64 if dts[0] == tl.float64 else tl.float32
        kernel[(n_chunks,)](rows, gs, fi, *scalars, *dts, cdt, gs is not None, fi is not None, *flags,
                            ALIGNED=aligned and not interpret, BLOCK=block, CHUNK=chunk, **launch)


_GROUP_KIND = {"sgd": 0, "adam": 1, "adagrad": 2}


def _groups(kind, params, xs, steps, lr, group_l1, group_dim, l2, beta2, lr_decay, eps, found_inf):
    """The group prox after the op's kernel: one launch per param with dim >= 2, one program per group.
    xs: the state the denominators come from (Adam's v_hat, Adagrad's sum), None for SGD."""
    if group_l1 == 0 or lr * group_l1 == 0:
        return
    for i, p in enumerate(params):
        if p.dim() < 2 or p.numel() == 0:
            continue
        interpret, block, _ = _mode(p.device)
        ns = _kernels(interpret)
        pc = p.contiguous()
        x = xs[i].contiguous() if xs is not None else pc
        s = steps[i] if steps is not None else pc
        d0, d1 = p.shape[0], p.shape[1]
        rest = p.numel() // (d0 * d1)
        A, G, K = (1, d0, d1 * rest) if group_dim == 0 else (d0, d1, rest)
        fi = _scalar_tensor(found_inf, p.device, "found_inf")
        launch = {} if interpret else {"num_warps": NUM_WARPS, "enable_fp_fusion": False}
        with _quiet_numpy() if interpret else torch.cuda.device(p.device):
            ns["_group_kernel"][(G,)](pc, x, s, fi, A, G, K, float(lr), float(group_l1), float(l2), float(beta2),
                                      float(lr_decay), float(eps), _TL_DTYPES[p.dtype], _TL_DTYPES[x.dtype],
                                      _TL_DTYPES[s.dtype], tl.float64 if p.dtype == torch.float64 else tl.float32,
                                      _GROUP_KIND[kind], l2 != 0, fi is not None, BLOCK=block, **launch)
        if pc is not p:
            p.copy_(pc)


def _check_lists(n, *lists):
    for lst in lists:
        if len(lst) != n:
            raise ValueError("fusedreg triton: the tensor lists must have one entry per param")


def _sgd_impl(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov, maximize,
              first_step, l1, l1_subgradient, l2, l0, nonneg, group_l1=0.0, group_dim=0, grad_scale=None,
              found_inf=None, lr_tensor=None):
    reference.check_group_dim(group_dim)
    lr = reference.op_lr(lr, lr_tensor)
    params, grads = list(params), list(grads)
    _check_lists(len(params), grads)
    use_momentum = momentum != 0
    cols = [params, grads]
    if use_momentum:
        _check_lists(len(params), momentum_buffers)
        cols.append(list(momentum_buffers))
    else:
        cols.append(params)  # an unused column: point it at the params (never read or written)
    scalars = [float(x) for x in (lr, momentum, dampening, weight_decay, l1, l2, l0)]
    flags = (bool(maximize), bool(l1_subgradient), bool(nonneg), use_momentum, bool(nesterov),
             bool(first_step) and use_momentum)
    _run("sgd", cols, None, scalars, flags, grad_scale, found_inf)
    _groups("sgd", params, None, None, lr, group_l1, group_dim, l2, 0.0, 0.0, 0.0, found_inf)


def _adam_impl(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2, eps,
               weight_decay, decoupled, amsgrad, maximize, l1, l1_subgradient, l2, l0, nonneg, group_l1=0.0,
               group_dim=0, grad_scale=None, found_inf=None, lr_tensor=None):
    reference.check_group_dim(group_dim)
    lr = reference.op_lr(lr, lr_tensor)
    params = list(params)
    n = len(params)
    _check_lists(n, grads, exp_avgs, exp_avg_sqs)
    cols = [params, list(grads), list(exp_avgs), list(exp_avg_sqs)]
    if amsgrad:
        _check_lists(n, max_exp_avg_sqs)
        cols.append(list(max_exp_avg_sqs))
    else:
        cols.append(cols[3])  # unused column
    scalars = [float(x) for x in (lr, beta1, beta2, eps, weight_decay, l1, l2, l0)]
    flags = (bool(maximize), bool(l1_subgradient), bool(nonneg), bool(decoupled), bool(amsgrad))
    _run("adam", cols, list(state_steps), scalars, flags, grad_scale, found_inf)
    _groups("adam", params, cols[4] if amsgrad else cols[3], list(state_steps), lr, group_l1, group_dim, l2, beta2,
            0.0, eps, found_inf)


def _adagrad_impl(params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize,
                  l1, l1_subgradient, l2, l0, nonneg, group_l1=0.0, group_dim=0, grad_scale=None, found_inf=None,
                  lr_tensor=None):
    reference.check_group_dim(group_dim)
    lr = reference.op_lr(lr, lr_tensor)
    params = list(params)
    _check_lists(len(params), grads, state_sums)
    cols = [params, list(grads), list(state_sums)]
    scalars = [float(x) for x in (lr, lr_decay, eps, weight_decay, l1, l2, l0)]
    flags = (bool(maximize), bool(l1_subgradient), bool(nonneg))
    _run("adagrad", cols, list(state_steps), scalars, flags, grad_scale, found_inf)
    _groups("adagrad", params, cols[2], list(state_steps), lr, group_l1, group_dim, l2, 0.0, lr_decay, eps,
            found_inf)


# --------------------------------------------------------------------------------------------------------------
# Public entry points (the signatures of fusedreg.reference) and the custom ops torch.compile sees.

def _compiling():
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # older torch
        return False


def sgd_(params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov, maximize, first_step,
         l1, l1_subgradient, l2, l0, nonneg, group_l1=0.0, group_dim=0, grad_scale=None, found_inf=None,
         lr_tensor=None):
    args = (params, grads, momentum_buffers, lr, momentum, dampening, weight_decay, nesterov, maximize, first_step,
            l1, l1_subgradient, l2, l0, nonneg, group_l1, group_dim, grad_scale, found_inf, lr_tensor)
    if _compiling() and _REGISTERED:
        return torch.ops.fusedreg.triton_sgd_(*args)
    _sgd_impl(*args)


def adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2, eps,
          weight_decay, decoupled, amsgrad, maximize, l1, l1_subgradient, l2, l0, nonneg, group_l1=0.0,
          group_dim=0, grad_scale=None, found_inf=None, lr_tensor=None):
    args = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1, beta2, eps,
            weight_decay, decoupled, amsgrad, maximize, l1, l1_subgradient, l2, l0, nonneg, group_l1, group_dim,
            grad_scale, found_inf, lr_tensor)
    if _compiling() and _REGISTERED:
        return torch.ops.fusedreg.triton_adam_(*args)
    _adam_impl(*args)


def adagrad_(params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize,
             l1, l1_subgradient, l2, l0, nonneg, group_l1=0.0, group_dim=0, grad_scale=None, found_inf=None,
             lr_tensor=None):
    args = (params, grads, state_sums, state_steps, lr, lr_decay, weight_decay, eps, maximize,
            l1, l1_subgradient, l2, l0, nonneg, group_l1, group_dim, grad_scale, found_inf, lr_tensor)
    if _compiling() and _REGISTERED:
        return torch.ops.fusedreg.triton_adagrad_(*args)
    _adagrad_impl(*args)


def _register():
    impls = {"sgd_": _sgd_impl, "adam_": _adam_impl, "adagrad_": _adagrad_impl}
    for name, schema in _ops.SCHEMAS.items():
        qualname = f"{_ops.LIB}::triton_{name}"
        try:
            torch.library.define(qualname, "(" + schema.split("(", 1)[1])
        except RuntimeError:  # already defined (module reloaded)
            return True
        torch.library.impl(qualname, "CompositeExplicitAutograd")(impls[name])
        torch.library.register_fake(qualname)(lambda *args, **kwargs: None)
    return True


try:
    _REGISTERED = _register()
except Exception:  # registration is only for torch.compile; the plain functions work without it
    _REGISTERED = False
