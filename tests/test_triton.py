"""The Triton backend (fusedreg.triton) against the reference (fusedreg.reference).

Without CUDA the kernels run on CPU tensors in Triton's interpreter (TRITON_INTERPRET=1, as scripts/test.sh
sets it; without it these tests are skipped), with small BLOCK/CHUNK so that a 1000-element tensor spans
several chunks, each with a full and a masked piece. With CUDA the same tests run on CUDA tensors at larger
sizes. The reference always runs on CPU copies: on CUDA, torch divides by a 0-dim CPU scalar as a
multiplication by its reciprocal, so a CUDA run of the reference is not the formula the kernels implement.

fp32/fp64: every tensor within tolerances.STEP of the reference. bf16/fp16: every tensor's error against an
fp64 run of the reference at most twice the error of the reference run in that precision. The exact-zero
pattern of the params always equals the reference's, including at the thresholds (exact tests below).
"""
import math

import pytest
import torch

from fusedreg import reference as R
from tolerances import STEP, rel_err

T = pytest.importorskip("fusedreg.triton", reason="Triton is not importable here")
from fusedreg.triton import launch  # noqa: E402

CUDA = torch.cuda.is_available()
if not CUDA and not launch.INTERPRET:
    pytest.skip("no CUDA, and TRITON_INTERPRET=1 was not set", allow_module_level=True)
DEV = torch.device("cuda") if CUDA else torch.device("cpu")
SHAPES = [(0,), (1,), (7,), (100_003,) if CUDA else (1000,), (257, 129) if CUDA else (13, 17)]
LOWP = (torch.bfloat16, torch.float16)
GROUP_SHAPES = SHAPES + [(3, 4, 5), (2, 300), (300, 2)]  # 3-D; rows and columns longer than a block


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    # Interpreter only (CPU tensors): several chunks per tensor, full and masked pieces in every chunk.
    monkeypatch.setattr(launch, "INTERPRET_BLOCK", 128)
    monkeypatch.setattr(launch, "INTERPRET_CHUNK", 256)


# ----------------------------------------------------------------------------------------------------------------
# One op, its tensor lists and its positional arguments

def _gen(seed):
    return torch.Generator().manual_seed(seed)


def make_state(op, shapes, dtype, gen, step0=2.0):
    """CPU lists for op, params in dtype, state in fp32 (fp64 for fp64 params), mid-training values."""
    sdt = torch.float64 if dtype == torch.float64 else torch.float32
    p = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    L = {"p": p}
    if op == "sgd":
        L["buf"] = [torch.randn(s, generator=gen).to(sdt) for s in shapes]
    elif op == "adam":
        L["m"] = [0.1 * torch.randn(s, generator=gen).to(sdt) for s in shapes]
        L["v"] = [0.01 * torch.rand(s, generator=gen).to(sdt) for s in shapes]
        L["vmax"] = [0.012 * torch.rand(s, generator=gen).to(sdt) for s in shapes]
        L["step"] = [torch.tensor(step0) for _ in shapes]
    else:
        L["sum"] = [torch.rand(s, generator=gen).to(sdt) for s in shapes]
        L["step"] = [torch.tensor(step0) for _ in shapes]
    return L


def copy_state(L, device=None, dtype=None):
    out = {}
    for k, ts in L.items():
        if k == "step":
            out[k] = [t.clone().to(device or t.device) for t in ts]
        else:
            out[k] = [t.to(device=device or t.device, dtype=dtype or t.dtype, copy=True) for t in ts]
    return out


PEN = dict(l1=0.0, sub=False, l2=0.0, l0=0.0, nonneg=False, group_l1=0.0, group_dim=0)


def call(fn, op, L, grads, o, first_step=False, grad_scale=None, found_inf=None):
    pen = (o["l1"], o["sub"], o["l2"], o["l0"], o["nonneg"], o["group_l1"], o["group_dim"], grad_scale, found_inf)
    # The contract: a state list that its option leaves unused is empty.
    if op == "sgd":
        fn(L["p"], grads, L["buf"] if o["momentum"] else [], o["lr"], o["momentum"], o["dampening"], o["wd"],
           o["nesterov"], o["maximize"], first_step, *pen)
    elif op == "adam":
        fn(L["p"], grads, L["m"], L["v"], L["vmax"] if o["amsgrad"] else [], L["step"], o["lr"], o["beta1"],
           o["beta2"], o["eps"], o["wd"], o["decoupled"], o["amsgrad"], o["maximize"], *pen)
    else:
        fn(L["p"], grads, L["sum"], L["step"], o["lr"], o["lr_decay"], o["wd"], o["eps"], o["maximize"], *pen)


def opts(op, **kw):
    base = {"sgd": dict(lr=0.1, momentum=0.0, dampening=0.0, wd=0.0, nesterov=False, maximize=False),
            "adam": dict(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8, wd=0.0, decoupled=False, amsgrad=False,
                         maximize=False),
            "adagrad": dict(lr=0.1, lr_decay=0.0, wd=0.0, eps=1e-10, maximize=False)}[op]
    return {**base, **PEN, **kw}


def run(op, dtype, o, steps=3, shapes=SHAPES, seed=0, grad_scale=None, first_step=False):
    """Run the kernels (on DEV) and the reference (on CPU, plus fp64 for low precision) for `steps` steps."""
    gen = _gen(seed)
    L0 = make_state(op, shapes, dtype, gen)
    tri, ref = copy_state(L0, DEV), copy_state(L0)
    ref64 = copy_state(L0, dtype=torch.float64) if dtype in LOWP else None
    gs_cpu = None if grad_scale is None else torch.tensor(grad_scale)
    gs_dev = None if grad_scale is None else gs_cpu.to(DEV)
    for k in range(steps):
        scale = 1.0 if grad_scale is None else grad_scale
        grads = [(scale * torch.randn(s, generator=gen)).to(dtype) for s in shapes]
        fs = first_step and k == 0
        call(T.__dict__[op + "_"], op, tri, [g.to(DEV) for g in grads], o, fs, gs_dev)
        call(R.__dict__[op + "_"], op, ref, grads, o, fs, gs_cpu)
        if ref64 is not None:
            call(R.__dict__[op + "_"], op, ref64, [g.double() for g in grads], o, fs,
                 None if gs_cpu is None else gs_cpu.double())
    return tri, ref, ref64


def used(op, o):
    if op == "sgd":
        return ["p", "buf"] if o["momentum"] else ["p"]
    if op == "adam":
        return ["p", "m", "v", "step"] + (["vmax"] if o["amsgrad"] else [])
    return ["p", "sum", "step"]


def compare(op, o, dtype, tri, ref, ref64):
    for k in used(op, o):
        for i, (a, b) in enumerate(zip(tri[k], ref[k])):
            a = a.cpu()
            what = f"{k}[{i}] {tuple(b.shape)}"
            assert a.dtype == b.dtype and a.shape == b.shape, what
            if k == "step":
                assert torch.equal(a, b), what
            elif dtype in LOWP:
                c = ref64[k][i]
                err, err_ref = rel_err(a, c), rel_err(b, c)
                assert err <= 2 * err_ref + 1e-7, f"{what}: error {err:.3g} vs the reference's {err_ref:.3g}"
            else:
                err = rel_err(a, b)
                assert err <= STEP[dtype], f"{what}: rel err {err:.3g}"
            if k == "p":
                assert torch.equal(a == 0, b == 0), f"{what}: exact-zero pattern differs"
    # The untouched states really are untouched (e.g. max_exp_avg_sqs without amsgrad).
    for k in set(tri) - set(used(op, o)):
        for a, b in zip(tri[k], ref[k]):
            assert torch.equal(a.cpu(), b), k


# ----------------------------------------------------------------------------------------------------------------
# Every op x dtype x representative hyperparameters, all shapes in one call, over 3 steps

CASES = [
    ("sgd", dict(wd=0.01), {}),
    ("sgd", dict(momentum=0.9, dampening=0.1, wd=0.01), dict(first_step=True)),
    ("sgd", dict(momentum=0.9, nesterov=True, l1=0.05, l2=0.02), {}),
    ("sgd", dict(maximize=True, l1=0.05, l2=0.1, l0=0.002, nonneg=True), {}),
    ("sgd", dict(momentum=0.5, l1=0.05, sub=True, wd=0.01), dict(grad_scale=1024.0)),
    ("adam", dict(), {}),
    ("adam", dict(amsgrad=True, wd=0.01, l1=0.01), {}),
    ("adam", dict(decoupled=True, wd=0.1, l1=0.01, l2=0.1, l0=1e-4), {}),
    ("adam", dict(maximize=True, l1=0.01, sub=True, nonneg=True, beta1=0.6), dict(grad_scale=1024.0)),
    ("adagrad", dict(), {}),
    ("adagrad", dict(lr_decay=0.01, wd=0.01, l1=0.01, l2=0.1), {}),
    ("adagrad", dict(maximize=True, l0=1e-3, nonneg=True), dict(grad_scale=8.0)),
    ("adagrad", dict(l1=0.02, sub=True, eps=1e-3), {}),
    # group lasso: a second kernel after the update, one program per row (group_dim 0) or column (1)
    ("sgd", dict(momentum=0.9, l1=0.02, group_l1=0.3), dict(shapes=GROUP_SHAPES)),
    ("sgd", dict(l2=0.1, group_l1=2.0, group_dim=1), dict(shapes=GROUP_SHAPES, grad_scale=1024.0)),
    ("adam", dict(decoupled=True, wd=0.1, l1=0.01, group_l1=0.05), {}),
    ("adam", dict(amsgrad=True, l2=0.1, group_l1=0.5, group_dim=1), dict(shapes=GROUP_SHAPES)),
    ("adagrad", dict(l1=0.01, l2=0.1, group_l1=0.05), {}),
    ("adagrad", dict(group_l1=0.5, group_dim=1), dict(shapes=GROUP_SHAPES)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("op,kw,extra", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_reference(op, kw, extra, dtype):
    o = opts(op, **kw)
    tri, ref, ref64 = run(op, dtype, o, **extra)
    compare(op, o, dtype, tri, ref, ref64)


@pytest.mark.parametrize("op,kw", [("sgd", dict(momentum=0.9, wd=0.01, l1=0.05, l2=0.1)),
                                   ("adam", dict(amsgrad=True, decoupled=True, wd=0.1, l1=0.01, l0=1e-4)),
                                   ("adagrad", dict(lr_decay=0.01, l1=0.01, l2=0.1, l0=1e-3)),
                                   ("adam", dict(l1=0.01, l2=0.1, group_l1=0.2, group_dim=1)),
                                   ("adagrad", dict(l1=0.01, group_l1=0.2))])
def test_float64_matches_reference(op, kw):
    o = opts(op, **kw)
    tri, ref, _ = run(op, torch.float64, o, steps=2)
    compare(op, o, torch.float64, tri, ref, None)


def test_many_tensors_in_one_call():
    # 40 tensors of assorted sizes, fp32 and bf16 params: one call (one launch) per dtype, as functional groups.
    gen = _gen(1)
    sizes = [int(n) for n in torch.randint(0, 300 if not CUDA else 5000, (40,), generator=gen)]
    dts = [torch.float32 if i % 3 else torch.bfloat16 for i in range(40)]
    o = opts("adam", amsgrad=True, wd=0.01, l1=0.01)
    L0 = make_state("adam", [(n,) for n in sizes], torch.float32, gen)
    L0["p"] = [p.to(d) for p, d in zip(L0["p"], dts)]
    tri, ref = copy_state(L0, DEV), copy_state(L0)
    for _ in range(2):
        grads = [torch.randn(n, generator=gen).to(d) for n, d in zip(sizes, dts)]
        for d in (torch.float32, torch.bfloat16):
            idx = [i for i in range(40) if dts[i] == d]
            pick = lambda L: {k: [v[i] for i in idx] for k, v in L.items()}  # noqa: E731
            call(T.adam_, "adam", pick(tri), [grads[i].to(DEV) for i in idx], o)
            call(R.adam_, "adam", pick(ref), [grads[i] for i in idx], o)
    for k in ("p", "m", "v", "vmax", "step"):
        for a, b in zip(tri[k], ref[k]):
            tol = 1e-2 if b.dtype == torch.bfloat16 else STEP[torch.float32]
            assert rel_err(a.cpu(), b) <= tol, k
            assert torch.equal(a.cpu() == 0, b == 0), k


# ----------------------------------------------------------------------------------------------------------------
# Exact: values on and a few ulps beside each threshold give the reference's exact zeros and values

def _ulps(x, dtype, k):
    """x (positive, representable in dtype) moved by k ulps of dtype."""
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[dtype]
    t = torch.tensor([x], dtype=dtype).view(bits)
    return (t + k).view(dtype)[0]


def _around(thr, dtype):
    """thr rounded to dtype, -3..+3 ulps around it, both signs, and zeros."""
    base = float(torch.tensor(thr, dtype=torch.float32).to(dtype))
    vals = [_ulps(base, dtype, k) for k in range(-3, 4)]
    vals = torch.stack(vals)
    return torch.cat([vals, -vals, torch.tensor([0.0, -0.0], dtype=dtype)])


def _threshold_case(op, dtype, penalty):
    """(o, L, thr): zero gradient and states for which the update leaves p unchanged and denom is exact."""
    f32 = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    if op == "sgd":
        if penalty == "l1":
            o = opts("sgd", lr=0.1, l1=0.3, l2=0.5)
            thr = f32(0.1 * 0.3)
        else:
            o = opts("sgd", lr=0.25, l0=0.125)
            thr = torch.sqrt(f32(2 * 0.25 * 0.125))  # 0.25, exact
        return o, {"buf": None}, thr
    if op == "adam":  # m = 0, v = 0.5*0.5 = 0.25 -> sqrt exact; step 1: bc2 = 0.5
        o = opts("adam", lr=0.1, beta2=0.5, eps=1e-3, l1=0.3)
        denom = torch.sqrt(f32(0.25)) / f32(math.sqrt(0.5)) + f32(1e-3)
        return o, {"m": 0.0, "v": 0.5, "vmax": 0.0, "step": 0.0}, f32(0.1 * 0.3) / denom
    if penalty == "l1":  # sum 0.25 -> denom = 0.5 + eps; step 1: clr = lr
        o = opts("adagrad", lr=0.1, eps=1e-3, l1=0.3, lr_decay=0.5)
        return o, {"sum": 0.25, "step": 0.0}, f32(0.1 * 0.3) / (f32(0.5) + f32(1e-3))
    o = opts("adagrad", lr=0.25, eps=0.5, l0=0.125)  # denom = 1
    return o, {"sum": 0.25, "step": 0.0}, torch.sqrt(f32(2 * 0.25 * 0.125))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("op,penalty", [("sgd", "l1"), ("sgd", "l0"), ("adam", "l1"), ("adagrad", "l1"),
                                        ("adagrad", "l0")])
def test_exact_at_threshold(op, penalty, dtype):
    o, init, thr = _threshold_case(op, dtype, penalty)
    p = _around(thr.item(), dtype)
    sdt = torch.float32
    L = {"p": [p]}
    for k, val in init.items():
        if k == "step":
            L[k] = [torch.tensor(val)]
        elif k != "buf":
            L[k] = [torch.full(p.shape, val, dtype=sdt)]
    L.setdefault("buf", [torch.zeros(p.shape)])
    tri, ref = copy_state(L, DEV), copy_state(L)
    g = torch.zeros_like(p)
    call(T.__dict__[op + "_"], op, tri, [g.to(DEV)], o)
    call(R.__dict__[op + "_"], op, ref, [g], o)
    a, b = tri["p"][0].cpu(), ref["p"][0]
    assert torch.equal(a, b), (p, a, b)
    # and the reference does what the threshold says (a check of the construction)
    zero = p.float().abs() <= thr
    assert torch.equal(b == 0, zero), (p, b, thr)
    if dtype == torch.float32:
        assert zero.sum() == 2 * 4 + 2 and (~zero).sum() == 2 * 3  # on and below: zero; above: kept


def test_nonneg_at_zero():
    p = torch.tensor([-1e-30, -0.0, 0.0, 1e-30, -1.0, 1.0])
    o = opts("sgd", nonneg=True)
    tri, ref = {"p": [p.to(DEV)], "buf": [p.to(DEV)]}, {"p": [p.clone()], "buf": [p.clone()]}
    call(T.sgd_, "sgd", tri, [torch.zeros(6, device=DEV)], o)
    call(R.sgd_, "sgd", ref, [torch.zeros(6)], o)
    assert torch.equal(tri["p"][0].cpu(), ref["p"][0])
    assert torch.equal(ref["p"][0] == 0, torch.tensor([True, True, True, False, True, False]))


# ----------------------------------------------------------------------------------------------------------------
# AMP: grad_scale / found_inf

@pytest.mark.parametrize("op", ["sgd", "adam", "adagrad"])
def test_found_inf_leaves_everything_untouched(op):
    o = opts(op, momentum=0.9, wd=0.1, l1=0.01) if op == "sgd" else opts(op, wd=0.1, l1=0.01)
    if op == "adam":
        o["amsgrad"] = True
    L0 = make_state(op, SHAPES, torch.float32, _gen(3))
    tri = copy_state(L0, DEV)
    grads = [torch.randn(s).to(DEV) for s in SHAPES]
    for fi in ([1.0], [float("inf")], [float("nan")]):
        call(T.__dict__[op + "_"], op, tri, grads, o, grad_scale=torch.tensor(2.0, device=DEV),
             found_inf=torch.tensor(fi, device=DEV))
        for k in L0:
            for a, b in zip(tri[k], L0[k]):
                assert torch.equal(a.cpu(), b), (fi, k)
    # found_inf = 0 runs the step, steps advance
    call(T.__dict__[op + "_"], op, tri, grads, o, found_inf=torch.tensor([0.0], device=DEV))
    assert not torch.equal(tri["p"][-1].cpu(), L0["p"][-1])
    if "step" in tri:
        assert all(s.item() == 3.0 for s in tri["step"])


# ----------------------------------------------------------------------------------------------------------------
# Layout, caching, the custom op, bad input

def test_non_contiguous_tensors():
    p, buf, g = torch.randn(13, 9).t(), torch.randn(13, 9).t(), torch.randn(13, 18)[:, ::2].t()
    assert not p.is_contiguous() and not g.is_contiguous() and p.shape == g.shape
    o = opts("sgd", momentum=0.9, l1=0.05)
    tri = {"p": [p.clone().to(DEV)], "buf": [buf.clone().to(DEV)]}  # clone keeps the transposed strides
    ref = {"p": [p.clone()], "buf": [buf.clone()]}
    assert not tri["p"][0].is_contiguous()
    call(T.sgd_, "sgd", tri, [g.to(DEV)], o)
    call(R.sgd_, "sgd", ref, [g], o)
    for k in ("p", "buf"):
        assert rel_err(tri[k][0].cpu(), ref[k][0]) <= STEP[torch.float32], k


def test_tables_are_cached_and_hyperparameters_change_freely():
    L = copy_state(make_state("adam", SHAPES, torch.float32, _gen(4)), DEV)
    grads = [torch.randn(s).to(DEV) for s in SHAPES]
    call(T.adam_, "adam", L, grads, opts("adam"))
    n = len(launch._cache)
    for lr, l1 in ((0.02, 0.0), (0.03, 0.1), (0.001, 1e-5)):
        call(T.adam_, "adam", L, grads, opts("adam", lr=lr, l1=l1))
    assert len(launch._cache) == n
    if CUDA:  # one compiled variant for all those hyperparameters
        kernel = T.adam.adam_kernel
        caches = getattr(kernel, "device_caches", None)
        if caches and all(isinstance(c, tuple) and isinstance(c[0], dict) for c in caches.values()):
            assert sum(len(c[0]) for c in caches.values()) == 1


def test_registered_custom_ops_match():
    o = opts("adagrad", lr_decay=0.01, l1=0.01)
    L0 = make_state("adagrad", SHAPES, torch.float32, _gen(5))
    a, b = copy_state(L0, DEV), copy_state(L0)
    grads = [torch.randn(s) for s in SHAPES]
    call(torch.ops.fusedreg.triton_adagrad_, "adagrad", a, [g.to(DEV) for g in grads], o)
    call(R.adagrad_, "adagrad", b, grads, o)
    compare("adagrad", o, torch.float32, a, b, None)


def test_torch_compile_sees_one_custom_op():
    # Under torch.compile the entry points dispatch to the registered custom op, which dynamo keeps whole.
    o = opts("adam", l1=0.01, amsgrad=True)
    L0 = make_state("adam", SHAPES, torch.float32, _gen(6))
    a, b = copy_state(L0, DEV), copy_state(L0)
    grads = [torch.randn(s) for s in SHAPES]

    def step(L, grads, lr):
        o["lr"] = lr
        call(T.adam_, "adam", L, grads, o)

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    for lr in (0.01, 0.02):
        compiled(a, [g.to(DEV) for g in grads], lr)
        o["lr"] = lr
        call(R.adam_, "adam", b, grads, o)
    compare("adam", o, torch.float32, a, b, None)


def test_bad_input():
    p = [torch.zeros(3, device=DEV)]
    # The contract's errors (fusedreg._ops.check)
    with pytest.raises(RuntimeError, match="one per param"):
        T.sgd_(p, [], [], 0.1, 0.0, 0.0, 0.0, False, False, False, 0.0, False, 0.0, 0.0, False)
    with pytest.raises(RuntimeError, match="shape"):
        T.sgd_(p, [torch.zeros(4, device=DEV)], [], 0.1, 0.0, 0.0, 0.0, False, False, False, 0.0, False, 0.0, 0.0,
               False)
    with pytest.raises(RuntimeError, match="float32, float64"):
        q = [torch.zeros(3, dtype=torch.int32, device=DEV)]
        T.sgd_(q, q, [], 0.1, 0.0, 0.0, 0.0, False, False, False, 0.0, False, 0.0, 0.0, False)
    T.sgd_([], [], [], 0.1, 0.0, 0.0, 0.0, False, False, False, 0.0, False, 0.0, 0.0, False)  # empty: a no-op
