"""l1_mode="decoupled" (issue #26): the L1 analogue of AdamW's decoupled decay. After the update, l1 thresholds by
lr*l1 (Adagrad: its decayed clr*l1) whatever the optimizer's preconditioner, and group lasso is the closed form
w_g * max(0, 1 - lr*group_l1*sqrt(|g|)/||w_g||); l0 and Adagrad's l2 keep the element's step, as in "prox".

- every backend's op, every step, against an independent fp64 numpy implementation written here (not the
  reference), at fp32, fp64 and bf16, with equal exact-zero sets;
- SGD: decoupled is prox, bit for bit, on every backend (op and class);
- l0 and l2 alone are the same in both modes (decoupled changes only what l1 and group_l1 use);
- the decoupled zero set does not move when the gradients are scaled (prox's does);
- Ftrl refuses it, an unknown l1_mode is refused, both before anything changes;
- lr as a tensor, state_dict round trips of the group key.
The grids of tests/test_kernels.py, test_opcheck.py, test_sparse.py, test_complex.py, test_ecosystem.py and
test_distributed.py carry decoupled rows too.
"""
import copy
import math
import pickle

import numpy as np
import pytest
import torch

import fusedreg
from fusedreg import backends
from cases import assert_unchanged, build, compare, shrink_groups, snapshot, unchanged
from tolerances import STEP, TRAJECTORY, rel_err

BACKENDS = ("torch", "cpp", "triton", "cuda")
CUDA = torch.cuda.is_available()
DEVICE = {"torch": "cpu", "cpp": "cpu", "triton": "cuda" if CUDA else "cpu", "cuda": "cuda"}
DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def on(backend, *values):
    why = backends.explain()[backend]
    why = "" if why == "available" else why
    name = "-".join(str(v).removeprefix("torch.") for v in (backend, *values))
    return pytest.param(backend, *values, marks=pytest.mark.skipif(bool(why), reason=f"{backend}: {why}"), id=name)


# ---- the independent oracle --------------------------------------------------------------------------------------

def _round(x, dtype):
    """x (fp64 numpy) rounded to the param's dtype, as the kernels store it (numpy has no bfloat16)."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype).double().numpy()


def oracle(op, p, g, state, count, hp, dtype):
    """One step of `op` in fp64 numpy from the values before it: (new param, new state). p, g: arrays; state: the
    op's state arrays by list name; count: the step counter after the step (Adam, Adagrad); hp: the op's scalars.
    Order: unscale -> maximize -> coupled decay -> update (AdamW: decay first) -> l1 threshold -> l2 -> l0 ->
    nonneg -> (stored) -> group lasso -> (stored)."""
    lr, wd = hp["lr"], hp.get("weight_decay", 0.0)
    g = g / float(hp["grad_scale"]) if hp.get("grad_scale") is not None else g.copy()
    if hp.get("maximize"):
        g = -g
    st = {k: v.copy() for k, v in state.items()}
    denom = np.ones_like(p)
    if op == "sgd_":
        step = lr
        if wd:
            g = g + wd * p
        if hp.get("momentum", 0):
            mu = hp["momentum"]
            b = g if hp.get("first_step") else mu * st["momentum_buffers"] + (1 - hp.get("dampening", 0)) * g
            st["momentum_buffers"] = b
            g = g + mu * b if hp.get("nesterov") else b
        v = p - lr * g
    elif op == "adam_":
        step = lr
        b1, b2, eps = hp.get("beta1", 0.9), hp.get("beta2", 0.999), hp.get("eps", 1e-8)
        if hp.get("decoupled"):
            p = p * (1 - lr * wd)
        elif wd:
            g = g + wd * p
        m = b1 * st["exp_avgs"] + (1 - b1) * g
        v2 = b2 * st["exp_avg_sqs"] + (1 - b2) * g * g
        st["exp_avgs"], st["exp_avg_sqs"] = m, v2
        if hp.get("amsgrad"):
            v2 = np.maximum(st["max_exp_avg_sqs"], v2)
            st["max_exp_avg_sqs"] = v2
        denom = np.sqrt(v2) / math.sqrt(1 - b2 ** count) + eps
        v = p - lr / (1 - b1 ** count) * m / denom
    else:  # adagrad_
        step = lr / (1 + (count - 1) * hp.get("lr_decay", 0.0))  # clr
        if wd:
            g = g + wd * p
        s = st["state_sums"] + g * g
        st["state_sums"] = s
        denom = np.sqrt(s) + hp.get("eps", 1e-10)
        v = p - step * g / denom
    decoupled = hp.get("l1_decoupled", False)
    if hp.get("l1", 0):
        thr = step * hp["l1"] * (1.0 if decoupled else 1.0 / denom)
        v = np.sign(v) * np.maximum(np.abs(v) - thr, 0.0)
    if hp.get("l2", 0):
        v = v / (1 + step * hp["l2"] / denom)  # the element's step, in either mode
    if hp.get("l0", 0):
        v = np.where(np.abs(v) <= np.sqrt(2 * step * hp["l0"] / denom), 0.0, v)
    if hp.get("nonneg"):
        v = np.maximum(v, 0.0)
    v = _round(v, dtype)
    if hp.get("group_l1", 0) and v.ndim >= 2:
        assert decoupled or op == "sgd_", "the oracle has the closed form only"
        gd = hp.get("group_dim", 0)
        moved = np.moveaxis(v, gd, 0).reshape(v.shape[gd], -1)
        c = step * hp["group_l1"] * math.sqrt(moved.shape[1])
        if op == "sgd_":
            c = c / (1 + step * hp.get("l2", 0.0))  # SGD's joint prox; decoupled Adam/Adagrad: no l2 term
        norm = np.sqrt((moved * moved).sum(axis=1, keepdims=True))
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.maximum(1 - c / norm, 0.0)
        f = np.where(norm == 0, 0.0, f)
        shape = [1] * v.ndim
        shape[gd] = v.shape[gd]
        v = _round(v * f.reshape(shape), dtype)
    return v, st


# ---- every backend against the oracle ----------------------------------------------------------------------------

SHAPES = [(0,), (7,), (33,), (13, 17), (3, 4, 5), (40, 70), (300, 2), (1, 9)]
# name -> (op, hyperparameters); params ~N(0, 1): the l1s below zero a few percent of them per step.
CONFIGS = {
    "adamw_l1": ("adam_", dict(decoupled=True, weight_decay=0.1, l1=3.0)),
    "adam_amsgrad_l0_nonneg_max_group_rows": ("adam_", dict(amsgrad=True, maximize=True, weight_decay=0.01, l1=1.0,
                                                            l0=1e-3, nonneg=True, group_l1=0.5)),
    "adamw_l2_group_cols_scaled": ("adam_", dict(decoupled=True, weight_decay=0.1, l1=1.0, l2=0.5, group_l1=0.5,
                                                 group_dim=1, grad_scale=1024.0)),
    "adagrad_decay_l1_l2_l0": ("adagrad_", dict(lr_decay=0.05, weight_decay=0.01, l1=0.5, l2=0.3, l0=1e-3)),
    "adagrad_group_rows_scaled_max": ("adagrad_", dict(maximize=True, l1=0.2, l2=0.3, group_l1=0.2,
                                                       grad_scale=8.0)),
    "adagrad_group_cols_nonneg": ("adagrad_", dict(lr_decay=0.01, l1=0.2, nonneg=True, group_l1=0.3, group_dim=1)),
    "sgd_momentum_group_rows": ("sgd_", dict(momentum=0.9, weight_decay=0.01, l1=0.3, l2=0.1, group_l1=0.5)),
    "sgd_l0_nonneg_group_cols": ("sgd_", dict(l1=0.3, l0=1e-3, nonneg=True, group_l1=1.0, group_dim=1)),
}


def _case(config, dtype, seed=0):
    op, hp = CONFIGS[config]
    hp = dict(hp, l1_decoupled=True)
    gs = hp.pop("grad_scale", None)
    case = build(op, SHAPES, dtype, gen=torch.Generator().manual_seed(seed), scale=gs, **hp)
    return shrink_groups(case, by=0.05) if hp.get("group_l1") else case


def _np(t):
    return t.detach().cpu().double().numpy()


@pytest.mark.parametrize("backend,config,dtype", [on(b, c, d) for b in BACKENDS for c in CONFIGS for d in DTYPES])
def test_every_backend_matches_an_independent_fp64_implementation(backend, config, dtype):
    op = CONFIGS[config][0]
    case = _case(config, dtype).clone(device=DEVICE[backend])
    gen = torch.Generator().manual_seed(1)
    kern = backends.kernel(backend, op)
    states = [n for n in case.lists if n not in ("params", "grads", "state_steps") and case.lists[n]]
    tol = STEP[dtype] * (4 if dtype != torch.bfloat16 else 1)
    zeros = 0
    for k in range(3):
        grads = [g.to(case.params[0].device) for g in case.new_grads(gen)]
        first = {"first_step": k == 0} if op == "sgd_" and case.kw.get("momentum") else {}
        before = case.clone()
        case.call(kern, grads=grads, **first)
        hp = {**case.kw, **first}
        for i, p in enumerate(case.params):
            count = float(case.lists["state_steps"][i]) if "state_steps" in case.lists else 0.0
            want, want_st = oracle(op, _np(before.params[i]), _np(grads[i]),
                                   {n: _np(before.lists[n][i]) for n in states}, count, hp, dtype)
            got = _np(p)
            where = f"step {k} params[{i}] {tuple(p.shape)}"
            assert np.array_equal(got == 0, want == 0), f"{where}: exact-zero sets differ"
            if p.numel():
                scale = max(np.abs(want).max(), 1e-300)
                assert np.abs(got - want).max() / scale <= tol, where
            for n in states:
                a, b = _np(case.lists[n][i]), want_st[n]
                if a.size:
                    assert np.abs(a - b).max() / max(np.abs(b).max(), 1e-300) <= STEP[torch.float64 if dtype ==
                                                                                  torch.float64 else torch.float32] * 4
            zeros += int((got == 0).sum())
    assert zeros > 0, "the penalties made no exact zero to compare"


# ---- SGD: decoupled is prox ----------------------------------------------------------------------------------------

SGD_HP = [dict(momentum=0.9, dampening=0.1, weight_decay=0.01, l1=0.3, l2=0.1, l0=1e-3, nonneg=True, group_l1=0.5),
          dict(momentum=0.9, nesterov=True, maximize=True, l1=0.5, group_l1=1.0, group_dim=1),
          dict(l1=0.5, l1_subgradient=False, l2=0.2)]


@pytest.mark.parametrize("backend,hp,dtype", [on(b, i, d) for b in BACKENDS for i in range(len(SGD_HP))
                                              for d in DTYPES])
def test_sgd_decoupled_is_prox_bit_for_bit(backend, hp, dtype):
    case = build("sgd_", SHAPES, dtype, gen=torch.Generator().manual_seed(hp), scale=64.0, **SGD_HP[hp])
    case = shrink_groups(case, by=0.05).clone(device=DEVICE[backend])
    a, b = case.clone(), case.clone()
    gen = torch.Generator().manual_seed(2)
    for k in range(3):
        grads = [g.to(case.params[0].device) for g in case.new_grads(gen)]
        a.call(backends.kernel(backend, "sgd_"), grads=grads, first_step=k == 0, l1_decoupled=False)
        b.call(backends.kernel(backend, "sgd_"), grads=grads, first_step=k == 0, l1_decoupled=True)
    unchanged(a, b)
    assert any((p == 0).any() for p in a.params)


def _model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).to(dtype)


def _train(model, opt, steps=8, loss_scale=1.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(32, 8, generator=g, dtype=next(model.parameters()).dtype)
    y = torch.randn(32, 4, generator=g, dtype=X.dtype)
    for _ in range(steps):
        opt.zero_grad()
        (loss_scale * ((model(X) - y) ** 2).mean()).backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_sgd_class_decoupled_is_prox_bit_for_bit(backend):
    kw = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, l1=0.02, l0=1e-4, group_l1=0.01, backend=backend)
    a = _train(m := _model(), fusedreg.SGD(m.parameters(), **kw))
    b = _train(m := _model(), fusedreg.SGD(m.parameters(), l1_mode="decoupled", **kw))
    assert torch.equal(a, b) and (a == 0).any()


# ---- what decoupled changes, and what it does not ------------------------------------------------------------------

@pytest.mark.parametrize("backend,op", [on(b, op) for b in BACKENDS for op in ("adam_", "adagrad_")])
def test_l0_and_l2_alone_are_the_same_in_both_modes(backend, op):
    """decoupled changes only what l1 and group_l1 use: l0 and Adagrad's (op-level: every op's) l2 keep the
    element's step."""
    case = build(op, SHAPES, torch.float32, gen=torch.Generator().manual_seed(5), l2=0.5, l0=1e-3,
                 **({"lr_decay": 0.01} if op == "adagrad_" else {"amsgrad": True})).clone(device=DEVICE[backend])
    a, b = case.clone(), case.clone()
    gen = torch.Generator().manual_seed(6)
    for _ in range(3):
        grads = [g.to(case.params[0].device) for g in case.new_grads(gen)]
        a.call(backends.kernel(backend, op), grads=grads, l1_decoupled=False)
        b.call(backends.kernel(backend, op), grads=grads, l1_decoupled=True)
    unchanged(a, b)
    assert any((p == 0).any() for p in a.params)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adagrad"])
def test_decoupled_zeros_do_not_depend_on_the_gradient_scale(name, backend):
    """The reason for the mode: Adam's and Adagrad's steps do not depend on the gradients' scale, and neither does
    the decoupled threshold lr*l1, so a loss 1e4 times larger gives the same zeros; the prox threshold
    lr*l1/denom shrinks with the gradients' scale."""
    kw = dict(lr=0.02, l1=0.5, group_l1=0.02, eps=1e-14 if name != "Adagrad" else 1e-30)
    runs = {}
    for mode in ("decoupled", "prox"):
        for s in (1.0, 1e4):
            runs[mode, s] = _train(m := _model(), getattr(fusedreg, name)(m.parameters(), l1_mode=mode, backend=backend,
                                                                          **kw), steps=10, loss_scale=s)
    a, b = runs["decoupled", 1.0], runs["decoupled", 1e4]
    assert torch.equal(a == 0, b == 0) and rel_err(a, b) <= 1e-9 and (a == 0).any()
    assert (runs["prox", 1.0] == 0).sum() > (runs["prox", 1e4] == 0).sum()


# ---- refused, before anything changes --------------------------------------------------------------------------

def test_ftrl_refuses_decoupled(backend):
    with pytest.raises(ValueError, match="not defined for Ftrl"):
        fusedreg.Ftrl([torch.randn(3)], lr=0.1, l1=0.1, l1_mode="decoupled", backend=backend)
    opt = fusedreg.Ftrl([torch.randn(3)], lr=0.1, l1=0.1, backend=backend)
    with pytest.raises(ValueError, match="not defined for Ftrl"):
        opt.add_param_group(dict(params=[torch.randn(2)], l1_mode="decoupled"))
    assert len(opt.param_groups) == 1
    # A group edited after construction: the step raises and changes nothing.
    model = _model(dtype=torch.float32)
    opt = fusedreg.Ftrl(model.parameters(), lr=0.1, l1=0.01, backend=backend)
    _train(model, opt, steps=2)
    before = snapshot(list(model.parameters()), opt)
    opt.param_groups[0]["l1_mode"] = "decoupled"
    with pytest.raises(ValueError, match="not defined for Ftrl"):
        _train(model, opt, steps=1)
    assert_unchanged(list(model.parameters()), opt, before)
    p, g, n, z = torch.randn(4), torch.randn(4), torch.full((4,), 0.1), torch.zeros(4)
    with pytest.raises(ValueError, match="not defined for Ftrl"):
        fusedreg.functional.ftrl([p], [g], [n], [z], lr=0.1, l1=0.1, l1_mode="decoupled", backend=backend)


@pytest.mark.parametrize("backend", [on(b) for b in BACKENDS])
def test_the_ftrl_op_refuses_l1_decoupled(backend):
    case = build("ftrl_", SHAPES, gen=torch.Generator().manual_seed(7), l1=0.1).clone(device=DEVICE[backend])
    before = case.clone()
    with pytest.raises(RuntimeError, match="l1_decoupled is not defined for FTRL"):
        case.call(backends.kernel(backend, "ftrl_"), l1_decoupled=True)
    unchanged(case, before)


@pytest.mark.parametrize("bad", ["decouple", "Decoupled", None, 1, ["prox"]])
def test_an_unknown_l1_mode_is_refused_before_anything_changes(bad, backend):
    with pytest.raises(ValueError, match="Invalid l1_mode"):
        fusedreg.AdamW([torch.randn(3)], lr=0.1, l1=0.1, l1_mode=bad, backend=backend)
    model = _model(dtype=torch.float32)
    opt = fusedreg.Adam([{"params": model[0].parameters(), "l1_mode": "decoupled"},
                         {"params": model[2].parameters()}], lr=0.01, l1=0.01, backend=backend)
    _train(model, opt, steps=2)
    before = snapshot(list(model.parameters()), opt)
    opt.param_groups[1]["l1_mode"] = bad  # the second group: the first must not have been stepped either
    with pytest.raises(ValueError, match="Invalid l1_mode"):
        _train(model, opt, steps=1)
    assert_unchanged(list(model.parameters()), opt, before)
    p, g, m, v = torch.randn(4), torch.randn(4), torch.zeros(4), torch.zeros(4)
    keep = p.clone()
    with pytest.raises(ValueError, match="Invalid l1_mode"):
        fusedreg.functional.adam([p], [g], [m], [v], [], [torch.zeros(())], lr=0.1, l1=0.1, l1_mode=bad,
                                 backend=backend)
    assert torch.equal(p, keep) and not m.any()


# ---- lr as a tensor, checkpoints -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,op", [on(b, op) for b in BACKENDS for op in ("sgd_", "adam_", "adagrad_")])
def test_lr_tensor_steps_like_the_float_lr(backend, op):
    hp = {"sgd_": dict(momentum=0.9, l1=0.3, group_l1=0.5), "adam_": dict(decoupled=True, weight_decay=0.1, l1=1.0,
                                                                          group_l1=0.5, group_dim=1),
          "adagrad_": dict(lr_decay=0.01, l1=0.2, l2=0.1, group_l1=0.3)}[op]
    case = shrink_groups(build(op, SHAPES, gen=torch.Generator().manual_seed(8), scale=8.0, l1_decoupled=True, **hp),
                         by=0.05).clone(device=DEVICE[backend])
    a, b = case.clone(), case.clone()
    lr = torch.tensor(case.kw["lr"], dtype=torch.float64, device=DEVICE[backend])
    gen = torch.Generator().manual_seed(9)
    for _ in range(3):
        grads = [g.to(case.params[0].device) for g in case.new_grads(gen)]
        a.call(backends.kernel(backend, op), grads=grads)
        b.call(backends.kernel(backend, op), grads=grads, lr=math.nan, lr_tensor=lr)
    compare(b, a)


@pytest.mark.parametrize("name", ["Adam", "AdamW", "Adagrad", "SGD"])
def test_state_dict_round_trip_keeps_the_mode(name, backend):
    kw = dict(lr=0.02, l1=0.5, group_l1=0.01, backend=backend)
    ref = _train(m := _model(), getattr(fusedreg, name)(m.parameters(), l1_mode="decoupled", **kw), steps=8)
    model = _model()
    opt = getattr(fusedreg, name)(model.parameters(), l1_mode="decoupled", **kw)
    _train(model, opt, steps=4)
    sd = opt.state_dict()
    assert all(g["l1_mode"] == "decoupled" for g in sd["param_groups"])
    # A fresh optimizer built with the default mode takes the saved one; so do deepcopy and pickle.
    fresh = getattr(fusedreg, name)(model.parameters(), **kw)
    fresh.load_state_dict(copy.deepcopy(sd))
    assert fresh.param_groups[0]["l1_mode"] == "decoupled"
    for other in (copy.deepcopy(fresh), pickle.loads(pickle.dumps(fresh))):
        assert other.param_groups[0]["l1_mode"] == "decoupled"
    got = _train(model, fresh, steps=4, seed=1)
    # _train draws the same batch every call, so 4 + 4 steps are the 8 of ref
    assert torch.equal(got, ref) and (got == 0).any()


# ---- lambda_max ------------------------------------------------------------------------------------------------

def test_lambda_max_reports_the_decoupled_bound():
    """A decoupled group's l1 is compared with the first step's normalized direction |g|/(sqrt(acc + g^2) + eps),
    about 1 whatever the gradients' size; a prox group's with max |g|."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, t = torch.randn(32, 6), torch.randn(32, 3)
    loss = 1e-4 * ((m(x) - t) ** 2).mean()  # tiny gradients: prox's l1 / λ_max is huge, decoupled's is not
    opt = fusedreg.AdamW([{"params": [m[0].weight], "l1_mode": "decoupled"}, {"params": [m[2].weight]}],
                         lr=1e-3, l1=1e-3)
    report = fusedreg.lambda_max(m, loss, optimizer=opt)
    g0 = torch.autograd.grad(loss, [m[0].weight], retain_graph=True)[0].double().abs()
    assert report.decoupled == {"0.weight": pytest.approx(float((g0 / (g0 + 1e-8)).max()))}
    assert 0.9 < report.decoupled["0.weight"] <= 1.0
    text = str(report)
    row0 = next(line for line in text.splitlines() if line.startswith("0.weight"))
    row2 = next(line for line in text.splitlines() if line.startswith("2.weight"))
    assert "decoupled" in row0 and "zeroes it" not in row0  # 1e-3 against ~1
    assert "zeroes it" in row2  # 1e-3 against max |g| ~ 1e-5
    # Adagrad: the initial accumulator enters the bound; SGD's decoupled is its prox: no separate bound.
    ada = fusedreg.Adagrad(m.parameters(), lr=0.1, l1=1e-3, l1_mode="decoupled", initial_accumulator_value=1e-8)
    assert all(b < 1.0 for b in fusedreg.lambda_max(m, loss, optimizer=ada).decoupled.values())
    sgd = fusedreg.SGD(m.parameters(), lr=0.1, l1=1e-3, l1_mode="decoupled")
    assert fusedreg.lambda_max(m, loss, optimizer=sgd).decoupled == {}
