"""Muon (torch.optim.Muon's math, with the fused penalties) on Triton: the kernels of its two ops, one chunk per
program, and their host entries `muon_momentum_` (before the orthogonalization) and `muon_` (after it)."""
import torch
import triton
import triton.language as tl

from .. import _ops, reference
from . import group, launch
from .launch import chunk_row, col
from .math import f64, muon_momentum_update, muon_update, penalties, store


@triton.jit
def momentum_piece(p_ptr, g_ptr, b_ptr, u_ptr, offs, mask, gs, momentum, pen, CDT: tl.constexpr,
                   HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, PEN: tl.constexpr, NESTEROV: tl.constexpr):
    p = tl.load(p_ptr + offs, mask=mask).to(CDT)
    g = tl.load(g_ptr + offs, mask=mask).to(CDT)
    buf = tl.load(b_ptr + offs, mask=mask)
    buf, update = muon_momentum_update(p, g, buf, gs, momentum=momentum, pen=pen, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE,
                                       PEN=PEN, NESTEROV=NESTEROV)
    store(b_ptr + offs, buf, mask)
    if NESTEROV:
        store(u_ptr + offs, update, mask)


@triton.jit
def muon_momentum_kernel(rows, grad_scale, found_inf, momentum: tl.float64, pen,
                         P_DT: tl.constexpr, CDT: tl.constexpr, HAS_GS: tl.constexpr, HAS_FI: tl.constexpr,
                         MAXIMIZE: tl.constexpr, PEN: tl.constexpr, NESTEROV: tl.constexpr,
                         ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    row, n = chunk_row(rows, found_inf, HAS_FI)
    p_ptr = col(row, 0, P_DT, ALIGNED)
    g_ptr = col(row, 1, P_DT, ALIGNED)
    b_ptr = col(row, 2, CDT, ALIGNED)
    u_ptr = col(row, 3, CDT, ALIGNED)
    gs = 1.0
    if HAS_GS:
        gs = tl.load(grad_scale).to(CDT)
    momentum = f64(momentum)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            momentum_piece(p_ptr, g_ptr, b_ptr, u_ptr, offs, None, gs, momentum=momentum, pen=pen, CDT=CDT,
                           HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN, NESTEROV=NESTEROV)
        elif start < n:
            momentum_piece(p_ptr, g_ptr, b_ptr, u_ptr, offs, offs < n, gs, momentum=momentum, pen=pen, CDT=CDT,
                           HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN, NESTEROV=NESTEROV)


@triton.jit
def muon_piece(p_ptr, u_ptr, offs, mask, gs, lr, lr_ratio, weight_decay, pen, CDT: tl.constexpr,
               HAS_GS: tl.constexpr, PEN: tl.constexpr):
    p = tl.load(p_ptr + offs, mask=mask).to(CDT)
    u = tl.load(u_ptr + offs, mask=mask).to(CDT)
    p = muon_update(p, u, gs, lr=lr, lr_ratio=lr_ratio, weight_decay=weight_decay, pen=pen, HAS_GS=HAS_GS, PEN=PEN)
    store(p_ptr + offs, p, mask)


@triton.jit
def muon_kernel(rows, grad_scale, found_inf, lr: tl.float64, lr_ratio: tl.float64, weight_decay: tl.float64, pen,
                P_DT: tl.constexpr, CDT: tl.constexpr, HAS_GS: tl.constexpr, HAS_FI: tl.constexpr, PEN: tl.constexpr,
                ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    row, n = chunk_row(rows, found_inf, HAS_FI)
    p_ptr = col(row, 0, P_DT, ALIGNED)
    u_ptr = col(row, 1, P_DT, ALIGNED)
    gs = 1.0
    if HAS_GS:
        gs = tl.load(grad_scale).to(CDT)
    lr = f64(lr)
    lr_ratio = f64(lr_ratio)
    weight_decay = f64(weight_decay)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            muon_piece(p_ptr, u_ptr, offs, None, gs, lr=lr, lr_ratio=lr_ratio, weight_decay=weight_decay, pen=pen,
                       CDT=CDT, HAS_GS=HAS_GS, PEN=PEN)
        elif start < n:
            muon_piece(p_ptr, u_ptr, offs, offs < n, gs, lr=lr, lr_ratio=lr_ratio, weight_decay=weight_decay,
                       pen=pen, CDT=CDT, HAS_GS=HAS_GS, PEN=PEN)


def muon_momentum_(params, grads, momentum_buffers, updates, momentum=0.95, nesterov=True, maximize=False,
                   grad_scale=None, found_inf=None, **pen):
    """fusedreg.reference.muon_momentum_ on Triton (the arguments: fusedreg._ops.ARGS["muon_momentum_"]; pen: l1
    and l1_subgradient)."""
    kw = {k: v for k, v in locals().items() if k != "pen"}
    if torch.compiler.is_compiling():
        return torch.ops.fusedreg.triton_muon_momentum_(**kw, **pen)
    _ops.check("muon_momentum_", **kw, **pen)
    pens, flags = penalties(params[0].device if params else None, **pen)
    # Without nesterov the update column repeats the buffers: never written
    launch.run(muon_momentum_kernel, [params, grads, momentum_buffers, updates if nesterov else momentum_buffers],
               [], grad_scale, found_inf, momentum=float(momentum), pen=pens, PEN=flags, MAXIMIZE=bool(maximize),
               NESTEROV=bool(nesterov))


def muon_(params, grads, lr, lr_ratio=1.0, weight_decay=0.0, group_l1=0.0, group_dim=0, grad_scale=None,
          found_inf=None, lr_tensor=None, **pen):
    """fusedreg.reference.muon_ on Triton (the arguments: fusedreg._ops.ARGS["muon_"]; pen: the elementwise
    penalties)."""
    kw = {k: v for k, v in locals().items() if k != "pen"}
    if torch.compiler.is_compiling():
        return torch.ops.fusedreg.triton_muon_(**kw, **pen)
    _ops.check("muon_", **kw, **pen)
    lr = float(reference.op_lr(lr, lr_tensor))
    pens, flags = penalties(params[0].device if params else None, **pen)
    launch.run(muon_kernel, [params, grads], [], grad_scale, found_inf, lr=lr, lr_ratio=float(lr_ratio),
               weight_decay=float(weight_decay), pen=pens, PEN=flags)
    group.prox(group.SGD, params, lr=lr, group_l1=group_l1, group_dim=group_dim, l2=pen.get("l2", 0.0),
               found_inf=found_inf)
