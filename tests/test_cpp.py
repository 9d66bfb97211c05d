"""Kernel-level tests of the C++ CPU kernels: torch.ops.fusedreg.<op> vs fusedreg.reference.<op> on clones.

Every op x dtype x size x a grid of hyperparameters, several steps, comparing params, every state tensor and the
step counters; exact-zero patterns (including values placed exactly at and a few ulps beside the thresholds);
found_inf; layouts the kernels must stage; argument errors.
"""
import math
import zlib

import pytest
import torch

import fusedreg._ops  # noqa: F401  (the schemas, before the kernels register)
from fusedreg import reference
from tolerances import STEP, rel_err

try:
    import fusedreg._C  # noqa: F401
    HAVE_C = all(torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedreg::{op}", "CPU")
                 for op in fusedreg._ops.SCHEMAS)
except ImportError:
    HAVE_C = False

pytestmark = pytest.mark.skipif(not HAVE_C, reason="fusedreg._C is not built")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
REDUCED = (torch.bfloat16, torch.float16)
# bf16/fp16 params: the kernel's error vs an fp64 reference run may be at most this times the reference's own.
REDUCED_FACTOR = 2.0

SIZES = {
    "0": [(0,)], "1": [(1,)], "7": [(7,)], "4097": [(4097,)], "2d": [(33, 65)],
    "many": [(n,) for n in (0, 1, 3, 16, 17, 31, 64, 100, 255, 1000, 4097, 0, 5)] + [(7, 9), (2, 3, 4)] * 10,
    "big": [((1 << 20) + 3,)],  # only with BIG_CASES, marked slow
}
SIZE_PARAMS = [k for k in SIZES if k != "big"]

NOPEN = dict(l1=0.0, l1_subgradient=False, l2=0.0, l0=0.0, nonneg=False, group_l1=0.0, group_dim=0)
SGD_GRID = {
    "plain": dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False, first=False),
    "momentum_l1": dict(momentum=0.9, dampening=0.1, weight_decay=1e-2, nesterov=False, maximize=False,
                        first=True, l1=0.5),
    "nesterov_l2_l0_max": dict(momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=True, maximize=True,
                               first=False, l2=0.3, l0=0.01),
    "subgrad_nonneg_scaled": dict(momentum=0.5, dampening=0.0, weight_decay=1e-3, nesterov=False, maximize=False,
                                  first=True, l1=0.5, l1_subgradient=True, nonneg=True, scale=True),
    "elastic_all": dict(momentum=0.0, dampening=0.0, weight_decay=1e-2, nesterov=False, maximize=False,
                        first=False, l1=0.3, l2=0.2, l0=0.02, nonneg=True),
    "group_rows_l1": dict(momentum=0.9, dampening=0.0, weight_decay=1e-2, nesterov=False, maximize=False,
                          first=True, l1=0.1, group_l1=0.5, group_dim=0),
    "group_cols_scaled": dict(momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, maximize=False,
                              first=False, l2=0.1, group_l1=0.5, group_dim=1, scale=True),
}
ADAM_GRID = {
    "plain": dict(beta1=0.9, beta2=0.999, weight_decay=0.0, decoupled=False, amsgrad=False, maximize=False),
    "adam_l1": dict(beta1=0.9, beta2=0.999, weight_decay=1e-2, decoupled=False, amsgrad=False, maximize=False,
                    l1=0.7),
    "adamw_l1_l2": dict(beta1=0.9, beta2=0.999, weight_decay=1e-2, decoupled=True, amsgrad=False, maximize=False,
                        l1=0.7, l2=0.5),
    "amsgrad_max_subgrad_scaled": dict(beta1=0.9, beta2=0.99, weight_decay=1e-2, decoupled=True, amsgrad=True,
                                       maximize=True, l1=0.1, l1_subgradient=True, scale=True),
    "bigw_l0_nonneg": dict(beta1=0.3, beta2=0.9, weight_decay=0.0, decoupled=False, amsgrad=True, maximize=False,
                           l0=0.5, nonneg=True),
    "adamw_group_rows_l1": dict(beta1=0.9, beta2=0.999, weight_decay=1e-2, decoupled=True, amsgrad=False,
                                maximize=False, l1=0.3, group_l1=0.3, group_dim=0),
    "amsgrad_group_cols_l2_scaled": dict(beta1=0.9, beta2=0.99, weight_decay=0.0, decoupled=False, amsgrad=True,
                                         maximize=False, l2=0.5, group_l1=0.3, group_dim=1, scale=True),
}
ADAGRAD_GRID = {
    "plain": dict(lr_decay=0.0, weight_decay=0.0, maximize=False),
    "decay_l1_l2": dict(lr_decay=0.01, weight_decay=1e-2, maximize=False, l1=0.7, l2=0.5),
    "max_subgrad_l0_nonneg_scaled": dict(lr_decay=0.0, weight_decay=1e-3, maximize=True, l1=0.1,
                                         l1_subgradient=True, l0=0.5, nonneg=True, scale=True),
    "group_rows_l1_l2": dict(lr_decay=0.01, weight_decay=0.0, maximize=False, l1=0.2, l2=0.5, group_l1=0.3,
                             group_dim=0),
    "group_cols_scaled": dict(lr_decay=0.0, weight_decay=1e-2, maximize=False, group_l1=0.3, group_dim=1,
                              scale=True),
}
GRIDS = {"sgd_": SGD_GRID, "adam_": ADAM_GRID, "adagrad_": ADAGRAD_GRID}
CASES = [(op, name) for op, grid in GRIDS.items() for name in grid]
BIG_CASES = [("sgd_", "momentum_l1"), ("adam_", "adamw_l1_l2"), ("adagrad_", "decay_l1_l2")]
STEPS = 3


def opmath(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


class Case:
    """The tensors of one op call, and how to call it."""

    def __init__(self, op, hp, shapes, dtype, gen):
        self.op, self.hp, self.dtype = op, dict(hp), dtype
        self.scale = 1024.0 if self.hp.pop("scale", False) else None
        od = opmath(dtype)
        self.params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
        pos = [torch.rand(s, generator=gen, dtype=torch.float64).to(od) * 0.1 for s in shapes]
        if op == "sgd_":
            self.states = {"momentum_buffers": [torch.randn(s, generator=gen, dtype=torch.float64).to(od)
                                                for s in shapes] if hp["momentum"] else []}
        elif op == "adam_":
            self.states = {"exp_avgs": [torch.randn(s, generator=gen, dtype=torch.float64).to(od) * 0.1
                                        for s in shapes],
                           "exp_avg_sqs": pos,
                           "max_exp_avg_sqs": [x * 1.5 for x in pos] if hp["amsgrad"] else [],
                           "state_steps": [torch.tensor(float(i % 3), dtype=torch.float32) for i in range(len(shapes))]}
        else:
            self.states = {"state_sums": pos,
                           "state_steps": [torch.tensor(float(i % 3), dtype=torch.float32) for i in range(len(shapes))]}
        self.shapes = shapes

    def grads(self, gen):
        scale = self.scale or 1.0
        return [(torch.randn(s, generator=gen, dtype=torch.float64) * scale).to(self.dtype) for s in self.shapes]

    def clone(self, dtype=None):
        c = object.__new__(Case)
        c.__dict__.update(self.__dict__)
        if dtype is None:
            c.params = [p.clone() for p in self.params]
            c.states = {k: [t.clone() for t in v] for k, v in self.states.items()}
        else:
            c.dtype = dtype
            c.params = [p.to(dtype) for p in self.params]
            c.states = {k: [t.clone() if k == "state_steps" else t.to(opmath(dtype)) for t in v]
                        for k, v in self.states.items()}
        return c

    def call(self, fn, grads, first_step=False, found_inf=None):
        hp = self.hp
        pen = {k: hp.get(k, NOPEN[k]) for k in NOPEN}
        gs = torch.tensor(self.scale, dtype=torch.float32) if self.scale else None
        fi = found_inf if found_inf is not None else (torch.zeros((), dtype=torch.float32) if self.scale else None)
        grads = [g.to(self.dtype) for g in grads]
        s = self.states
        pen_args = (pen["l1"], pen["l1_subgradient"], pen["l2"], pen["l0"], pen["nonneg"], pen["group_l1"],
                    pen["group_dim"], gs, fi)
        if self.op == "sgd_":
            fn(self.params, grads, s["momentum_buffers"], 0.1, hp["momentum"], hp["dampening"], hp["weight_decay"],
               hp["nesterov"], hp["maximize"], first_step, *pen_args)
        elif self.op == "adam_":
            fn(self.params, grads, s["exp_avgs"], s["exp_avg_sqs"], s["max_exp_avg_sqs"], s["state_steps"], 1e-2,
               hp["beta1"], hp["beta2"], 1e-8, hp["weight_decay"], hp["decoupled"], hp["amsgrad"], hp["maximize"],
               *pen_args)
        else:
            fn(self.params, grads, s["state_sums"], s["state_steps"], 0.1, hp["lr_decay"], hp["weight_decay"],
               1e-10, hp["maximize"], *pen_args)

    def tensors(self):
        """name -> list of tensors compared (params and every state, steps included)."""
        return {"params": self.params, **self.states}


def native(op):
    return getattr(torch.ops.fusedreg, op)


def run_steps(case, op, gen, steps=STEPS, extra=()):
    """Runs `steps` steps on case (native) and on each of `extra` (reference), with the same grads."""
    for k in range(steps):
        grads = case.grads(gen)
        first = bool(case.hp.get("first")) and k == 0
        case.call(native(op), grads, first_step=first)
        for other in extra:
            other.call(getattr(reference, op), grads, first_step=first)


def assert_matches(mine, ref, ref64=None):
    for name, tensors in mine.tensors().items():
        for i, (a, b) in enumerate(zip(tensors, ref.tensors()[name])):
            where = f"{name}[{i}]"
            assert a.dtype == b.dtype and a.shape == b.shape, where
            if name == "state_steps":
                assert torch.equal(a, b), where
                continue
            # The exact-zero pattern is the reference's.
            assert torch.equal(a == 0, b == 0), f"{where}: zero pattern differs"
            if a.numel() == 0:
                continue
            if mine.dtype not in REDUCED:
                assert rel_err(a, b) <= STEP[a.dtype], f"{where}: rel err {rel_err(a, b)}"
            else:
                c = ref64.tensors()[name][i].double()
                err, ref_err = (a.double() - c).abs().max().item(), (b.double() - c).abs().max().item()
                assert err <= REDUCED_FACTOR * ref_err, f"{where}: err {err} vs the reference's own {ref_err}"


@pytest.mark.parametrize("size", SIZE_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op,config", CASES)
def test_matches_reference(op, config, dtype, size):
    check_matches_reference(op, config, dtype, size)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op,config", BIG_CASES)
def test_matches_reference_big(op, config, dtype):
    check_matches_reference(op, config, dtype, "big")


def check_matches_reference(op, config, dtype, size):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{op}{config}{size}".encode()))
    case = Case(op, GRIDS[op][config], SIZES[size], dtype, gen)
    ref = case.clone()
    ref64 = case.clone(torch.float64) if dtype in REDUCED else None
    run_steps(case, op, gen, extra=[r for r in (ref, ref64) if r is not None])
    assert_matches(case, ref, ref64)


GROUP_CASES = [(op, name) for op, name in CASES if "group" in name]


@pytest.mark.parametrize("op,config", GROUP_CASES)
def test_group_prox_does_not_depend_on_thread_count(op, config):
    # Column groups are summed per fixed block of rows and row groups within one thread: bitwise the same
    # result on 1 and 2 threads, for matrices big enough to be split (and a 3-D param). fp64 params, so that a
    # different summation order would show (in fp32 it mostly rounds away: blocks per thread passed there).
    results = []
    for threads in (1, 2):
        n = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            gen = torch.Generator().manual_seed(4)
            case = Case(op, GRIDS[op][config], [(600, 70), (70, 600), (6, 50, 40)], torch.float64, gen)
            run_steps(case, op, gen, steps=2)
        finally:
            torch.set_num_threads(n)
        results.append(case.tensors()["params"])
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op,config", CASES)
def test_found_inf_changes_nothing(op, config, dtype):
    gen = torch.Generator().manual_seed(1)
    case = Case(op, GRIDS[op][config], SIZES["many"][:8], dtype, gen)
    before = case.clone()
    case.call(native(op), case.grads(gen), first_step=True, found_inf=torch.ones((), dtype=torch.float32))
    for name, tensors in case.tensors().items():
        for a, b in zip(tensors, before.tensors()[name]):
            assert torch.equal(a, b), name


# ---- thresholds: values placed exactly at, and a few ulps beside, each threshold ------------------------------

def ulp_neighbours(x, dtype, k=3):
    """x and its k nearest representable neighbours on each side in dtype, both signs."""
    t = torch.tensor([x], dtype=dtype)
    vals = [t]
    up, down = t.clone(), t.clone()
    inf = torch.tensor([math.inf], dtype=dtype)
    for _ in range(k):
        up = torch.nextafter(up.float() if dtype in REDUCED else up, inf.float() if dtype in REDUCED else inf)
        up = up.to(dtype)
        down = torch.nextafter(down.float() if dtype in REDUCED else down, -inf.float() if dtype in REDUCED else -inf)
        down = down.to(dtype)
        vals += [up, down]
    if dtype in REDUCED:  # nextafter in fp32 moves less than one reduced ulp: step by the reduced ulp instead
        e = torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(x))
        vals = [torch.tensor([x + j * e], dtype=dtype) for j in range(-k, k + 1)]
    v = torch.cat(vals)
    return torch.cat([v, -v])


THRESHOLD_CASES = {
    # (op, penalty): hyperparameters chosen so that the threshold is exact: SGD lr=0.5, thr = lr*l1 = 1/8,
    # l0: sqrt(2*lr*l0) = 1/8; Adam/Adagrad at a zero grad and zero state: denom = eps = 2^-8,
    # thr = lr*l1/eps = 1/4 and sqrt(2*lr*l0/eps) = 1.
    "sgd_l1": ("sgd_", dict(l1=0.25), 0.125),
    "sgd_l0": ("sgd_", dict(l0=1 / 64), 0.125),
    "sgd_l1_nonneg": ("sgd_", dict(l1=0.25, nonneg=True), 0.125),
    "adam_l1": ("adam_", dict(l1=2.0 ** -6), 0.25),
    "adam_l0": ("adam_", dict(l0=2.0 ** -5), 1.0),
    "adagrad_l1": ("adagrad_", dict(l1=2.0 ** -6), 0.25),
    "adagrad_l0": ("adagrad_", dict(l0=2.0 ** -5), 1.0),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(THRESHOLD_CASES))
@pytest.mark.parametrize("with_grad", [False, True])
def test_exact_zeros_at_threshold(name, dtype, with_grad):
    op, pen_hp, thr = THRESHOLD_CASES[name]
    if with_grad and op != "sgd_":
        pytest.skip("the exact construction with a nonzero grad is SGD's")
    v = ulp_neighbours(thr, dtype)
    # SGD (lr = 1/2): every other element gets g = -sign(v)*2*thr, so p = v - sign(v)*thr is a few ulps of thr
    # (exact) and p - lr*g lands exactly on v. Adam/Adagrad: g = 0 leaves p unchanged (v = p).
    lr_sgd = 0.5
    if with_grad:
        g = torch.where(torch.arange(v.numel()) % 2 == 1, -torch.sign(v.double()) * thr / lr_sgd, 0.0)
    else:
        g = torch.zeros(v.numel(), dtype=torch.float64)
    p = (v.double() + lr_sgd * g).to(dtype)
    g = g.to(dtype)
    assert torch.equal(p.double() - lr_sgd * g.double(), v.double()), "the construction must be exact"
    pen = {**NOPEN, **pen_hp}
    pen_args = (pen["l1"], pen["l1_subgradient"], pen["l2"], pen["l0"], pen["nonneg"], 0.0, 0, None, None)
    od = opmath(dtype)
    other_p, other_g = torch.randn(100, dtype=dtype), torch.randn(100, dtype=dtype)  # a second tensor in the call
    results = []
    for fn in (native(op), getattr(reference, op)):
        pp = [p.clone(), other_p.clone()]
        gg = [g.clone(), other_g.clone()]
        if op == "sgd_":
            bufs = [torch.zeros_like(x, dtype=od) for x in pp]
            fn(pp, gg, bufs, lr_sgd, 0.9, 0.0, 0.0, False, False, True, *pen_args)
        elif op == "adam_":
            st = [[torch.zeros_like(x, dtype=od) for x in pp] for _ in range(2)]
            fn(pp, gg, st[0], st[1], [], [torch.zeros((), dtype=torch.float32) for _ in pp], 2.0 ** -4, 0.9, 0.999,
               2.0 ** -8, 0.0, True, False, False, *pen_args)
        else:
            sums = [torch.zeros_like(x, dtype=od) for x in pp]
            fn(pp, gg, sums, [torch.zeros((), dtype=torch.float32) for _ in pp], 2.0 ** -4, 0.0, 0.0, 2.0 ** -8,
               False, *pen_args)
        results.append(pp)
    (mine, ref) = results
    zeros = (ref[0] == 0)
    assert 0 < zeros.sum() < zeros.numel(), "the construction must put values on both sides of the threshold"
    for a, b in zip(mine, ref):
        assert torch.equal(a == 0, b == 0)
        if dtype in STEP:
            assert rel_err(a, b) <= STEP[dtype]
    assert torch.equal(mine[0], ref[0])


# ---- layouts and errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_contiguous_and_mixed_layouts(dtype):
    gen = torch.Generator().manual_seed(3)
    bases = [torch.randn(40, 30, generator=gen).to(dtype) for _ in range(2)]
    params = [bases[0].t(), bases[1][:, ::2], torch.randn(5, 6, generator=gen).to(dtype)]  # permuted, strided
    grads = [torch.randn(p.shape, generator=gen).to(dtype) for p in params]  # contiguous: strides differ

    def run(fn, ps):
        m = [torch.zeros(p.shape, dtype=torch.float32) for p in ps]
        v = [torch.zeros(p.shape, dtype=torch.float32) for p in ps]
        steps = [torch.zeros((), dtype=torch.float32) for _ in ps]
        fn(ps, grads, m, v, [], steps, 1e-2, 0.9, 0.999, 1e-8, 1e-2, True, False, False, 0.7, False, 0.1, 0.0,
           False, 0.0, 0, None, None)
        return m, v, steps

    ref_bases = [b.clone() for b in bases]
    mine_params = params
    ref_params = [ref_bases[0].t(), ref_bases[1][:, ::2], params[2].clone()]
    mine_state = run(native("adam_"), mine_params)
    ref_state = run(reference.adam_, ref_params)
    for a, b in zip(bases, ref_bases):  # the untouched columns too
        assert torch.equal(a == 0, b == 0)
        assert rel_err(a, b) <= STEP.get(dtype, 1e-2)
    for a, b in zip(mine_params, ref_params):
        assert rel_err(a, b) <= STEP.get(dtype, 1e-2)
    for ma, rb in zip(mine_state, ref_state):
        for a, b in zip(ma, rb):
            assert rel_err(a, b) <= 1e-6


def test_argument_errors():
    p = [torch.zeros(3)]
    g = [torch.zeros(3)]
    with pytest.raises(RuntimeError, match="grads"):
        torch.ops.fusedreg.sgd_(p, [], [], 0.1, 0.0, 0.0, 0.0, False, False, False, 0.0, False, 0.0, 0.0, False,
                                None, None)
    with pytest.raises(RuntimeError, match="momentum_buffers"):
        torch.ops.fusedreg.sgd_(p, g, [], 0.1, 0.9, 0.0, 0.0, False, False, False, 0.0, False, 0.0, 0.0, False,
                                None, None)
    with pytest.raises(RuntimeError, match="exp_avgs"):  # state in the param dtype instead of opmath
        torch.ops.fusedreg.adam_([torch.zeros(3, dtype=torch.bfloat16)], [torch.zeros(3, dtype=torch.bfloat16)],
                                 [torch.zeros(3, dtype=torch.bfloat16)], [torch.zeros(3)], [],
                                 [torch.zeros(())], 1e-3, 0.9, 0.999, 1e-8, 0.0, False, False, False, 0.0, False,
                                 0.0, 0.0, False, 0.0, 0, None, None)
    with pytest.raises(RuntimeError, match="share dtype"):
        torch.ops.fusedreg.adagrad_([torch.zeros(3), torch.zeros(3, dtype=torch.float64)],
                                    [torch.zeros(3), torch.zeros(3, dtype=torch.float64)],
                                    [torch.zeros(3), torch.zeros(3, dtype=torch.float64)],
                                    [torch.zeros(()), torch.zeros(())], 0.1, 0.0, 0.0, 1e-10, False, 0.0, False,
                                    0.0, 0.0, False, 0.0, 0, None, None)
    with pytest.raises(RuntimeError, match="state_steps"):
        torch.ops.fusedreg.adagrad_(p, g, [torch.zeros(3)], [torch.zeros((), dtype=torch.float64)], 0.1, 0.0, 0.0,
                                    1e-10, False, 0.0, False, 0.0, 0.0, False, 0.0, 0, None, None)
