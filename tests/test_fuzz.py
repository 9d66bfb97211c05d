"""Property-based fuzzing (hypothesis) of every fused op on every backend this install has for CPU tensors.

Each example draws a whole call: the op, 1-64 tensors (0-dim, 0, 1, odd and vector-tail lengths, 2-D, now and
then 65,537 elements), their dtypes (fp64/fp32/bf16/fp16, sometimes mixed in one call so the functional layer
groups them), random optimizer state (Adam's step counter anywhere up to 2^24), every hyperparameter (0 and
extreme values included), grad_scale/found_inf, and, where the update does not depend on p, params placed so
that the pre-prox value v lands at, or a few ulps beside, a threshold (|v| = t*l1/denom, the L0 cut, 0).
The call runs through fusedreg.functional with backend=<name> and with backend="torch" (the reference), and
both are checked against an independent fp64 evaluation of the same formulas (the "oracle" below; for the
"torch" backend that is the test: it is the reference itself).

The comparison rule (per element, because a max-relative tolerance is meaningless where v cancels):
  * M is the running magnitude of the computation: the same formulas evaluated on absolute values
    (|p| + lr*(|g| + wd*|p| + ...)), with the rounding error of Adam's/Adagrad's denominator carried through
    every quotient by it (update, thresholds, the l2 divisor). Each rounding along the way is off by at most
    u*(its magnitude) <= u*M, and the longest path (Adam with decoupled decay, grad_scale, l1, l2 and l0) has
    fewer than 30, so tol = 2 * STEP[opmath] * M (STEP from tests/tolerances.py; fp32: 2e-6 ~ 34u), plus one
    rounding of the output, STEP[dtype]*|value|, for bf16/fp16 params.
  * Exact zeros must match the oracle exactly, except at "boundary" elements: where |v| is within tol of a
    threshold (thr = t*l1/denom, or 0 for the cancellation / nonneg cut) or |v after l1, l2| within tol of the
    L0 cut sqrt(2*t*l0/denom). There a native kernel (FMA, another order) may legitimately land on either side.
    At an L0-boundary element the value may be 0 or the un-cut value (a jump), elsewhere it is within tol.
  * Non-finite: where the oracle is NaN/inf (NaN/inf gradients, 0/0 with eps = 0), the result must be
    non-finite too (NaN or inf: e.g. lerp gives NaN or inf for an infinite gradient depending on its weight),
    and finite wherever the oracle is finite, except at fp16 overflow (|value| within one ulp of fp16's max).
  * found_inf = 1: every tensor, step counters included, bitwise unchanged.

Budget: the "fusedreg-ci" profile runs a bounded, derandomized number of examples per backend x op (the Triton
interpreter a few); FUSEDREG_FUZZ_EXAMPLES=N runs N random examples per backend x op instead
(FUSEDREG_FUZZ_EXAMPLES_TRITON=N overrides it for triton); FUSEDREG_FUZZ_REPORT=<file> appends the number of
examples each passing test ran. The checker itself was validated by mutation: a threshold off by 1e-4, NaN
turned into 0, found_inf ignored, and a 64-ulp error are each caught within 100 derandomized examples.
"""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis import given

import fusedreg
from fusedreg import backends
from tolerances import STEP

BACKENDS = [b for b in backends.available() if b != "cuda"]
OPS = ("sgd", "adam", "adagrad", "ftrl", "lion", "muon")  # muon: the muon_ op (its penalties; muon_momentum_ has none)

_FULL = int(os.environ.get("FUSEDREG_FUZZ_EXAMPLES", "0") or 0)
_FULL_TRITON = int(os.environ.get("FUSEDREG_FUZZ_EXAMPLES_TRITON", "0") or 0) or _FULL
CI_EXAMPLES = {"torch": 30, "cpp": 60, "triton": 5}

settings.register_profile("fusedreg-ci", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("fusedreg-full", deadline=None, database=None, print_blob=True,
                          suppress_health_check=list(HealthCheck))


def budget(backend):
    full = _FULL_TRITON if backend == "triton" else _FULL
    if full:
        return settings(settings.get_profile("fusedreg-full"), max_examples=full)
    return settings(settings.get_profile("fusedreg-ci"), max_examples=CI_EXAMPLES.get(backend, 60))


def opmath(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def unit_roundoff(dtype):
    return torch.finfo(dtype).eps / 2


def subnormal_min(dtype):
    return torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps


# Log10 magnitude ranges of generated values: wide, but no intermediate (g*g, lr*l1/denom, ...) can under- or
# overflow opmath where the fp64 oracle would not, so finiteness is decided by the inputs alone.
EXPONENTS = {torch.float64: (-30, 30), torch.float32: (-12, 12), torch.bfloat16: (-12, 12), torch.float16: (-4, 2)}
SIZES = [0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 255, 257]


# ------------------------------------------------------------------------------------------------------------
# Strategies

def _hp(*specials, lo=None, hi=None):
    s = st.sampled_from(specials)
    if lo is not None:
        # Drawn floats below 1e-9 become 0: a scalar like 1e-93 underflows opmath (fp32), which is rounding of the
        # hyperparameter, not of the kernel, and the fp64 oracle would not see it.
        s = s | st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(lambda x: 0.0 if x < 1e-9 else x)
    return s


@st.composite
def shapes(draw):
    kind = draw(st.sampled_from(["1d", "1d", "1d", "2d", "0dim", "big"]))
    if kind == "0dim":
        return ()
    if kind == "big":
        return (draw(st.sampled_from([1000, 4097, 65537])),)
    n = draw(st.sampled_from(SIZES))
    if kind == "2d":
        return (draw(st.sampled_from([0, 1, 3, 8, 17])), n)
    return (n,)


@st.composite
def cases(draw, op):
    dtypes = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
    n = draw(st.integers(1, 4) | st.integers(5, 64))
    base = draw(st.sampled_from(dtypes))
    mixed = draw(st.integers(0, 4)) == 0
    tensors = []
    for _ in range(n):
        # Many tensors are kept small so a 64-tensor call stays fast.
        shape = draw(shapes()) if n <= 8 else (draw(st.sampled_from(SIZES[:12])),)
        tensors.append((shape, draw(st.sampled_from(dtypes)) if mixed else base))
    c = dict(op=op, tensors=tensors, seed=draw(st.integers(0, 2**31 - 1)),
             value_mode=draw(st.sampled_from(["normal", "wide", "mixed"])),
             zero_frac=draw(st.sampled_from([0.0, 0.0, 0.2, 1.0])),
             nonfinite_grads=draw(st.integers(0, 9)) == 0,
             place=draw(st.sampled_from([0.0, 0.5, 1.0])),
             maximize=draw(st.booleans()),
             weight_decay=draw(_hp(0.0, 0.0, 1e-4, 0.1, 10.0, lo=0.0, hi=2.0)),
             l1=draw(_hp(0.0, 1e-8, 0.01, 1.0, 1e3, lo=0.0, hi=5.0)),
             # Lion refuses "prox" (no per-element step); muon_'s subgradient l1 is muon_momentum_'s
             l1_mode=draw(st.sampled_from(["decoupled", "decoupled", "decoupled", "subgradient"] if op == "lion" else
                                          ["prox", "decoupled"] if op == "muon" else
                                          ["prox", "prox", "prox", "subgradient"] +
                                          (["decoupled"] if op != "ftrl" else []))),
             l2=draw(_hp(0.0, 0.0, 1e-3, 1.0, 1e3, lo=0.0, hi=5.0)),
             l0=draw(_hp(0.0, 0.0, 0.0, 1e-8, 1e-3, 1.0, lo=0.0, hi=1.0)),
             nonneg=draw(st.integers(0, 3)) == 0,
             grad_scale=draw(st.sampled_from([None, None, 1.0, 0.5, 3.0, 65536.0])),
             found_inf=draw(st.sampled_from([None, None, None, 0.0, 1.0])))
    if op == "sgd":
        c.update(lr=draw(_hp(0.0, 1e-12, 1e-3, 0.1, 1.0, 1e3, lo=0.0, hi=2.0)),
                 momentum=draw(_hp(0.0, 0.0, 0.5, 0.9, 0.999, 1.0, 2.0, lo=0.0, hi=1.0)),
                 dampening=draw(_hp(0.0, 0.0, 0.1, 1.0, lo=0.0, hi=1.0)),
                 first_step=draw(st.booleans()))
        c["nesterov"] = c["momentum"] > 0 and c["dampening"] == 0 and draw(st.booleans())
    elif op == "adam":
        c.update(lr=draw(_hp(0.0, 1e-12, 1e-3, 0.1, 1.0, 1e3, lo=0.0, hi=2.0)),
                 beta1=draw(_hp(0.0, 0.5, 0.9, 0.999, lo=0.0, hi=0.9999)),
                 beta2=draw(_hp(0.0, 0.9, 0.999, 0.9999, lo=0.0, hi=0.9999)),
                 eps=draw(_hp(0.0, 1e-30, 1e-8, 1e-3, 1.0, lo=0.0, hi=1.0)),
                 decoupled=draw(st.booleans()), amsgrad=draw(st.booleans()),
                 step0=draw(st.sampled_from([0, 1, 2, 9, 1000]) | st.integers(0, 2**24 - 2)))
    elif op == "muon":
        c.update(lr=draw(_hp(0.0, 1e-12, 1e-3, 0.1, 1.0, 1e3, lo=0.0, hi=2.0)), maximize=False,
                 lr_ratio=draw(_hp(1.0, 1.0, 0.5, 3.0, lo=0.0, hi=4.0)))
    elif op == "ftrl":
        # lr >= 1e-3 and lr_power >= -0.75: sigma*w (up to n^0.75/lr * |w|) stays inside fp32's range
        c.update(weight_decay=0.0, lr=draw(_hp(1e-3, 0.1, 1.0, 1e3, lo=1e-3, hi=2.0)),
                 # (an exponent under 1e-9 becomes 0, as _hp does: opmath would round it to 0)
                 lr_power=draw(st.sampled_from([-0.5, -0.5, 0.0, -0.75, -0.25])
                               | st.floats(-0.75, 0.0).map(lambda x: 0.0 if x > -1e-9 else x)),
                 beta=draw(_hp(0.0, 0.0, 0.1, 1.0, lo=0.0, hi=2.0)),
                 l2_shrinkage=draw(_hp(0.0, 0.0, 1e-3, 1.0, lo=0.0, hi=2.0)))
    elif op == "lion":
        c.update(lr=draw(_hp(0.0, 1e-12, 1e-3, 0.1, 1.0, 1e3, lo=0.0, hi=2.0)),
                 beta1=draw(_hp(0.0, 0.5, 0.9, 0.999, lo=0.0, hi=0.9999)),
                 beta2=draw(_hp(0.0, 0.9, 0.99, 0.999, lo=0.0, hi=0.9999)))
    else:
        c.update(lr=draw(_hp(0.0, 1e-12, 1e-3, 0.1, 1.0, 1e3, lo=0.0, hi=2.0)),
                 lr_decay=draw(_hp(0.0, 0.0, 1e-2, 1.0, 1e3, lo=0.0, hi=1.0)),
                 eps=draw(_hp(0.0, 1e-30, 1e-10, 1e-3, 1.0, lo=0.0, hi=1.0)),
                 step0=draw(st.sampled_from([0, 1, 2, 9, 1000]) | st.integers(0, 2**24 - 2)))
    return c


def _values(gen, numel, dtype, mode, zero_frac, square=False):
    lo, hi = EXPONENTS[dtype]
    if square:  # squared later: half the exponent range
        lo, hi = lo / 2, hi / 2
    if mode == "wide" or (mode == "mixed" and torch.rand((), generator=gen) < 0.5):
        mag = 10 ** (lo + (hi - lo) * torch.rand(numel, generator=gen, dtype=torch.float64))
        x = mag * torch.where(torch.rand(numel, generator=gen) < 0.5, -1.0, 1.0).double()
    else:
        scale = 10 ** (lo / 3 + (hi / 3 - lo / 3) * torch.rand((), generator=gen, dtype=torch.float64))
        x = (torch.randn(numel, generator=gen, dtype=torch.float64) * scale).clamp(-10.0 ** hi, 10.0 ** hi)
        x = torch.where(x.abs() < 10.0 ** lo, torch.zeros_like(x), x)
    if zero_frac:
        x = torch.where(torch.rand(numel, generator=gen) < zero_frac, torch.zeros_like(x), x)
    return x * x if square else x


def build(c):
    """Concrete tensors for a case: params, grads, state (in opmath, like fusedreg.optim creates it)."""
    gen = torch.Generator().manual_seed(c["seed"])
    t = dict(params=[], grads=[], bufs=[], m=[], v=[], vmax=[], sums=[], steps=[], n=[], z=[])
    for shape, dt in c["tensors"]:
        numel = math.prod(shape)
        O = opmath(dt)

        def val(square=False, zero_frac=0.0, dt=dt):
            return _values(gen, numel, dt, c["value_mode"], zero_frac, square).reshape(shape)

        t["params"].append(val(zero_frac=c["zero_frac"] / 2).to(dt))
        g = val(zero_frac=c["zero_frac"] / 4)
        if c["nonfinite_grads"] and numel:
            pick = torch.rand(numel, generator=gen).reshape(shape)
            g = torch.where(pick < 0.1, float("nan"), torch.where(pick < 0.2, float("inf"), g))
            g = torch.where(pick > 0.9, -float("inf"), g)
        t["grads"].append(g.to(dt))
        if c["op"] == "sgd":
            t["bufs"].append(val().to(O))
        elif c["op"] == "adam":
            t["m"].append(val().to(O))
            t["v"].append(val(square=True).to(O))
            t["vmax"].append((t["v"][-1].double() * (1 + torch.rand(shape, generator=gen, dtype=torch.float64))
                              * (torch.rand(shape, generator=gen) < 0.8)).to(O))
        elif c["op"] == "ftrl":
            t["n"].append(val(square=True, zero_frac=0.1).to(O))
            t["z"].append(val().to(O))
        elif c["op"] == "lion":
            t["m"].append(val().to(O))
        elif c["op"] == "adagrad":
            t["sums"].append(val(square=True, zero_frac=0.1).to(O))
        if c["op"] in ("adam", "adagrad"):
            t["steps"].append(torch.tensor(float(c["step0"]), dtype=torch.float32))
    return t


def clone(t):
    return {k: [x.clone() for x in v] for k, v in t.items()}


# ------------------------------------------------------------------------------------------------------------
# The oracle: the documented math (fusedreg/_ops.py, REFERENCE.md) in fp64, written independently of
# fusedreg.reference, with the running magnitude M of every value (see the module docstring).

def _l1_thr(c, step, d):
    """The soft-threshold of each element: step*l1/denom (prox), step*l1 (decoupled), or 0."""
    if not c["l1"] or c["l1_mode"] == "subgradient":
        return torch.zeros_like(d)
    return step * c["l1"] / d if c["l1_mode"] == "prox" else torch.full_like(d, step * c["l1"])


def _prox(v, Mv, step, denom, Mden, c, O):
    """Returns (value, M, boundary, l0_boundary, value_without_the_l0_cut); O: the opmath of the tensor.
    Mden: the magnitude of denom's rounding error (u*Mden bounds it; 0 for SGD's exact denom of 1)."""
    band = 2 * STEP[O]
    d = denom if torch.is_tensor(denom) else torch.full_like(v, float(denom))
    r = 1 + (Mden / d if torch.is_tensor(Mden) else 0.0)  # a scalar over denom carries denom's relative error
    thr = _l1_thr(c, step, d)
    M = Mv + thr * (r if c["l1_mode"] == "prox" else 1.0)  # decoupled: lr*l1, no denominator's error
    near = ((v.abs() - thr).abs() <= band * M)  # includes |v| ~ 0 (cancellation, nonneg) when thr is 0
    v = torch.sign(v) * torch.clamp_min(v.abs() - thr, 0)
    if c["l2"]:
        q = 1 + step * c["l2"] / d
        Mq = 1 + step * c["l2"] / d * r
        v, M = v / q, M / q + (v / q).abs() * Mq / q
    alt = v
    near0 = torch.zeros_like(near)
    if c["l0"]:
        cut = torch.sqrt(2 * step * c["l0"] / d)
        near0 = (v.abs() - cut).abs() <= band * (M + cut * r)
        v = torch.where(v.abs() <= cut, torch.zeros_like(v), v)
    if c["nonneg"]:
        v, alt = torch.clamp_min(v, 0), torch.clamp_min(alt, 0)
    return v, M, near | near0, near0, alt


def _grad(c, p, g):
    g = g / c["grad_scale"] if c["grad_scale"] is not None else g
    Mg = g.abs()
    if c["maximize"]:
        g = -g
    if c["l1"] and c["l1_mode"] == "subgradient":
        g, Mg = g + c["l1"] * torch.sign(p), Mg + c["l1"] * (p != 0)
    coupled = not (c["op"] == "adam" and c["decoupled"]) and c["op"] not in ("lion", "muon")
    if c["weight_decay"] and coupled:
        g, Mg = g + c["weight_decay"] * p, Mg + c["weight_decay"] * p.abs()
    return g, Mg


def _ftrl_power(x, Mx, e):
    """x^e and its magnitude: x's relative error times e, pow's own rounding, and e's rounding to opmath
    (x^(e(1+u)) = x^e * (1 + e*u*ln x))."""
    if e == 0:
        return torch.ones_like(x), torch.zeros_like(x)
    v = x ** e
    pos = x > 0
    rel = 1 + torch.where(pos, e * Mx / torch.where(pos, x, 1.0) + e * torch.log(torch.where(pos, x, 1.0)).abs(),
                          0.0)
    return v, v * rel


def ftrl_oracle(c, p, g, Mg, n0, z0, O):
    """FTRL-Proximal (TensorFlow's formula) in fp64 with magnitudes: {name: (value, M, boundary, l0b, alt)}."""
    none = torch.zeros_like(p, dtype=torch.bool)
    lr, e, l2s = c["lr"], -c["lr_power"], c["l2_shrinkage"]
    gs, Mgs = g + 2 * l2s * p, Mg + 2 * l2s * p.abs()
    n1, Mn1 = n0 + g * g, n0 + Mg * Mg
    pn1, Mpn1 = _ftrl_power(n1, Mn1, e)
    pn0, Mpn0 = _ftrl_power(n0, n0, e)
    sigma, Msig = (pn1 - pn0) / lr, (Mpn1 + Mpn0) / lr
    z, Mz = z0 + (gs - sigma * p), z0.abs() + Mgs + Msig * p.abs()
    q, Mq = (c["beta"] + pn1) / lr + 2 * c["l2"], (c["beta"] + Mpn1) / lr + 2 * c["l2"]
    thr = c["l1"] if c["l1_mode"] == "prox" else 0.0
    band = 2 * STEP[O]
    w = torch.where(z.abs() <= thr, torch.zeros_like(z), -(torch.sign(z) * (z.abs() - thr)) / q)
    Mw = (Mz + thr) / q + w.abs() * Mq / q
    near = (z.abs() - thr).abs() <= band * (Mz + thr)
    alt, near0 = w, none
    if c["l0"]:
        cut = torch.sqrt(2 * c["l0"] / q)
        near0 = (w.abs() - cut).abs() <= band * (Mw + cut * Mq / q)
        w = torch.where(w.abs() <= cut, torch.zeros_like(w), w)
    if c["nonneg"]:
        w, alt = torch.clamp_min(w, 0), torch.clamp_min(alt, 0)
    return dict(n=(n1, Mn1, none, none, n1), z=(z, Mz, none, none, z), params=(w, Mw, near | near0, near0, alt))


def oracle(c, t, i):
    """fp64 results for tensor i. Returns {name: (value, M, boundary, l0_boundary, alt)} and (upd, targets):
    v = p_eff - upd and the thresholds on |v| (valid where the update does not depend on p)."""
    f = lambda x: x.double()  # noqa: E731
    p, g0 = f(t["params"][i]), f(t["grads"][i])
    g, Mg = _grad(c, p, g0)
    out = {}
    none = torch.zeros_like(p, dtype=torch.bool)
    scale = 1.0
    if c["op"] == "ftrl":
        return ftrl_oracle(c, p, g, Mg, f(t["n"][i]), f(t["z"][i]), opmath(t["params"][i].dtype)), None
    if c["op"] == "muon":  # decoupled decay, then the step lr*lr_ratio*u, then SGD's penalties with step lr
        lr, adj = c["lr"], c["lr"] * c["lr_ratio"]
        scale = 1 - lr * c["weight_decay"]
        upd, Mupd, step, denom, Mden = adj * g, adj * Mg, lr, 1.0, None
    elif c["op"] == "sgd":
        lr, mu, tau = c["lr"], c["momentum"], c["dampening"]
        d, Md = g, Mg
        if mu != 0:
            buf = f(t["bufs"][i])
            b, Mb = (g, Mg) if c["first_step"] else (mu * buf + (1 - tau) * g, mu * buf.abs() + (1 - tau) * Mg)
            out["bufs"] = (b, Mb, none, none, b)
            d, Md = (g + mu * b, Mg + mu * Mb) if c["nesterov"] else (b, Mb)
        upd, Mupd, step, denom, Mden = lr * d, lr * Md, lr, 1.0, None
    elif c["op"] == "lion":
        lr, b1, b2 = c["lr"], c["beta1"], c["beta2"]
        if c["weight_decay"]:
            scale = 1 - lr * c["weight_decay"]
        m0 = f(t["m"][i])
        cc, Mc = b1 * m0 + (1 - b1) * g, b1 * m0.abs() + (1 - b1) * Mg
        mm = b2 * m0 + (1 - b2) * g
        out["m"] = (mm, b2 * m0.abs() + (1 - b2) * Mg, none, none, mm)
        upd = lr * torch.sign(cc)
        # sign(c) jumps at 0: where c is within rounding of 0, a kernel's sign may differ from fp64's (M = inf:
        # any result is accepted there)
        near_c = (cc.abs() <= 2 * STEP[opmath(t["params"][i].dtype)] * Mc) & (Mc > 0)
        Mupd = torch.where(near_c, float("inf"), upd.abs())
        step, denom, Mden = lr, 1.0, None
    elif c["op"] == "adam":
        lr, b1, b2, eps = c["lr"], c["beta1"], c["beta2"], c["eps"]
        if c["decoupled"] and c["weight_decay"]:
            scale = 1 - lr * c["weight_decay"]
        k = c["step0"] + 1
        m0, v0 = f(t["m"][i]), f(t["v"][i])
        m, Mm = m0 + (1 - b1) * (g - m0), m0.abs() + g.abs() + Mg
        vv = b2 * v0 + (1 - b2) * g * g
        out["m"] = (m, Mm, none, none, m)
        out["v"] = (vv, b2 * v0 + (1 - b2) * Mg * Mg, none, none, vv)
        Mvv = out["v"][1]
        if c["amsgrad"]:
            vv = torch.maximum(f(t["vmax"][i]), vv)
            Mvv = torch.maximum(f(t["vmax"][i]), Mvv)
            out["vmax"] = (vv, Mvv, none, none, vv)
        out["steps"] = k
        bc1, bc2s = 1 - b1 ** k, math.sqrt(1 - b2 ** k)
        sq = torch.sqrt(vv)
        denom = sq / bc2s + eps
        # sqrt halves the relative error of vv: |err(sqrt(vv))| <= u*Mvv/sqrt(vv) (0 where vv is exactly 0).
        Mden = torch.where(sq > 0, Mvv / sq, torch.zeros_like(sq)) / bc2s + eps
        upd = (lr / bc1) * (m / denom)
        Mupd = (lr / bc1) * (Mm / denom + m.abs() * Mden / denom ** 2)
        # m/denom can overflow opmath (eps ~ 1e-30 and v = 0 with beta2 = 0) where fp64 does not; lr*inf is
        # then inf or NaN (lr = 0), as in torch.optim. M = inf marks such elements: any result is accepted.
        ratio_max = torch.finfo(opmath(t["params"][i].dtype)).max / 4
        Mupd = torch.where((m / denom).abs() > ratio_max, float("inf"), Mupd)
        step = lr
    else:
        lr, eps = c["lr"], c["eps"]
        k = c["step0"] + 1
        clr = lr / (1 + (k - 1) * c["lr_decay"])
        s = f(t["sums"][i]) + g * g
        Ms = f(t["sums"][i]) + Mg * Mg
        out["sums"] = (s, Ms, none, none, s)
        out["steps"] = k
        sq = torch.sqrt(s)
        denom = sq + eps
        Mden = torch.where(sq > 0, Ms / sq, torch.zeros_like(sq)) + eps
        upd = clr * (g / denom)
        Mupd = clr * (Mg / denom + g.abs() * Mden / denom ** 2)
        step = clr
    pe = p * scale
    out["params"] = _prox(pe - upd, pe.abs() + Mupd, step, denom, Mden, c, opmath(t["params"][i].dtype))
    # Thresholds on |v| for placement: the L1 cut (or 0) and the L0 cut mapped back through l1 and l2.
    d = denom if torch.is_tensor(denom) else torch.full_like(p, float(denom))
    thr = _l1_thr(c, step, d)
    targets = [thr]
    if c["l0"]:
        q = 1 + step * c["l2"] / d if c["l2"] else 1.0
        targets.append(thr + torch.sqrt(2 * step * c["l0"] / d) * q)
    return out, (upd, scale, targets)


def place(c, t):
    """Move a fraction of the params so v = p_eff - upd lands at or a few ulps beside a threshold."""
    decoupled = c["op"] in ("lion", "muon") or c["op"] == "adam" and c["decoupled"]
    if not c["place"] or c["weight_decay"] and not decoupled or c["op"] == "ftrl":
        return  # FTRL's thresholds are on z, which the state sets: tests/test_kernels.py places z there
    if c["l1"] and c["l1_mode"] == "subgradient":
        return
    gen = torch.Generator().manual_seed(c["seed"] + 1)
    for i, p in enumerate(t["params"]):
        if not p.numel():
            continue
        _, (upd, scale, targets) = oracle(c, t, i)
        if scale == 0:
            continue
        u = unit_roundoff(opmath(p.dtype))
        T = targets[int(torch.randint(len(targets), (), generator=gen))]
        k = torch.randint(-3, 4, p.shape, generator=gen).double()
        sign = torch.where(torch.rand(p.shape, generator=gen) < 0.5, -1.0, 1.0).double()
        newp = (sign * T * (1 + k * u) + upd) / scale
        pick = (torch.rand(p.shape, generator=gen) < c["place"]) & torch.isfinite(newp)
        p.copy_(torch.where(pick, newp, p.double()).to(p.dtype))


# ------------------------------------------------------------------------------------------------------------
# Running and checking

def run(c, t, backend):
    fn = getattr(fusedreg.functional, c["op"])
    kw = dict(maximize=c["maximize"], l1=c["l1"], l1_mode=c["l1_mode"],
              l2=c["l2"], l0=c["l0"], nonneg=c["nonneg"], backend=backend,
              grad_scale=None if c["grad_scale"] is None else torch.tensor(c["grad_scale"]),
              found_inf=None if c["found_inf"] is None else torch.tensor(c["found_inf"]))
    if c["op"] == "ftrl":
        fn(t["params"], t["grads"], t["n"], t["z"], lr=c["lr"], lr_power=c["lr_power"], beta=c["beta"],
           l2_shrinkage=c["l2_shrinkage"], **kw)
        return
    kw["weight_decay"] = c["weight_decay"]
    if c["op"] == "muon":
        del kw["maximize"]
        fn(t["params"], t["grads"], lr=c["lr"], lr_ratio=c["lr_ratio"], **kw)
    elif c["op"] == "sgd":
        fn(t["params"], t["grads"], t["bufs"] if c["momentum"] else [], lr=c["lr"], momentum=c["momentum"],
           dampening=c["dampening"], nesterov=c["nesterov"], first_step=c["first_step"], **kw)
    elif c["op"] == "adam":
        fn(t["params"], t["grads"], t["m"], t["v"], t["vmax"] if c["amsgrad"] else [], t["steps"], lr=c["lr"],
           beta1=c["beta1"], beta2=c["beta2"], eps=c["eps"], decoupled=c["decoupled"], amsgrad=c["amsgrad"], **kw)
    elif c["op"] == "lion":
        fn(t["params"], t["grads"], t["m"], lr=c["lr"], beta1=c["beta1"], beta2=c["beta2"], **kw)
    else:
        fn(t["params"], t["grads"], t["sums"], t["steps"], lr=c["lr"], lr_decay=c["lr_decay"], eps=c["eps"], **kw)


def bits(x):
    return x.detach().contiguous().reshape(-1).view(torch.uint8)


def mismatches(got, want, D):
    """Indices (and why) where `got` (dtype D) breaks the rule against want = (value, M, boundary, l0b, alt)."""
    value, M, near, near0, alt = want
    a = got
    if torch.equal(a, value):  # the common fp64 case, and every exact zero pattern
        return {}
    O = opmath(D)
    tol = 2 * STEP[O] * M
    if D != O:
        tol = tol + STEP[D] * torch.maximum(value.abs(), alt.abs()) + subnormal_min(D)
    fin, afin = torch.isfinite(value), torch.isfinite(a)
    big = torch.finfo(D).max
    overflow = fin & (value.abs() >= big * (1 - 2 * STEP[O])) & (a.abs() >= big * (1 - 2 * STEP[D])) & (
        torch.sign(a) == torch.sign(value))
    err = (a - value).abs()
    problems = {
        "finite where the oracle is NaN/inf": ~fin & afin,
        "NaN/inf where the oracle is finite": fin & ~afin & ~overflow & torch.isfinite(M),
        "off by more than tol": afin & ~overflow & (err > tol) & torch.isfinite(M) & ~(near0 & ((a == 0) | ((a - alt).abs() <= tol))),
        "zero pattern": fin & ~near & (value.abs() > 2 * subnormal_min(D)) & ((a == 0) != (value == 0)),
    }
    return {why: m.nonzero().flatten()[:5].tolist() for why, m in problems.items() if m.any()}


def check_against_oracle(c, before, after, label, wants):
    """All tensors of one kind and dtype are checked at once (flattened and concatenated)."""
    errors, groups = [], {}
    for i, p in enumerate(before["params"]):
        for name, w in wants[i].items():
            if name == "steps":
                if after["steps"][i].item() != w:
                    errors.append(f"{label} tensor {i} steps: {after['steps'][i].item()} != {w}")
                continue
            if name == "bufs" and not c["momentum"]:
                continue
            groups.setdefault((name, p.dtype), []).append((i, after[name][i], w))
    for (name, D), items in groups.items():
        got = torch.cat([x.reshape(-1).double() for _, x, _ in items])
        want = tuple(torch.cat([w[k].reshape(-1) for _, _, w in items]) for k in range(5))
        if name != "params":  # state: an exact 0 may come out of a cancellation within rounding of 0
            want = want[:2] + (want[0].abs() <= 2 * STEP[opmath(D)] * want[1],) + want[3:]
        bad = mismatches(got, want, D if name == "params" else opmath(D))
        if bad:
            offsets = torch.tensor([0] + [x.numel() for _, x, _ in items]).cumsum(0)
            where = {why: [(items[int((offsets <= j).sum()) - 1][0], j - int(offsets[(offsets <= j).sum() - 1]))
                           for j in js] for why, js in bad.items()}
            j = next(iter(bad.values()))
            errors.append(f"{label} {name} {D}: (tensor, index) {where} got {got[j].tolist()} "
                          f"oracle {want[0][j].tolist()} M {want[1][j].tolist()}")
    return errors


def check_direct(c, before, ref, got, wants):
    """The backend against the reference: within tol wherever neither sits at an L0 jump."""
    errors = []
    for i in range(len(before["params"])):
        value, M, near, near0, _ = (x.reshape(-1) for x in wants[i]["params"])
        D = before["params"][i].dtype
        a, b = got["params"][i].double().reshape(-1), ref["params"][i].double().reshape(-1)
        tol = 2 * STEP[opmath(D)] * M + (STEP[D] * b.abs() + subnormal_min(D) if D != opmath(D) else 0)
        both = torch.isfinite(a) & torch.isfinite(b) & ~near0
        bad = both & ((a - b).abs() > tol)
        if bad.any():
            j = bad.nonzero().flatten()[:5].tolist()
            errors.append(f"tensor {i} params {D}: backend {a[j].tolist()} vs reference {b[j].tolist()}")
    return errors


def fuzz_one(c, backend):
    t = build(c)
    place(c, t)
    ref, got = clone(t), clone(t)
    run(c, ref, "torch")
    if backend != "torch":
        run(c, got, backend)
    if c["found_inf"] == 1.0:
        for name in t:
            for i, x in enumerate(t[name]):
                assert torch.equal(bits(ref[name][i]), bits(x)), f"reference changed {name}[{i}] on found_inf"
                assert torch.equal(bits(got[name][i]), bits(x)), f"{backend} changed {name}[{i}] on found_inf"
        return
    wants = [oracle(c, t, i)[0] for i in range(len(t["params"]))]
    errors = check_against_oracle(c, t, ref, "reference", wants)
    if backend != "torch":
        errors += check_against_oracle(c, t, got, backend, wants)
        errors += check_direct(c, t, ref, got, wants)
    assert not errors, "\n".join(errors[:10])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_fuzz_against_reference_and_fp64_oracle(backend, op):
    count = [0]

    @budget(backend)
    @given(c=cases(op))
    def inner(c):
        count[0] += 1
        fuzz_one(c, backend)

    inner()
    report = os.environ.get("FUSEDREG_FUZZ_REPORT")  # a file: one "backend op examples" line per passed test
    if report:
        with open(report, "a") as f:
            f.write(f"{backend} {op} {count[0]}\n")
