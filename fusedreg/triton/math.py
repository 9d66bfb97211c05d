"""The per-element math of the Triton kernels, each formula in one @triton.jit helper: the gradient's
preprocessing, the proximal penalties, each optimizer's update and the pieces of the group prox. The same
formulas as fusedreg.reference and csrc's math header, in the same order (fusedreg._ops states it).

Numerics (reproducing fusedreg.reference)
-----------------------------------------
* Per-element math in fp32 for fp32/bf16/fp16 params (state in opmath), in fp64 for fp64 params. Divisions and
  square roots are IEEE-rounded (div_rn/sqrt_rn), the kernels are compiled with enable_fp_fusion=False (no
  contraction into FMAs), and lerp is the explicit FMA torch uses, so results match the reference bit for bit
  where torch's own kernels are correctly rounded. (torch's CPU sqrt is not: in torch 2.13 about one fp32 result
  in five is 1 ulp off, so against the CPU reference Adam/Adagrad agree to ~1 ulp, not bitwise.)
* bf16 stores round to nearest-even; the interpreter's own fp32 -> bf16 cast truncates, so under
  TRITON_INTERPRET=1 `store` rounds by hand (SOFT_BF16).
* Hyperparameters are fp64 runtime arguments, never constexpr: changing lr, l1, betas, ... never recompiles. The
  helpers form the reference's host doubles from them in fp64 (lr/bc1, 1 - lr*wd, clr*l1, ...) and round once to
  the compute dtype. Step-dependent scalars (Adam's bias corrections, Adagrad's clr) are formed per program in
  fp64 from the step tensor, so there is no host sync: beta**step by square-and-multiply on the integer step (a
  few ulps of fp64 from libm's pow; the step counts are integers).
* Each penalty is skipped by a runtime branch when its strength is 0; the structural flags are constexpr.
"""
import torch
import triton
import triton.language as tl

from .. import reference

# triton.jit interprets when TRITON_INTERPRET=1 is set as it decorates, i.e. at import; so this is fixed too.
INTERPRET = triton.knobs.runtime.interpret
# The interpreter's fp32 -> bf16 cast truncates (Triton 3.6-3.9), so `store` rounds by hand there.
SOFT_BF16 = tl.constexpr(INTERPRET)
NEWTON_MAX_ITER = tl.constexpr(reference.NEWTON_MAX_ITER)
NEWTON_RTOL = tl.constexpr(reference.NEWTON_RTOL)  # 2**-50: exact as a constexpr of either float width


# --------------------------------------------------------------------------------------------------------------
# Rounding and scalars

@triton.jit
def f64(x):
    # A runtime fp64 scalar argument. Compiled, it already is one; the interpreter hands over the Python float.
    return tl.full([], x, tl.float64)


@triton.jit
def div(a, b):
    a, b = tl.broadcast(a, b)
    if a.dtype == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def sqrt(x):
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def sign(x):
    # torch.sign: 0 for 0 and NaN
    return (x > 0).to(x.dtype) - (x < 0).to(x.dtype)


@triton.jit
def powi(base, e):
    # base ** e for an fp64 base and an integer-valued e >= 0, by square-and-multiply.
    n = e.to(tl.int64)
    r = tl.full([], 1.0, tl.float64)
    b = base
    while n > 0:
        r = tl.where((n & 1) == 1, r * b, r)
        b = b * b
        n = n >> 1
    return r


@triton.jit
def lerp(a, b, w):
    """torch.lerp(a, b, w) for a scalar weight, as torch computes it (one FMA, the branch on |w| < 0.5)."""
    d = b - a
    if tl.abs(w) < 0.5:
        r = tl.fma(tl.broadcast_to(w, d.shape), d, a)
    else:
        r = tl.fma(tl.broadcast_to(w - 1.0, d.shape), d, b)
    return r


@triton.jit
def store(ptr, x, mask):
    """Store x rounded to nearest-even to the pointer's dtype (as torch's copy_ does)."""
    if SOFT_BF16 and ptr.dtype.element_ty == tl.bfloat16 and x.dtype == tl.float32:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, (bits >> 16) | 0x40, rounded)  # NaN stays a (quiet) NaN
        tl.store(ptr, rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)
    else:
        tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------------------------
# The element-wise step: gradient, optimizer update, proximal penalties

# The elementwise penalties reach every kernel as one pointer and one constexpr that penalties() makes, so that no
# kernel, piece or update below lists them: a new penalty changes penalties(), prep_grad() and prox() only.
_pens = {}


def penalties(device, l1=0.0, l1_subgradient=False, l1_decoupled=False, l2=0.0, l0=0.0, nonneg=False):
    """(pen, PEN): the strengths [l1, l2, l0] as an fp64 tensor on `device` (made once per value: a step does not
    copy them to the device again), and the switches as constexpr bits (1: l1 as a subgradient, 2: nonneg, 4: l1
    decoupled)."""
    key = (device, float(l1), float(l2), float(l0))
    pen = _pens.get(key)
    if pen is None:
        if len(_pens) >= 64:
            _pens.clear()
        pen = _pens[key] = torch.tensor(key[1:], dtype=torch.float64, device=device)
    return pen, int(bool(l1_subgradient)) | 2 * int(bool(nonneg)) | 4 * int(bool(l1_decoupled))


@triton.jit
def prep_grad(p, g, gs, weight_decay, pen, HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, PEN: tl.constexpr):
    """grad / grad_scale -> negate if maximize -> + l1*sign(p) (subgradient L1) -> + wd*p (coupled decay)."""
    if HAS_GS:
        g = div(g, gs)
    if MAXIMIZE:
        g = -g
    if PEN & 1:
        l1 = tl.load(pen)
        if l1 != 0:
            g = g + l1.to(p.dtype) * sign(p)
    if weight_decay != 0:
        g = g + weight_decay.to(p.dtype) * p
    return g


@triton.jit
def prox(v, denom, t, pen, PEN: tl.constexpr, HAS_DENOM: tl.constexpr):
    """The proximal penalties with per-element step t/denom (t an fp64 scalar; no denom: SGD, denom = 1); decoupled
    l1 (PEN & 4) thresholds by t*l1 alone."""
    l1 = tl.load(pen)
    l2 = tl.load(pen + 1)
    l0 = tl.load(pen + 2)
    if (PEN & 1) == 0:
        if l1 != 0:
            thr = (t * l1).to(v.dtype)
            if HAS_DENOM and (PEN & 4) == 0:
                thr = div(thr, denom)
            v = sign(v) * tl.maximum(tl.abs(v) - thr, 0.0, propagate_nan=tl.PropagateNan.ALL)
    if l2 != 0:
        s2 = (t * l2).to(v.dtype)
        if HAS_DENOM:
            s2 = div(s2, denom)
        v = div(v, 1.0 + s2)
    if l0 != 0:
        s0 = (2.0 * t * l0).to(v.dtype)
        if HAS_DENOM:
            s0 = div(s0, denom)
        v = tl.where(tl.abs(v) <= sqrt(s0), 0.0, v)
    if PEN & 2:
        v = tl.maximum(v, 0.0, propagate_nan=tl.PropagateNan.ALL)
    return v


@triton.jit
def sgd_update(p, g, buf, gs, lr, momentum, dampening, weight_decay, pen,
               HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, PEN: tl.constexpr,
               MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, FIRST_STEP: tl.constexpr):
    g = prep_grad(p, g, gs, weight_decay=weight_decay, pen=pen, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)
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
    p = prox(p, 1.0, lr, pen=pen, PEN=PEN, HAS_DENOM=False)
    return p, buf


@triton.jit
def adam_lr_bc1(lr, beta1, step):
    """lr / bc1 in fp64 (the reference's host double), step already advanced."""
    return lr / (1.0 - powi(beta1, step))


@triton.jit
def adam_bc2_sqrt(beta2, step):
    """sqrt(bc2) in fp64, step already advanced."""
    return tl.sqrt(1.0 - powi(beta2, step))


@triton.jit
def adam_denom(vhat, bc2_sqrt, eps):
    """sqrt(v_hat) / sqrt(bc2) + eps, bc2_sqrt and eps in the compute dtype."""
    return div(sqrt(vhat), bc2_sqrt) + eps


@triton.jit
def adam_update(p, g, m, v, vmax, gs, lr, beta1, beta2, eps, weight_decay, pen, lr_bc1, bc2_sqrt,
                HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, PEN: tl.constexpr,
                DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr):
    """The scalars fp64, but lr_bc1 and bc2_sqrt already rounded to the compute dtype."""
    dt = p.dtype
    if DECOUPLED:
        g = prep_grad(p, g, gs, weight_decay=0.0, pen=pen, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)
        if weight_decay != 0:
            p = p * (1.0 - lr * weight_decay).to(dt)
    else:
        g = prep_grad(p, g, gs, weight_decay=weight_decay, pen=pen, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)
    m = lerp(m, g, (1.0 - beta1).to(dt))
    v = v * beta2.to(dt) + (1.0 - beta2).to(dt) * g * g
    vhat = v
    if AMSGRAD:
        vmax = tl.maximum(vmax, v, propagate_nan=tl.PropagateNan.ALL)
        vhat = vmax
    denom = adam_denom(vhat, bc2_sqrt, eps.to(dt))
    p = p - lr_bc1 * div(m, denom)
    p = prox(p, denom, lr, pen=pen, PEN=PEN, HAS_DENOM=True)
    return p, m, v, vmax


@triton.jit
def adagrad_clr(lr, lr_decay, step):
    """lr / (1 + (step - 1) * lr_decay) in fp64, step already advanced."""
    return lr / (1.0 + (step - 1.0) * lr_decay)


@triton.jit
def adagrad_denom(s, eps):
    return sqrt(s) + eps


@triton.jit
def adagrad_update(p, g, s, gs, clr, eps, weight_decay, pen,
                   HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, PEN: tl.constexpr):
    """clr from adagrad_clr, all scalars fp64."""
    dt = p.dtype
    g = prep_grad(p, g, gs, weight_decay=weight_decay, pen=pen, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)
    s = s + g * g
    denom = adagrad_denom(s, eps.to(dt))
    p = p - clr.to(dt) * div(g, denom)
    p = prox(p, denom, clr, pen=pen, PEN=PEN, HAS_DENOM=True)
    return p, s


@triton.jit
def muon_momentum_update(p, g, buf, gs, momentum, pen, HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr,
                         PEN: tl.constexpr, NESTEROV: tl.constexpr):
    """Muon's momentum (momentum fp64): buf = lerp(buf, g, 1 - momentum); the orthogonalization's input
    lerp(g, buf, momentum) with nesterov, else buf. p is only read."""
    dt = p.dtype
    g = prep_grad(p, g, gs, weight_decay=0.0, pen=pen, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)
    buf = lerp(buf, g, (1.0 - momentum).to(dt))
    update = buf
    if NESTEROV:
        update = lerp(g, buf, momentum.to(dt))
    return buf, update


@triton.jit
def muon_update(p, u, gs, lr, lr_ratio, weight_decay, pen, HAS_GS: tl.constexpr, PEN: tl.constexpr):
    """Muon's step from the orthogonalized update u (scalars fp64): u / grad_scale, decay, then torch's
    add_(u, alpha=-lr*lr_ratio) (one FMA), then the penalties with step lr and no denominator."""
    dt = p.dtype
    if HAS_GS:
        u = div(u, gs)
    if weight_decay != 0:
        p = p * (1.0 - lr * weight_decay).to(dt)
    p = tl.fma(u, tl.broadcast_to((-(lr * lr_ratio)).to(dt), u.shape), p)
    return prox(p, 1.0, lr, pen=pen, PEN=PEN, HAS_DENOM=False)


@triton.jit
def ftrl_power(n, neg_power, POWER: tl.constexpr):
    """n^(-lr_power), neg_power = -lr_power in fp64: sqrt for -0.5 (POWER 0), 1 for 0 (POWER 1), else (POWER 2)
    exp2(e*log2(n)) in fp64, with e rounded to the compute dtype first (libdevice's pow does not run under the
    interpreter; in fp64 this is within an fp32 rounding of pow, and a few fp64 ulps for fp64 params)."""
    if POWER == 0:
        r = sqrt(n)
    elif POWER == 1:
        r = tl.full(n.shape, 1.0, n.dtype)
    else:
        e = neg_power.to(n.dtype).to(tl.float64)
        r = tl.exp2(e * tl.log2(n.to(tl.float64))).to(n.dtype)
        if e == 0:  # a tiny lr_power that opmath rounds to 0: pow(n, 0) = 1, also for n = 0 (0 * log2(0) is NaN)
            r = tl.full(n.shape, 1.0, n.dtype)
    return r


@triton.jit
def ftrl_q(pn, lr, beta, l2):
    """q = (beta + n'^-p)/lr + 2*l2 from pn = n'^-p (lr, beta, l2 fp64): the closed form's denominator, and the
    metric of the group prox (group.py)."""
    dt = pn.dtype
    return div(beta.to(dt) + pn, lr.to(dt)) + (2.0 * l2).to(dt)


@triton.jit
def ftrl_update(p, g, n, z, gs, lr, neg_power, beta, l2_shrinkage, l1, l2, pen, pen_prox,
                HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, PEN: tl.constexpr, POWER: tl.constexpr):
    """FTRL-Proximal (fusedreg.reference.ftrl_), all scalars fp64; l1 is the closed form's (0 for a subgradient
    l1), pen_prox the penalties with l1 = l2 = 0 (l0 and nonneg with the step 1/q)."""
    dt = p.dtype
    g = prep_grad(p, g, gs, weight_decay=0.0, pen=pen, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)
    g_s = g
    if l2_shrinkage != 0:
        g_s = g + (2.0 * l2_shrinkage).to(dt) * p
    n_new = n + g * g
    pn = ftrl_power(n_new, neg_power, POWER)
    sigma = div(pn - ftrl_power(n, neg_power, POWER), lr.to(dt))
    z = z + (g_s - sigma * p)
    q = ftrl_q(pn, lr, beta, l2)
    az = tl.abs(z)
    l1 = l1.to(dt)
    # The select makes the zeros (also where q is 0, as TensorFlow's).
    w = tl.where(az <= l1, 0.0, div(-(sign(z) * (az - l1)), q))
    w = prox(w, q, 1.0, pen=pen_prox, PEN=PEN, HAS_DENOM=True)
    return w, n_new, z


@triton.jit
def lion_update(p, g, m, gs, lr, beta1, beta2, weight_decay, pen,
                HAS_GS: tl.constexpr, MAXIMIZE: tl.constexpr, PEN: tl.constexpr):
    """Lion (fusedreg.reference.lion_), all scalars fp64: decoupled decay, p -= lr*sign(beta1*m + (1-beta1)*g),
    m = beta2*m + (1-beta2)*g, then the penalties with step lr (no metric)."""
    dt = p.dtype
    g = prep_grad(p, g, gs, weight_decay=0.0, pen=pen, HAS_GS=HAS_GS, MAXIMIZE=MAXIMIZE, PEN=PEN)
    if weight_decay != 0:
        p = p * (1.0 - lr * weight_decay).to(dt)
    c = m * beta1.to(dt) + (1.0 - beta1).to(dt) * g
    p = p - lr.to(dt) * sign(c)
    m = m * beta2.to(dt) + (1.0 - beta2).to(dt) * g
    p = prox(p, 1.0, lr, pen=pen, PEN=PEN, HAS_DENOM=False)
    return p, m


# --------------------------------------------------------------------------------------------------------------
# The group prox (fusedreg.reference.group_prox): group sums in fp64, per-element factors in the compute dtype

@triton.jit
def group_scale(c, sumsq, dt: tl.constexpr):
    """SGD's factor max(1 - c / ||v_g||, 0) (NaN kept), c the group's fp64 threshold."""
    f = 1.0 - c / tl.sqrt(sumsq)
    return tl.where((f > 0) | (f != f), f, 0.0).to(dt)


@triton.jit
def group_a(c, denom, c2, HAS_L2: tl.constexpr):
    """The metric prox's a_i = c / (denom_i [+ step*l2]) in fp64, c, c2 and denom in the compute dtype."""
    if HAS_L2:
        denom = denom + c2
    return div(tl.broadcast_to(c, denom.shape), denom).to(tl.float64)


@triton.jit
def newton_start(sumsq, amax, q):
    """Newton's start max(||v_g|| - max a_g, 0) from the left, or -1 when ||v_g / a_g|| = sqrt(q) <= 1 (the
    prox zeroes the group)."""
    r = tl.sqrt(sumsq) - amax
    r = tl.where(r > 0, r, 0.0)
    return tl.where(tl.sqrt(q) > 1, r, -1.0)


@triton.jit
def newton_terms(v, a, r):
    """The summands of s = sum v^2/(r + a)^2 and t = sum v^2/(r + a)^3."""
    inv = 1.0 / (r + a)
    w = v * v * inv * inv
    return w, w * inv


@triton.jit
def newton_step(r, s, t):
    """One Newton step on 1/sqrt(s(r)) - 1 = 0 from the left: the new r and whether to go on."""
    dr = s * (tl.sqrt(s) - 1.0) / t
    r = r + tl.where(dr > 0, dr, 0.0)  # a negative dr is rounding at the root
    return r, dr > NEWTON_RTOL * r


@triton.jit
def metric_factor(r, a, dt: tl.constexpr):
    """w/v = r / (r + a) at the root r, 0 for a zeroed group (r = -1)."""
    return tl.where(r < 0, 0.0, r / (r + a)).to(dt)
