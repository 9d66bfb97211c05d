"""FTRL-Proximal (TensorFlow's / Keras's Ftrl, fusedreg.reference.ftrl_) on Triton: the kernel, one chunk per
program, and the host entry `ftrl_`."""
import torch
import triton
import triton.language as tl

from .. import _ops, reference
from . import group, launch
from .launch import chunk_row, col, targets
from .math import f64, ftrl_update, penalties, store


@triton.jit
def ftrl_piece(p_ptr, g_ptr, n_ptr, z_ptr, offs, at, mask, gs, lr, neg_power, beta, l2_shrinkage, l1, l2, pen,
               pen_prox, CDT: tl.constexpr, HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, PEN: tl.constexpr,
               POWER: tl.constexpr):
    # offs: the grad's elements; at: the param's and state's (the same unless the grads are sparse rows)
    p = tl.load(p_ptr + at, mask=mask).to(CDT)
    g = tl.load(g_ptr + offs, mask=mask).to(CDT)
    n = tl.load(n_ptr + at, mask=mask)
    z = tl.load(z_ptr + at, mask=mask)
    p, n, z = ftrl_update(p, g, n, z, gs, lr=lr, neg_power=neg_power, beta=beta, l2_shrinkage=l2_shrinkage, l1=l1,
                          l2=l2, pen=pen, pen_prox=pen_prox, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN, POWER=POWER)
    store(n_ptr + at, n, mask)
    store(z_ptr + at, z, mask)
    store(p_ptr + at, p, mask)


@triton.jit
def ftrl_kernel(rows, grad_scale, found_inf, lr: tl.float64, neg_power: tl.float64, beta: tl.float64,
                l2_shrinkage: tl.float64, l1: tl.float64, l2: tl.float64, pen, pen_prox,
                P_DT: tl.constexpr, CDT: tl.constexpr, HAS_GS: tl.constexpr, HAS_FI: tl.constexpr,
                MAXIMIZE: tl.constexpr, PEN: tl.constexpr, POWER: tl.constexpr,
                ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr, SPARSE: tl.constexpr = False):
    row, n = chunk_row(rows, found_inf, HAS_FI)
    p_ptr = col(row, 0, P_DT, ALIGNED)
    g_ptr = col(row, 1, P_DT, ALIGNED)
    n_ptr = col(row, 2, CDT, ALIGNED)
    z_ptr = col(row, 3, CDT, ALIGNED)
    gs = 1.0
    if HAS_GS:
        gs = tl.load(grad_scale).to(CDT)
    lr = f64(lr)
    neg_power = f64(neg_power)
    beta = f64(beta)
    l2_shrinkage = f64(l2_shrinkage)
    l1 = f64(l1)
    l2 = f64(l2)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        at = targets(row, offs, n, SPARSE)
        if start + BLOCK <= n:
            ftrl_piece(p_ptr, g_ptr, n_ptr, z_ptr, offs, at, None, gs, lr=lr, neg_power=neg_power, beta=beta,
                       l2_shrinkage=l2_shrinkage, l1=l1, l2=l2, pen=pen, pen_prox=pen_prox, CDT=CDT, HAS_GS=HAS_GS,
                       MAXIMIZE=MAXIMIZE, PEN=PEN, POWER=POWER)
        elif start < n:
            ftrl_piece(p_ptr, g_ptr, n_ptr, z_ptr, offs, at, offs < n, gs, lr=lr, neg_power=neg_power, beta=beta,
                       l2_shrinkage=l2_shrinkage, l1=l1, l2=l2, pen=pen, pen_prox=pen_prox, CDT=CDT, HAS_GS=HAS_GS,
                       MAXIMIZE=MAXIMIZE, PEN=PEN, POWER=POWER)


def ftrl_(params, grads, accumulators, linears, lr, lr_power=-0.5, beta=0.0, l2_shrinkage=0.0, maximize=False,
          group_l1=0.0, group_dim=0, grad_scale=None, found_inf=None, lr_tensor=None, rows=None, **pen):
    """fusedreg.reference.ftrl_ on Triton (the arguments: fusedreg._ops.ARGS["ftrl_"]; pen: the elementwise
    penalties)."""
    kw = {k: v for k, v in locals().items() if k != "pen"}
    if torch.compiler.is_compiling():
        return torch.ops.fusedreg.triton_ftrl_(**kw, **pen)
    _ops.check("ftrl_", **kw, **pen)
    if rows and params[0].device.type == "cpu":  # read on the host only where that costs no device sync
        _ops.rows_ok("ftrl_", params, rows)
    lr = float(reference.op_lr(lr, lr_tensor))
    if lr == 0:  # no step (FTRL divides by lr), as the reference
        return
    device = params[0].device if params else None
    pens, flags = penalties(device, **pen)
    pen_prox, _ = penalties(device, **reference.ftrl_prox(pen))
    l1 = 0.0 if pen.get("l1_subgradient") else float(pen.get("l1", 0.0))
    power = 0 if lr_power == -0.5 else 1 if lr_power == 0 else 2
    launch.run(ftrl_kernel, [params, grads, accumulators, linears], [], grad_scale, found_inf,
               index=rows or None, lr=lr, neg_power=-float(lr_power), beta=float(beta),
               l2_shrinkage=float(l2_shrinkage), l1=l1, l2=float(pen.get("l2", 0.0)), pen=pens, pen_prox=pen_prox,
               PEN=flags, POWER=power, MAXIMIZE=bool(maximize))
    group.prox(group.FTRL, params, accumulators, lr=lr, group_l1=group_l1, group_dim=group_dim,
               l2=pen.get("l2", 0.0), found_inf=found_inf, beta=beta, neg_power=-float(lr_power), power=power)
