"""The group-lasso prox on Triton (fusedreg.reference.group_prox), launched after the op's kernel: the kernel and
`prox`, which every op's entry point calls.

A param with dim >= 2 is (A, G, K): element k of group g in outer slice a at (a*G + g)*K + k (rows: A = 1;
columns: A = size(0)). A program takes a tile of BG consecutive groups and walks their elements in blocks
[BA, BG, BK] over (a, g, k): k (then g) is the fastest axis, so the lanes of a warp read consecutive addresses
whether a group is a row (contiguous) or a column (K = 1: BG consecutive columns of one row); the sums of a group
are reductions over the a and k axes. The tile is sized from the group (prox: `tile`), so that a group of 10
elements does not take a 1024-wide block, and small rows share a program too.

SGD (and Adam and Adagrad with decoupled l1, METRIC off: their scalar step, no l2 term) shrinks each group by a
scalar factor; Adam, Adagrad and Ftrl solve the metric prox with the op's per-element denominators, read back
from the state the op has just written (Adam's v_hat, Adagrad's sum, Ftrl's accumulator n', whose q is the
metric, with step 1), by Newton from the left (math.newton_*, at most NEWTON_MAX_ITER steps), for the BG groups
of the tile at once: each group stops on its own test (a stopped group keeps its r), the tile while any goes on,
so a group's result does not depend on the groups beside it in a tile (the reference steps every kept group until
none goes on: the two differ by steps under NEWTON_RTOL). The param is read as just written, i.e. already rounded
to its dtype, as in the native kernels.
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
# Columns (K = 1) per program: a warp's 32 lanes on 32 consecutive columns of a row.
COLS = 32


@triton.jit
def block(a0, g0, k0, A, G, K, BA: tl.constexpr, BG: tl.constexpr, BK: tl.constexpr):
    """The offsets [BA, BG, BK] of elements a0 + i, k0 + j of groups g0 + l, and their mask (A = 0: none)."""
    a = a0 + tl.arange(0, BA).to(tl.int64)[:, None, None]
    g = g0 + tl.arange(0, BG)[None, :, None]
    k = k0 + tl.arange(0, BK)[None, None, :]
    if BK == 1:  # K = 1 (k is 0): no multiplication, so the compiler sees the offsets contiguous along g
        offs = a * G + g
    else:
        offs = (a * G + g) * K + k
    return offs, (a < A) & (g < G) & (k < K)


@triton.jit
def gsum(x):
    # [BA, BG, BK] -> [BG]: a sum over each group's elements of the block
    return tl.sum(tl.sum(x, 2), 0)


@triton.jit
def bcast(x):
    # [BG] -> [1, BG, 1]: a group's value against its elements
    return x[None, :, None]


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


@triton.jit
def newton(r, go, s, t):
    """One Newton step of the groups that go on (the others keep r): (r, go)."""
    r_new, more = newton_step(r, s, t)
    return tl.where(go, r_new, r), go & more


# Unspecialized shape arguments: a 1 would become a constexpr (A is 1 for rows) and each shape class recompile.
@triton.jit(do_not_specialize=["A", "G", "K"])
def group_kernel(param, state, step_ptr, found_inf, A, G, K, lr: tl.float64, group_l1: tl.float64,
                 l2: tl.float64, beta2: tl.float64, lr_decay: tl.float64, eps: tl.float64, beta: tl.float64,
                 neg_power: tl.float64, CDT: tl.constexpr, KIND: tl.constexpr, HAS_L2: tl.constexpr,
                 HAS_FI: tl.constexpr, BA: tl.constexpr, BG: tl.constexpr, BK: tl.constexpr, POWER: tl.constexpr,
                 METRIC: tl.constexpr):
    g0 = tl.program_id(0).to(tl.int64) * BG
    A = A.to(tl.int64)
    size = A * K
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
    # nothing to shrink (lr = 0 included) or a skipped step: no element (n = 0), so no pass reads or writes
    n = tl.where(step * group_l1 == 0, 0, A)
    if HAS_FI:
        n = tl.where(tl.load(found_inf) == 0, n, 0)
    one = (A <= BA) & (K <= BK)  # the tile in one block: read once, kept in registers
    if not METRIC:
        c = c / (1.0 + step * l2)
        ss = tl.zeros([BG], tl.float64)
        for a0 in range(0, n, BA):
            for k0 in range(0, K, BK):
                offs, mask = block(a0, g0, k0, n, G, K, BA, BG, BK)
                v = values(param, offs, mask, CDT)
                ss += gsum(v * v)
        f = bcast(group_scale(c, ss, CDT))
        for a0 in range(0, n, BA):
            for k0 in range(0, K, BK):
                offs, mask = block(a0, g0, k0, n, G, K, BA, BG, BK)
                store(param + offs, tl.load(param + offs, mask=mask).to(CDT) * f, mask)
    else:
        c_o = c.to(CDT)
        c2 = (step * l2).to(CDT)
        eps = f64(eps).to(CDT)
        if one:
            # v and a are read once and stay in registers (the same sums as the passes below; in the
            # interpreter, where every helper call costs, far fewer calls).
            offs, mask = block(0, g0, 0, n, G, K, BA, BG, BK)
            v = values(param, offs, mask, CDT)
            a = metric_a(state, offs, mask, c_o, c2, bc2_sqrt, eps, lr, beta, l2, neg_power, KIND, HAS_L2, POWER)
            amax = tl.maximum(tl.where(mask, a, 0.0), 0.0, propagate_nan=tl.PropagateNan.ALL)
            r = newton_start(gsum(v * v), tl.max(tl.max(amax, 2), 0), gsum((v / a) * (v / a)))
            go = r >= 0
            it = 0
            while (tl.max(go.to(tl.int32), 0) > 0) & (it < NEWTON_MAX_ITER):  # any group goes on
                ds, dt = newton_terms(v, a, bcast(r))
                r, go = newton(r, go, gsum(ds), gsum(dt))
                it += 1
            store(param + offs, tl.load(param + offs, mask=mask).to(CDT) * metric_factor(bcast(r), a, CDT), mask)
        else:
            q = tl.zeros([BG], tl.float64)
            nn = tl.zeros([BG], tl.float64)
            amax = tl.zeros([BA, BG, BK], tl.float64)
            for a0 in range(0, n, BA):
                for k0 in range(0, K, BK):
                    offs, mask = block(a0, g0, k0, n, G, K, BA, BG, BK)
                    v = values(param, offs, mask, CDT)
                    a = metric_a(state, offs, mask, c_o, c2, bc2_sqrt, eps, lr, beta, l2, neg_power, KIND, HAS_L2,
                                 POWER)
                    q += gsum((v / a) * (v / a))
                    nn += gsum(v * v)
                    amax = tl.maximum(amax, tl.where(mask, a, 0.0), propagate_nan=tl.PropagateNan.ALL)
            r = newton_start(nn, tl.max(tl.max(amax, 2), 0), q)
            go = r >= 0
            it = 0
            while (tl.max(go.to(tl.int32), 0) > 0) & (it < NEWTON_MAX_ITER):  # any group goes on
                s = tl.zeros([BG], tl.float64)
                t = tl.zeros([BG], tl.float64)
                for a0 in range(0, n, BA):
                    for k0 in range(0, K, BK):
                        offs, mask = block(a0, g0, k0, n, G, K, BA, BG, BK)
                        v = values(param, offs, mask, CDT)
                        a = metric_a(state, offs, mask, c_o, c2, bc2_sqrt, eps, lr, beta, l2, neg_power, KIND,
                                     HAS_L2, POWER)
                        ds, dt = newton_terms(v, a, bcast(r))
                        s += gsum(ds)
                        t += gsum(dt)
                r, go = newton(r, go, s, t)
                it += 1
            for a0 in range(0, n, BA):
                for k0 in range(0, K, BK):
                    offs, mask = block(a0, g0, k0, n, G, K, BA, BG, BK)
                    a = metric_a(state, offs, mask, c_o, c2, bc2_sqrt, eps, lr, beta, l2, neg_power, KIND, HAS_L2,
                                 POWER)
                    f = metric_factor(bcast(r), a, CDT)
                    store(param + offs, tl.load(param + offs, mask=mask).to(CDT) * f, mask)


def tile(A, G, K, block):
    """The block (BA, BG, BK) of a program, at most `block` elements and never more than the param's sizes
    rounded up to powers of two: BK covers K (up to the block); BA as many a as fit beside COLS columns (K = 1;
    fewer as K grows; rows: A = 1, BA = 1); then BG as many groups as fill the block."""
    p2 = triton.next_power_of_2
    bk = min(p2(K), block)
    ba = min(p2(A), max(block // (bk * min(p2(G), max(COLS // bk, 1))), 1))
    return ba, min(p2(G), max(block // (ba * bk), 1)), bk


def options(BA, BG, BK):
    # launch's options, a small tile on fewer warps (8 elements a thread at least, not 4 warps repeating 64)
    return {**launch.OPTIONS, "num_warps": max(1, min(launch.NUM_WARPS, BA * BG * BK // 256))}


def prox(kind, params, states=None, steps=None, *, lr, group_l1, group_dim, l2, found_inf, beta2=0.0,
         lr_decay=0.0, eps=0.0, beta=0.0, neg_power=0.0, power=0, l1_decoupled=False):
    """The group prox of op `kind` (SGD, ADAM, ADAGRAD, FTRL) on every param with dim >= 2: one launch per param,
    one program per tile of groups. states: where the denominators come from (None for SGD). FTRL: l2, beta,
    neg_power and power (ftrl.py's POWER) make q, step 1. l1_decoupled (ADAM, ADAGRAD): SGD's closed form with the
    op's scalar step and no l2 term."""
    if group_l1 == 0 or lr * group_l1 == 0:
        return
    metric = kind.value != SGD.value and not (l1_decoupled and kind.value in (ADAM.value, ADAGRAD.value))
    if not metric and kind.value != SGD.value:
        l2 = 0.0
    for i, p in enumerate(params):
        if p.dim() < 2 or p.numel() == 0:
            continue
        size, _ = launch.shape(p.device)
        pc = p.contiguous()
        x = states[i].contiguous() if states is not None else pc  # SGD: never read
        s = steps[i] if steps is not None else pc
        d0, d1 = p.shape[0], p.shape[1]
        rest = p.numel() // (d0 * d1)
        A, G, K = (1, d0, d1 * rest) if group_dim == 0 else (d0, d1, rest)
        BA, BG, BK = tile(A, G, K, size)
        fi = None if found_inf is None else found_inf.to(p.device)
        with launch.guard(p.device):
            group_kernel[(triton.cdiv(G, BG),)](
                pc, x, s, fi, A, G, K, lr=float(lr), group_l1=float(group_l1), l2=float(l2), beta2=float(beta2),
                lr_decay=float(lr_decay), eps=float(eps), beta=float(beta), neg_power=float(neg_power),
                CDT=launch.opmath(p.dtype), KIND=kind.value, HAS_L2=l2 != 0 and kind.value != FTRL.value,
                HAS_FI=fi is not None, BA=BA, BG=BG, BK=BK, POWER=power, METRIC=metric, **options(BA, BG, BK))
        if pc is not p:
            p.copy_(pc)
