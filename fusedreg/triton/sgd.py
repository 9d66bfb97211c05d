"""SGD (torch.optim.SGD's math, with the fused penalties) on Triton: the kernel, one chunk per program, and the
host entry `sgd_`."""
import torch
import triton
import triton.language as tl

from .. import _ops, reference
from . import group, launch
from .launch import chunk_row, col, targets
from .math import f64, penalties, sgd_update, store


@triton.jit
def sgd_piece(p_ptr, g_ptr, b_ptr, offs, at, mask, gs, lr, momentum, dampening, weight_decay, pen,
              CDT: tl.constexpr, HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, PEN: tl.constexpr,
              MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, FIRST_STEP: tl.constexpr):
    # offs: the grad's elements; at: the param's and state's (the same unless the grads are sparse rows)
    p = tl.load(p_ptr + at, mask=mask).to(CDT)
    g = tl.load(g_ptr + offs, mask=mask).to(CDT)
    buf = p
    if MOMENTUM:
        if not FIRST_STEP:
            buf = tl.load(b_ptr + at, mask=mask)
    p, buf = sgd_update(p, g, buf, gs, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                        pen=pen, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN,
                        MOMENTUM=MOMENTUM, NESTEROV=NESTEROV, FIRST_STEP=FIRST_STEP)
    if MOMENTUM:
        store(b_ptr + at, buf, mask)
    store(p_ptr + at, p, mask)


@triton.jit
def sgd_kernel(rows, grad_scale, found_inf, lr: tl.float64, momentum: tl.float64, dampening: tl.float64,
               weight_decay: tl.float64, pen,
               P_DT: tl.constexpr, CDT: tl.constexpr, HAS_GS: tl.constexpr, HAS_FI: tl.constexpr,
               MAXIMIZE: tl.constexpr, PEN: tl.constexpr, MOMENTUM: tl.constexpr,
               NESTEROV: tl.constexpr, FIRST_STEP: tl.constexpr,
               ALIGNED: tl.constexpr, BLOCK: tl.constexpr, CHUNK: tl.constexpr, SPARSE: tl.constexpr = False):
    row, n = chunk_row(rows, found_inf, HAS_FI)
    p_ptr = col(row, 0, P_DT, ALIGNED)
    g_ptr = col(row, 1, P_DT, ALIGNED)
    b_ptr = col(row, 2, CDT, ALIGNED)
    gs = 1.0
    if HAS_GS:
        gs = tl.load(grad_scale).to(CDT)
    lr = f64(lr)
    momentum = f64(momentum)
    dampening = f64(dampening)
    weight_decay = f64(weight_decay)
    for start in range(0, CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        at = targets(row, offs, n, SPARSE)
        if start + BLOCK <= n:
            sgd_piece(p_ptr, g_ptr, b_ptr, offs, at, None, gs, lr=lr, momentum=momentum, dampening=dampening,
                      weight_decay=weight_decay, pen=pen, CDT=CDT, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE,
                      PEN=PEN, MOMENTUM=MOMENTUM, NESTEROV=NESTEROV, FIRST_STEP=FIRST_STEP)
        elif start < n:
            sgd_piece(p_ptr, g_ptr, b_ptr, offs, at, offs < n, gs, lr=lr, momentum=momentum, dampening=dampening,
                      weight_decay=weight_decay, pen=pen, CDT=CDT, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE,
                      PEN=PEN, MOMENTUM=MOMENTUM, NESTEROV=NESTEROV, FIRST_STEP=FIRST_STEP)


def sgd_(params, grads, momentum_buffers, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
         maximize=False, first_step=False, group_l1=0.0, group_dim=0, grad_scale=None, found_inf=None,
         lr_tensor=None, rows=None, **pen):
    """fusedreg.reference.sgd_ on Triton (the arguments: fusedreg._ops.ARGS["sgd_"]; pen: the elementwise
    penalties)."""
    kw = {k: v for k, v in locals().items() if k != "pen"}
    if torch.compiler.is_compiling():
        return torch.ops.fusedreg.triton_sgd_(**kw, **pen)
    _ops.check("sgd_", **kw, **pen)
    if rows and params[0].device.type == "cpu":  # read on the host only where that costs no device sync
        _ops.rows_ok("sgd_", params, rows)
    lr = float(reference.op_lr(lr, lr_tensor))
    on = momentum != 0
    pens, flags = penalties(params[0].device if params else None, **pen)
    launch.run(sgd_kernel, [params, grads, momentum_buffers if on else params], [], grad_scale, found_inf,
               index=rows or None,
               lr=lr, momentum=float(momentum), dampening=float(dampening), weight_decay=float(weight_decay),
               pen=pens, PEN=flags, MAXIMIZE=bool(maximize), MOMENTUM=on, NESTEROV=bool(nesterov),
               FIRST_STEP=bool(first_step) and on)
    group.prox(group.SGD, params, lr=lr, group_l1=group_l1, group_dim=group_dim, l2=pen.get("l2", 0.0),
               found_inf=found_inf)
