"""Adagrad (torch.optim.Adagrad's math, with the fused penalties) on Triton: the kernel, one chunk per program,
and the host entry `adagrad_`."""
import torch
import triton
import triton.language as tl

from .. import _ops, reference
from . import group, launch
from .launch import STEP, chunk_row, col, targets
from .math import adagrad_clr, adagrad_update, f64, penalties, store


@triton.jit
def adagrad_piece(p_ptr, g_ptr, s_ptr, offs, at, mask, gs, clr, eps, weight_decay, pen, CDT: tl.constexpr,
                  HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, PEN: tl.constexpr):
    # offs: the grad's elements; at: the param's and state's (the same unless the grads are sparse rows)
    p = tl.load(p_ptr + at, mask=mask).to(CDT)
    g = tl.load(g_ptr + offs, mask=mask).to(CDT)
    s = tl.load(s_ptr + at, mask=mask)
    p, s = adagrad_update(p, g, s, gs, clr=clr, eps=eps, weight_decay=weight_decay, pen=pen,
                          HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)
    store(s_ptr + at, s, mask)
    store(p_ptr + at, p, mask)


@triton.jit
def adagrad_kernel(rows, grad_scale, found_inf, lr: tl.float64, lr_decay: tl.float64, weight_decay: tl.float64,
                   eps: tl.float64, pen,
                   P_DT: tl.constexpr, CDT: tl.constexpr, HAS_GS: tl.constexpr, HAS_FI: tl.constexpr,
                   MAXIMIZE: tl.constexpr, PEN: tl.constexpr,
                   ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr, SPARSE: tl.constexpr = False):
    row, n = chunk_row(rows, found_inf, HAS_FI)
    p_ptr = col(row, 0, P_DT, ALIGNED)
    g_ptr = col(row, 1, P_DT, ALIGNED)
    s_ptr = col(row, 2, CDT, ALIGNED)
    gs = 1.0
    if HAS_GS:
        gs = tl.load(grad_scale).to(CDT)
    # The step was already advanced by launch.steps_kernel.
    step = tl.load(col(row, STEP, tl.float32, False)).to(tl.float64)
    clr = adagrad_clr(f64(lr), f64(lr_decay), step)
    weight_decay = f64(weight_decay)
    eps = f64(eps)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        at = targets(row, offs, n, SPARSE)
        if start + BLOCK <= n:
            adagrad_piece(p_ptr, g_ptr, s_ptr, offs, at, None, gs, clr=clr, eps=eps, weight_decay=weight_decay,
                          pen=pen, CDT=CDT, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)
        elif start < n:
            adagrad_piece(p_ptr, g_ptr, s_ptr, offs, at, offs < n, gs, clr=clr, eps=eps, weight_decay=weight_decay,
                          pen=pen, CDT=CDT, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)


def adagrad_(params, grads, state_sums, state_steps, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
             maximize=False, group_l1=0.0, group_dim=0, grad_scale=None, found_inf=None, lr_tensor=None, rows=None,
             **pen):
    """fusedreg.reference.adagrad_ on Triton (the arguments: fusedreg._ops.ARGS["adagrad_"]; pen: the
    elementwise penalties)."""
    kw = {k: v for k, v in locals().items() if k != "pen"}
    if torch.compiler.is_compiling():
        return torch.ops.fusedreg.triton_adagrad_(**kw, **pen)
    _ops.check("adagrad_", **kw, **pen)
    if rows and params[0].device.type == "cpu":  # read on the host only where that costs no device sync
        _ops.rows_ok("adagrad_", params, rows)
    lr = float(reference.op_lr(lr, lr_tensor))
    pens, flags = penalties(params[0].device if params else None, **pen)
    launch.run(adagrad_kernel, [params, grads, state_sums], state_steps, grad_scale, found_inf, index=rows or None,
               lr=lr, lr_decay=float(lr_decay), weight_decay=float(weight_decay), eps=float(eps), pen=pens, PEN=flags,
               MAXIMIZE=bool(maximize))
    group.prox(group.ADAGRAD, params, state_sums, state_steps, lr=lr, group_l1=group_l1, group_dim=group_dim,
               l2=pen.get("l2", 0.0), found_inf=found_inf, lr_decay=lr_decay, eps=eps,
               l1_decoupled=pen.get("l1_decoupled", False))
