"""The group-lasso prox on Triton (fusedreg.reference.group_prox), launched after the op's kernel: the kernel,
one program per group, and `prox`, which every op's entry point calls.

A param with dim >= 2 is (A, G, K): element k of group g in outer slice a at (a*G + g)*K + k (rows: A = 1;
columns: A = size(0)). SGD shrinks each group by a scalar factor; Adam, Adagrad and Ftrl solve the metric prox
with the op's per-element denominators, read back from the state the op has just written (Adam's v_hat, Adagrad's
sum, Ftrl's accumulator n', whose q is the metric, with step 1), by Newton from the left (math.newton_*, at most
NEWTON_MAX_ITER steps). The param is read as just written, i.e. already rounded to its dtype, as in the native
kernels.
"""
import triton
import triton.language as tl

from . import launch
from .math import (NEWTON_MAX_ITER, adagrad_clr, adagrad_denom, adam_bc2_sqrt, adam_denom, f64, ftrl_power, ftrl_q,
                   group_a, group_scale, metric_factor, newton_start, newton_step, newton_terms, store)

SGD = tl.constexpr(0)
ADAM = tl.constexpr(1)
ADAGRAD = tl.constexpr(2)
FTRL = tl.constexpr(3)


@triton.jit
def offsets(gid, m, G, K, ROWS: tl.constexpr):
    # Rows (A = 1) are contiguous: no 64-bit division and modulo an element.
    if ROWS:
        return gid * K + m
    return (m // K * G + gid) * K + m % K


@triton.jit
def metric_a(state, offs, mask, c, c2, bc2_sqrt, eps, lr, beta, l2, neg_power, KIND: tl.constexpr,
             HAS_L2: tl.constexpr, POWER: tl.constexpr):
    """The a_i of the elements at offs, from the op's denominators (Ftrl's: lr, beta, l2, neg_power, POWER)."""
    x = tl.load(state + offs, mask=mask, other=1.0)
    if KIND == ADAM:
        denom = adam_denom(x, bc2_sqrt, eps)
    elif KIND == FTRL:
        denom = ftrl_q(ftrl_power(x, neg_power, POWER), lr, beta, l2)
    else:
        denom = adagrad_denom(x, eps)
    return group_a(c, denom, c2, HAS_L2)


@triton.jit
def values(param, offs, mask, CDT: tl.constexpr):
    # The param as stored, in fp64 after rounding to the compute dtype.
    return tl.load(param + offs, mask=mask, other=0.0).to(CDT).to(tl.float64)


# Unspecialized shape arguments: a 1 would become a constexpr (A is 1 for rows) and each shape class recompile.
@triton.jit(do_not_specialize=["A", "G", "K"])
def group_kernel(param, state, step_ptr, found_inf, A, G, K, lr: tl.float64, group_l1: tl.float64,
                 l2: tl.float64, beta2: tl.float64, lr_decay: tl.float64, eps: tl.float64, beta: tl.float64,
                 neg_power: tl.float64, CDT: tl.constexpr, KIND: tl.constexpr, HAS_L2: tl.constexpr,
                 HAS_FI: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr, POWER: tl.constexpr):
    gid = tl.program_id(0).to(tl.int64)
    size = A.to(tl.int64) * K
    n = size
    if HAS_FI:
        n = tl.where(tl.load(found_inf) == 0, n, 0)
    lr = f64(lr)
    group_l1 = f64(group_l1)
    l2 = f64(l2)
    bc2_sqrt = tl.full([], 1.0, tl.float64).to(CDT)
    beta = f64(beta)
    neg_power = f64(neg_power)
    step = lr
    if KIND == FTRL:
        step = tl.full([], 1.0, tl.float64)  # FTRL's penalties are not scaled by lr (q holds it; its l2 too)
    elif KIND != SGD:
        count = tl.load(step_ptr).to(tl.float64)  # already advanced by the op's launch
        if KIND == ADAM:
            bc2_sqrt = adam_bc2_sqrt(f64(beta2), count).to(CDT)
        else:
            step = adagrad_clr(lr, f64(lr_decay), count)
    c = step * group_l1 * tl.sqrt(size.to(tl.float64))
    n = tl.where(step * group_l1 == 0, 0, n)  # nothing to shrink (lr = 0 included); n stays int64
    if KIND == SGD:
        c = c / (1.0 + step * l2)
        ss = tl.zeros([BLOCK], tl.float64)
        for start in range(0, n, BLOCK):
            m = start + tl.arange(0, BLOCK)
            v = values(param, offsets(gid, m, G, K, ROWS), m < n, CDT)
            ss += v * v
        f = group_scale(c, tl.sum(ss, 0), CDT)
        for start in range(0, n, BLOCK):
            m = start + tl.arange(0, BLOCK)
            offs = offsets(gid, m, G, K, ROWS)
            store(param + offs, tl.load(param + offs, mask=m < n).to(CDT) * f, m < n)
    else:
        c_o = c.to(CDT)
        c2 = (step * l2).to(CDT)
        eps = f64(eps).to(CDT)
        if n <= BLOCK:
            # The group in one block: v and a are read once and stay in registers (the same sums as the
            # passes below; in the interpreter, where every helper call costs, far fewer calls).
            m = tl.arange(0, BLOCK)
            offs = offsets(gid, m, G, K, ROWS)
            v = values(param, offs, m < n, CDT)
            a = metric_a(state, offs, m < n, c_o, c2, bc2_sqrt, eps, lr, beta, l2, neg_power, KIND, HAS_L2, POWER)
            amax = tl.maximum(tl.where(m < n, a, 0.0), 0.0, propagate_nan=tl.PropagateNan.ALL)
            r = newton_start(tl.sum(v * v, 0), tl.max(amax, 0), tl.sum((v / a) * (v / a), 0))
            go = r >= 0
            it = 0
            while go & (it < NEWTON_MAX_ITER):
                ds, dt = newton_terms(v, a, r)
                r, go = newton_step(r, tl.sum(ds, 0), tl.sum(dt, 0))
                it += 1
            store(param + offs, tl.load(param + offs, mask=m < n).to(CDT) * metric_factor(r, a, CDT), m < n)
        else:
            q = tl.zeros([BLOCK], tl.float64)
            nn = tl.zeros([BLOCK], tl.float64)
            amax = tl.zeros([BLOCK], tl.float64)
            for start in range(0, n, BLOCK):
                m = start + tl.arange(0, BLOCK)
                offs = offsets(gid, m, G, K, ROWS)
                v = values(param, offs, m < n, CDT)
                a = metric_a(state, offs, m < n, c_o, c2, bc2_sqrt, eps, lr, beta, l2, neg_power, KIND, HAS_L2,
                             POWER)
                q += (v / a) * (v / a)
                nn += v * v
                amax = tl.maximum(amax, tl.where(m < n, a, 0.0), propagate_nan=tl.PropagateNan.ALL)
            r = newton_start(tl.sum(nn, 0), tl.max(amax, 0), tl.sum(q, 0))
            go = r >= 0
            it = 0
            while go & (it < NEWTON_MAX_ITER):
                s = tl.zeros([BLOCK], tl.float64)
                t = tl.zeros([BLOCK], tl.float64)
                for start in range(0, n, BLOCK):
                    m = start + tl.arange(0, BLOCK)
                    offs = offsets(gid, m, G, K, ROWS)
                    v = values(param, offs, m < n, CDT)
                    a = metric_a(state, offs, m < n, c_o, c2, bc2_sqrt, eps, lr, beta, l2, neg_power, KIND, HAS_L2,
                                 POWER)
                    ds, dt = newton_terms(v, a, r)
                    s += ds
                    t += dt
                r, go = newton_step(r, tl.sum(s, 0), tl.sum(t, 0))
                it += 1
            for start in range(0, n, BLOCK):
                m = start + tl.arange(0, BLOCK)
                offs = offsets(gid, m, G, K, ROWS)
                a = metric_a(state, offs, m < n, c_o, c2, bc2_sqrt, eps, lr, beta, l2, neg_power, KIND, HAS_L2,
                             POWER)
                f = metric_factor(r, a, CDT)
                store(param + offs, tl.load(param + offs, mask=m < n).to(CDT) * f, m < n)

def prox(kind, params, states=None, steps=None, *, lr, group_l1, group_dim, l2, found_inf, beta2=0.0,
         lr_decay=0.0, eps=0.0, beta=0.0, neg_power=0.0, power=0):
    """The group prox of op `kind` (SGD, ADAM, ADAGRAD, FTRL) on every param with dim >= 2: one launch per param,
    one program per group. states: where the denominators come from (None for SGD). FTRL: l2, beta, neg_power
    and power (ftrl.py's POWER) make q, step 1."""
    if group_l1 == 0 or lr * group_l1 == 0:
        return
    for i, p in enumerate(params):
        if p.dim() < 2 or p.numel() == 0:
            continue
        block, _ = launch.shape(p.device)
        pc = p.contiguous()
        x = states[i].contiguous() if states is not None else pc  # SGD: never read
        s = steps[i] if steps is not None else pc
        d0, d1 = p.shape[0], p.shape[1]
        rest = p.numel() // (d0 * d1)
        A, G, K = (1, d0, d1 * rest) if group_dim == 0 else (d0, d1, rest)
        fi = None if found_inf is None else found_inf.to(p.device)
        with launch.guard(p.device):
            group_kernel[(G,)](pc, x, s, fi, A, G, K, lr=float(lr), group_l1=float(group_l1), l2=float(l2),
                               beta2=float(beta2), lr_decay=float(lr_decay), eps=float(eps), beta=float(beta),
                               neg_power=float(neg_power), CDT=launch.opmath(p.dtype), KIND=kind.value,
                               HAS_L2=l2 != 0 and kind.value != FTRL.value, HAS_FI=fi is not None, ROWS=A == 1,
                               BLOCK=block, POWER=power, **launch.OPTIONS)
        if pc is not p:
            p.copy_(pc)
