"""Complex params on every backend: torch.optim's trajectory and state with every penalty at 0, l1 as the prox
of l1*|z| (the modulus shrinks, exact zeros; in the optimizer's metric, or by lr*l1 with l1_mode="decoupled"),
checkpoints both ways with torch.optim, and clear errors for the penalties a complex param does not take."""
import copy
import math

import pytest
import torch

import fusedreg
from fusedreg import reference
from tolerances import STEP, TRAJECTORY, rel_err

CONFIGS = [
    ("SGD", dict(lr=0.05)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.2, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, amsgrad=True, maximize=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    ("Adagrad", dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.2)),
]
REAL = {torch.complex64: torch.float32, torch.complex128: torch.float64}


def params(dtype, seed=0):
    # Two complex params and a real one in the same group (torch.optim's own complex test mixes them too).
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 5, dtype=dtype, generator=g), torch.randn(7, dtype=dtype, generator=g),
            torch.randn(4, 3, dtype=REAL[dtype], generator=g)]


def grads(ps, k):
    g = torch.Generator().manual_seed(100 + k)
    return [torch.randn(p.shape, dtype=p.dtype, generator=g) for p in ps]


def step(opt, ps, k):
    for p, g in zip(ps, grads(ps, k)):
        p.grad = g
    opt.step()


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("name,cfg", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_matches_torch_optim_on_complex_params(name, cfg, dtype, backend):
    ours, theirs = params(dtype), params(dtype)
    a = getattr(fusedreg, name)(ours, backend=backend, **cfg)
    b = getattr(torch.optim, name)(theirs, foreach=False, **cfg)
    for k in range(6):
        step(a, ours, k)
        step(b, theirs, k)
    tol = TRAJECTORY[REAL[dtype]]
    for p, q in zip(ours, theirs):
        assert p.dtype == q.dtype
        assert rel_err(torch.view_as_real(p) if p.is_complex() else p,
                       torch.view_as_real(q) if q.is_complex() else q) <= tol
        # The same state keys, dtypes (complex state for complex params) and values.
        assert set(a.state[p]) == set(b.state[q])
        for key, t in b.state[q].items():
            assert a.state[p][key].dtype == t.dtype, key
            x, y = a.state[p][key], t
            assert rel_err(torch.view_as_real(x) if x.is_complex() else x,
                           torch.view_as_real(y) if y.is_complex() else y) <= tol, key


def modulus_shrink(z, t):
    """The prox of t*|z| on complex z, in fp64: z*max(0, 1 - t/|z|) (exactly 0 where |z| <= t)."""
    z = z.to(torch.complex128)
    return torch.where(z.abs() <= t, torch.zeros_like(z), z * (1 - t / z.abs().clamp_min(1e-300)))


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("cfg", [dict(lr=0.1), dict(lr=0.1, momentum=0.9, weight_decay=0.05)])
def test_sgd_l1_on_complex_shrinks_the_modulus(cfg, dtype, backend):
    lr, l1 = cfg["lr"], 1.0
    ours = params(dtype)[:2]
    ours[1].mul_(0.1)  # small entries: some land in the dead zone |z| <= lr*l1 on the first step
    p64 = [p.to(torch.complex128, copy=True) for p in ours]
    opt = fusedreg.SGD(ours, backend=backend, l1=l1, **cfg)
    bufs, zeros = [None, None], 0
    for k in range(4):
        gs = grads(ours, k)
        for p, g in zip(ours, gs):
            p.grad = g
        opt.step()
        for i, g in enumerate(gs):  # the explicit fp64 computation
            d = g.to(torch.complex128) + cfg.get("weight_decay", 0) * p64[i]
            if cfg.get("momentum"):
                bufs[i] = d if bufs[i] is None else cfg["momentum"] * bufs[i] + d
                d = bufs[i]
            p64[i] = modulus_shrink(p64[i] - lr * d, lr * l1)
        for p, want in zip(ours, p64):
            assert torch.equal(p == 0, want == 0)  # the same exact zeros
            assert rel_err(torch.view_as_real(p), torch.view_as_real(want)) <= STEP[REAL[dtype]] * 10
        zeros += int((ours[1] == 0).sum())
    assert zeros and (ours[0] != 0).any()


def torch_update(name, plain, z, opt, g):
    """torch.optim's update of a copy of z from our current state (penalties off): (the copy, torch's state)."""
    v = z.clone()
    theirs = getattr(torch.optim, name)([v], foreach=False, **plain)
    if opt.state[z]:
        theirs.load_state_dict({"state": {0: {key: t.clone() for key, t in opt.state[z].items()}},
                                "param_groups": theirs.state_dict()["param_groups"]})
    v.grad = g.clone()
    theirs.step()
    return v, theirs.state[v]


def prox_in_metric(v, step, l1, denom, l2=0.0):
    """The expected prox of step*l1*|z| (+ Adagrad's l2) in the optimizer's diagonal metric, from the reference's
    group-lasso prox on (re, im) rows (group_l1*sqrt(2) = l1)."""
    v, denom = torch.view_as_real(v).reshape(-1, 2), torch.view_as_real(denom).reshape(-1, 2)
    if l2:
        v = v / (1 + step * l2 / denom)
    return reference.group_prox(v, step, l1 / math.sqrt(2), 0, denom, l2)


@pytest.mark.parametrize("name,cfg", [("Adam", dict(lr=0.1)), ("Adam", dict(lr=0.1, amsgrad=True, weight_decay=0.1)),
                                      ("AdamW", dict(lr=0.1, weight_decay=0.1)),
                                      ("Adagrad", dict(lr=0.1, l2=0.3))],
                         ids=["Adam", "Adam-amsgrad", "AdamW", "Adagrad-l2"])
def test_metric_l1_on_complex_is_the_pair_group_prox(name, cfg, backend):
    """Adam's step differs between re and im, so the prox of l1*|z| in its metric is the group prox on the (re, im)
    pair: one fused step against torch.optim's update followed by the reference's group prox, every step."""
    dtype, l1 = torch.complex128, 0.5
    z = torch.randn(40, dtype=dtype) * 0.05
    opt = getattr(fusedreg, name)([z], backend=backend, l1=l1, **cfg)
    plain = {k: v for k, v in cfg.items() if k != "l2"}
    zeros = []
    for k in range(5):
        g = grads([z], k)[0]
        # torch.optim's update from our current param and state (penalties 0), then the prox in its metric.
        v, st = torch_update(name, plain, z, opt, g)
        t = float(st["step"])
        if name == "Adagrad":
            step_size, denom = cfg["lr"], st["sum"].real.sqrt() + 1j * st["sum"].imag.sqrt()
            denom = denom + 1e-10 * (1 + 1j)
        else:
            sq = st["max_exp_avg_sq"] if cfg.get("amsgrad") else st["exp_avg_sq"]
            bc2 = math.sqrt(1 - 0.999 ** t)
            denom = (sq.real.sqrt() / bc2 + 1e-8) + 1j * (sq.imag.sqrt() / bc2 + 1e-8)
            step_size = cfg["lr"]
        want = prox_in_metric(v, step_size, l1, denom, cfg.get("l2", 0.0))
        z.grad = g
        opt.step()
        got = torch.view_as_real(z).reshape(-1, 2)
        assert torch.equal((got == 0).all(1), (want == 0).all(1)), k
        assert rel_err(got, want) <= 1e-10, k
        zeros.append(int((z == 0).sum()))
        # The prox's optimality: a kept pair w solves D(w - v) + step*l1*w/|w| = 0 (D = denom elementwise), a
        # zeroed one has |D v| <= step*l1.
        d = torch.view_as_real(denom).reshape(-1, 2)
        vv = torch.view_as_real(v).reshape(-1, 2)
        if name == "Adagrad":
            d = d + step_size * cfg["l2"]
            vv = vv * (d - step_size * cfg["l2"]) / d  # the l2 shrink is part of the metric: D(w - v) + l2*w
        kept = (got != 0).any(1)
        resid = d[kept] * (got[kept] - vv[kept]) + step_size * l1 * got[kept] / got[kept].norm(dim=1, keepdim=True)
        assert resid.abs().max() <= 1e-9 * d.max()
        assert ((d[~kept] * vv[~kept]).norm(dim=1) <= step_size * l1 * (1 + 1e-9)).all()
    assert max(zeros) > 0 and zeros[-1] < z.numel(), zeros


@pytest.mark.parametrize("name,cfg", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.1)),
                                      ("Adam", dict(lr=0.1, amsgrad=True, weight_decay=0.1)),
                                      ("AdamW", dict(lr=0.1, weight_decay=0.1)),
                                      ("Adagrad", dict(lr=0.1, lr_decay=0.05)), ("Adagrad", dict(lr=0.1, l2=0.3))],
                         ids=["SGD", "Adam", "Adam-amsgrad", "AdamW", "Adagrad-decay", "Adagrad-l2"])
def test_decoupled_l1_on_complex_shrinks_the_modulus_by_lr_l1(name, cfg, backend):
    """l1_mode="decoupled" needs no metric: every optimizer's update (torch.optim's, from our state) followed by
    z * max(0, 1 - t/|z|) with t = lr*l1 (Adagrad: clr*l1), after Adagrad's l2 (which divides re and im by
    1 + clr*l2/denom, their own steps): the modulus prox runs where the group prox runs."""
    dtype, l1 = torch.complex128, 0.5
    z = torch.randn(40, dtype=dtype) * 0.05
    opt = getattr(fusedreg, name)([z], backend=backend, l1=l1, l1_mode="decoupled", **cfg)
    plain = {k: v for k, v in cfg.items() if k != "l2"}
    zeros = []
    for k in range(5):
        g = grads([z], k)[0]
        v, st = torch_update(name, plain, z, opt, g)
        step_size = cfg["lr"]
        if name == "Adagrad":
            step_size = cfg["lr"] / (1 + (float(st["step"]) - 1) * cfg.get("lr_decay", 0.0))
            if cfg.get("l2"):
                s = torch.view_as_real(st["sum"])
                vr = torch.view_as_real(v) / (1 + step_size * cfg["l2"] / (s.sqrt() + 1e-10))
                v = torch.view_as_complex(vr.contiguous())
        want = modulus_shrink(v, step_size * l1)
        z.grad = g
        opt.step()
        assert torch.equal(z == 0, want == 0), k
        assert rel_err(torch.view_as_real(z), torch.view_as_real(want)) <= 1e-12, k
        zeros.append(int((z == 0).sum()))
    assert max(zeros) > 0 and zeros[-1] < z.numel(), zeros


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adagrad", "SGD"])
def test_complex_l1_on_a_non_contiguous_param_is_written_back(name, backend):
    # A transposed complex param cannot be viewed as (re, im) rows: the step goes through a copy.
    base = torch.randn(5, 4, dtype=torch.complex64) * 0.3
    a, b = base.t(), base.t().contiguous()
    kw = dict(lr=0.1, l1=1.5, **(dict(momentum=0.9) if name == "SGD" else {}))
    oa = getattr(fusedreg, name)([a], backend=backend, **kw)
    ob = getattr(fusedreg, name)([b], backend=backend, **kw)
    for k in range(3):
        a.grad = b.grad = grads([b], k)[0]
        oa.step()
        ob.step()
    assert torch.equal(a, b) and (a == 0).any()
    for key, t in ob.state[b].items():
        assert torch.equal(oa.state[a][key], t)


@pytest.mark.parametrize("name,cfg", [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.01, amsgrad=True)),
                                      ("AdamW", dict(lr=0.01)),
                                      ("Adagrad", dict(lr=0.1, initial_accumulator_value=0.1))])
def test_complex_state_dict_both_ways_with_torch_optim(name, cfg, backend):
    tol = TRAJECTORY[torch.float32]
    for first in ("torch", "ours"):
        ps, qs = params(torch.complex64), params(torch.complex64)
        make_ours = lambda xs: getattr(fusedreg, name)(xs, backend=backend, **cfg)
        make_theirs = lambda xs: getattr(torch.optim, name)(xs, foreach=False, **cfg)
        src = (make_theirs if first == "torch" else make_ours)(ps)
        for k in range(3):
            step(src, ps, k)
        with torch.no_grad():
            for p, q in zip(ps, qs):
                q.copy_(p)
        dst = (make_ours if first == "torch" else make_theirs)(qs)
        dst.load_state_dict(copy.deepcopy(src.state_dict()))  # torch.optim keeps the tensors it is given
        for p, q in zip(ps, qs):
            for key, t in src.state[p].items():
                assert dst.state[q][key].dtype == t.dtype and torch.equal(dst.state[q][key], t), key
        for k in range(3, 6):
            step(src, ps, k)
            step(dst, qs, k)
        for p, q in zip(ps, qs):
            assert rel_err(torch.view_as_real(p) if p.is_complex() else p,
                           torch.view_as_real(q) if q.is_complex() else q) <= tol


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad"])
@pytest.mark.parametrize("bad", [dict(l0=0.1), dict(nonneg=True), dict(group_l1=0.1),
                                 dict(l1=0.1, l1_mode="subgradient")], ids=["l0", "nonneg", "group_l1", "subgrad"])
def test_penalties_a_complex_param_does_not_take_are_clear_errors(name, bad, backend):
    z = torch.randn(3, 2, dtype=torch.complex64)
    cls = getattr(fusedreg, name)
    with pytest.raises(ValueError, match="on complex params is not supported"):
        cls([z], lr=0.1, backend=backend, **bad)
    opt = cls([torch.randn(3)], lr=0.1, backend=backend, **bad)  # fine on real params
    with pytest.raises(ValueError, match="on complex params is not supported"):
        opt.add_param_group(dict(params=[z]))
    assert len(opt.param_groups) == 1
    # A group edited into a bad combination after construction: the step raises and changes nothing.
    opt = cls([z], lr=0.1, backend=backend)
    z.grad = torch.ones_like(z)
    opt.step()
    before = z.clone(), {k: v.clone() for k, v in opt.state[z].items()}
    opt.param_groups[0].update(bad)
    with pytest.raises(ValueError, match="on complex params is not supported"):
        opt.step()
    assert torch.equal(z, before[0]) and all(torch.equal(opt.state[z][k], v) for k, v in before[1].items())


def test_ftrl_refuses_complex_params_and_nothing_moves(backend):
    # torch has no Ftrl to follow and TensorFlow's is real-only: a clear error, not a wrong accumulator start.
    z = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(ValueError, match="Ftrl takes real floating-point params only"):
        fusedreg.Ftrl([z], lr=0.1, backend=backend)
    opt = fusedreg.Ftrl([torch.randn(3)], lr=0.1, l1=0.1, backend=backend)
    with pytest.raises(ValueError, match="Ftrl takes real floating-point params only"):
        opt.add_param_group(dict(params=[z]))
    assert len(opt.param_groups) == 1
    opt.param_groups[0]["params"].append(z)  # put there behind the check's back: the step refuses it
    z.grad, before = torch.ones_like(z), z.clone()
    with pytest.raises(ValueError, match="Ftrl takes real floating-point params only"):
        opt.step()
    assert torch.equal(z, before) and z not in opt.state


def test_functional_takes_complex_lists(backend):
    z = torch.randn(5, dtype=torch.complex64)
    w = z.clone()
    g = torch.randn(5, dtype=torch.complex64)
    fusedreg.functional.sgd([z], [g], [], lr=0.1, l1=0.5, backend=backend)
    assert torch.equal(z == 0, modulus_shrink(w - 0.1 * g, 0.05) == 0)
    assert rel_err(torch.view_as_real(z), torch.view_as_real(modulus_shrink(w - 0.1 * g, 0.05))) <= 1e-6
    with pytest.raises(ValueError, match="nonneg on complex params"):
        fusedreg.functional.sgd([z], [g], [], lr=0.1, nonneg=True, backend=backend)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_complex_half_params_keep_complex64_state(backend):
    # As bf16/fp16 params keep fp32 state: complex32 params keep complex64 state and step in fp32.
    z = torch.randn(6, dtype=torch.complex64)
    half = z.to(torch.complex32)
    opt = fusedreg.Adam([half], lr=0.1, backend=backend)
    half.grad = torch.full((6,), 1 + 1j, dtype=torch.complex64).to(torch.complex32)
    opt.step()
    assert opt.state[half]["exp_avg"].dtype == torch.complex64
    assert rel_err(torch.view_as_real(half), torch.view_as_real(z - 0.1 * (1 + 1j))) <= 2.0 ** -9
