"""Lion (lion-pytorch's math, with the fused penalties) on Triton: the kernel, one chunk per program, and the host
entry `lion_`."""
import torch
import triton
import triton.language as tl

from .. import _ops, reference
from . import group, launch
from .launch import chunk_row, col
from .math import f64, lion_update, penalties, store


@triton.jit
def lion_piece(p_ptr, g_ptr, m_ptr, offs, mask, gs, lr, beta1, beta2, weight_decay, pen, CDT: tl.constexpr,
               HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, PEN: tl.constexpr):
    p = tl.load(p_ptr + offs, mask=mask).to(CDT)
    g = tl.load(g_ptr + offs, mask=mask).to(CDT)
    m = tl.load(m_ptr + offs, mask=mask)
    p, m = lion_update(p, g, m, gs, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, pen=pen,
                       HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)
    store(m_ptr + offs, m, mask)
    store(p_ptr + offs, p, mask)


@triton.jit
def lion_kernel(rows, grad_scale, found_inf, lr: tl.float64, beta1: tl.float64, beta2: tl.float64,
                weight_decay: tl.float64, pen,
                P_DT: tl.constexpr, CDT: tl.constexpr, HAS_GS: tl.constexpr, HAS_FI: tl.constexpr,
                MAXIMIZE: tl.constexpr, PEN: tl.constexpr,
                ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    row, n = chunk_row(rows, found_inf, HAS_FI)
    p_ptr = col(row, 0, P_DT, ALIGNED)
    g_ptr = col(row, 1, P_DT, ALIGNED)
    m_ptr = col(row, 2, CDT, ALIGNED)
    gs = 1.0
    if HAS_GS:
        gs = tl.load(grad_scale).to(CDT)
    lr = f64(lr)
    beta1 = f64(beta1)
    beta2 = f64(beta2)
    weight_decay = f64(weight_decay)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            lion_piece(p_ptr, g_ptr, m_ptr, offs, None, gs, lr=lr, beta1=beta1, beta2=beta2,
                       weight_decay=weight_decay, pen=pen, CDT=CDT, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)
        elif start < n:
            lion_piece(p_ptr, g_ptr, m_ptr, offs, offs < n, gs, lr=lr, beta1=beta1, beta2=beta2,
                       weight_decay=weight_decay, pen=pen, CDT=CDT, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)


def lion_(params, grads, exp_avgs, lr, beta1=0.9, beta2=0.99, weight_decay=0.0, maximize=False, group_l1=0.0,
          group_dim=0, grad_scale=None, found_inf=None, lr_tensor=None, **pen):
    """fusedreg.reference.lion_ on Triton (the arguments: fusedreg._ops.ARGS["lion_"]; pen: the elementwise
    penalties)."""
    kw = {k: v for k, v in locals().items() if k != "pen"}
    if torch.compiler.is_compiling():
        return torch.ops.fusedreg.triton_lion_(**kw, **pen)
    _ops.check("lion_", **kw, **pen)
    lr = float(reference.op_lr(lr, lr_tensor))
    pens, flags = penalties(params[0].device if params else None, **pen)
    launch.run(lion_kernel, [params, grads, exp_avgs], [], grad_scale, found_inf,
               lr=lr, beta1=float(beta1), beta2=float(beta2), weight_decay=float(weight_decay),
               pen=pens, PEN=flags, MAXIMIZE=bool(maximize))
    group.prox(group.SGD, params, lr=lr, group_l1=group_l1, group_dim=group_dim, l2=pen.get("l2", 0.0),
               found_inf=found_inf)
