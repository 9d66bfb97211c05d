"""Adam / AdamW (torch.optim.Adam's math, with the fused penalties) on Triton: the kernel, one chunk per program,
and the host entry `adam_`."""
import torch
import triton
import triton.language as tl

from .. import _ops, reference
from . import group, launch
from .launch import STEP, chunk_row, col
from .math import adam_bc2_sqrt, adam_lr_bc1, adam_update, f64, penalties, store


@triton.jit
def adam_piece(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, offs, mask, gs, lr, beta1, beta2, eps, weight_decay, pen,
               lr_bc1, bc2_sqrt, CDT: tl.constexpr, HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr,
               PEN: tl.constexpr, DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr):
    p = tl.load(p_ptr + offs, mask=mask).to(CDT)
    g = tl.load(g_ptr + offs, mask=mask).to(CDT)
    m = tl.load(m_ptr + offs, mask=mask)
    v = tl.load(v_ptr + offs, mask=mask)
    vmax = v
    if AMSGRAD:
        vmax = tl.load(x_ptr + offs, mask=mask)
    p, m, v, vmax = adam_update(p, g, m, v, vmax, gs, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                weight_decay=weight_decay, pen=pen, lr_bc1=lr_bc1, bc2_sqrt=bc2_sqrt,
                                HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN,
                                DECOUPLED=DECOUPLED, AMSGRAD=AMSGRAD)
    store(m_ptr + offs, m, mask)
    store(v_ptr + offs, v, mask)
    if AMSGRAD:
        store(x_ptr + offs, vmax, mask)
    store(p_ptr + offs, p, mask)


@triton.jit
def adam_kernel(rows, grad_scale, found_inf, lr: tl.float64, beta1: tl.float64, beta2: tl.float64,
                eps: tl.float64, weight_decay: tl.float64, pen,
                P_DT: tl.constexpr, CDT: tl.constexpr, HAS_GS: tl.constexpr, HAS_FI: tl.constexpr,
                MAXIMIZE: tl.constexpr, PEN: tl.constexpr, DECOUPLED: tl.constexpr,
                AMSGRAD: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    row, n = chunk_row(rows, found_inf, HAS_FI)
    p_ptr = col(row, 0, P_DT, ALIGNED)
    g_ptr = col(row, 1, P_DT, ALIGNED)
    m_ptr = col(row, 2, CDT, ALIGNED)
    v_ptr = col(row, 3, CDT, ALIGNED)
    x_ptr = col(row, 4, CDT, ALIGNED)
    gs = 1.0
    if HAS_GS:
        gs = tl.load(grad_scale).to(CDT)
    lr = f64(lr)
    beta1 = f64(beta1)
    beta2 = f64(beta2)
    # The step was already advanced by launch.steps_kernel.
    step = tl.load(col(row, STEP, tl.float32, False)).to(tl.float64)
    lr_bc1 = adam_lr_bc1(lr, beta1, step).to(CDT)
    bc2_sqrt = adam_bc2_sqrt(beta2, step).to(CDT)
    eps = f64(eps)
    weight_decay = f64(weight_decay)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        if start + BLOCK <= n:
            adam_piece(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, offs, None, gs, lr=lr, beta1=beta1, beta2=beta2,
                       eps=eps, weight_decay=weight_decay, pen=pen, lr_bc1=lr_bc1, bc2_sqrt=bc2_sqrt,
                       CDT=CDT, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN,
                       DECOUPLED=DECOUPLED, AMSGRAD=AMSGRAD)
        elif start < n:
            adam_piece(p_ptr, g_ptr, m_ptr, v_ptr, x_ptr, offs, offs < n, gs, lr=lr, beta1=beta1, beta2=beta2,
                       eps=eps, weight_decay=weight_decay, pen=pen, lr_bc1=lr_bc1, bc2_sqrt=bc2_sqrt,
                       CDT=CDT, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN,
                       DECOUPLED=DECOUPLED, AMSGRAD=AMSGRAD)


def adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1=0.9, beta2=0.999,
          eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False, maximize=False, group_l1=0.0, group_dim=0,
          grad_scale=None, found_inf=None, lr_tensor=None, **pen):
    """fusedreg.reference.adam_ on Triton (the arguments: fusedreg._ops.ARGS["adam_"]; pen: the elementwise
    penalties)."""
    kw = {k: v for k, v in locals().items() if k != "pen"}
    if torch.compiler.is_compiling():
        return torch.ops.fusedreg.triton_adam_(**kw, **pen)
    _ops.check("adam_", **kw, **pen)
    lr = float(reference.op_lr(lr, lr_tensor))
    vhat = max_exp_avg_sqs if amsgrad else exp_avg_sqs  # the unused column repeats a list: never read
    pens, flags = penalties(params[0].device if params else None, **pen)
    launch.run(adam_kernel, [params, grads, exp_avgs, exp_avg_sqs, vhat], state_steps, grad_scale, found_inf,
               lr=lr, beta1=float(beta1), beta2=float(beta2), eps=float(eps), weight_decay=float(weight_decay),
               pen=pens, PEN=flags, MAXIMIZE=bool(maximize), DECOUPLED=bool(decoupled), AMSGRAD=bool(amsgrad))
    group.prox(group.ADAM, params, vhat, state_steps, lr=lr, group_l1=group_l1, group_dim=group_dim,
               l2=pen.get("l2", 0.0), found_inf=found_inf, beta2=beta2, eps=eps,
               l1_decoupled=pen.get("l1_decoupled", False))
