"""Foundation suite: torch.optim parity, prox known answers, lasso vs scikit-learn, state_dict interop, groups,
schedulers, closures and bad input. Every test runs on each backend this install has for CPU tensors."""
import copy

import lion_pytorch
import numpy as np
import pytest
import torch

import fusedreg
from tolerances import SOLVER, TRAJECTORY, rel_err

SGD_CONFIGS = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(lr=0.05, momentum=0.5, maximize=True),
]
ADAM_CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.01, amsgrad=True),
    dict(lr=0.01, weight_decay=0.05, maximize=True),
    dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, amsgrad=True),
]
PAIRS = ([("SGD", c) for c in SGD_CONFIGS] + [("Adam", c) for c in ADAM_CONFIGS]
         + [("AdamW", c) for c in ADAM_CONFIGS])


def mlp(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)


def data(dtype, n=64):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=dtype), torch.randn(n, 3, generator=g, dtype=dtype)


def train(model, opt, steps=25, loss_extra=None, sched=None):
    X, y = data(next(model.parameters()).dtype)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(X) - y) ** 2).mean()
        if loss_extra is not None:
            loss = loss + loss_extra(model)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    return flat(model)


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,cfg", PAIRS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(PAIRS)])
def test_matches_torch_optim_without_penalty(name, cfg, dtype, backend):
    ref_model, our_model = mlp(dtype), mlp(dtype)
    ref = train(ref_model, getattr(torch.optim, name)(ref_model.parameters(), **cfg))
    ours_opt = getattr(fusedreg, name)(our_model.parameters(), **cfg, backend=backend)
    ours = train(our_model, ours_opt)
    assert rel_err(ours, ref) <= TRAJECTORY[dtype]
    # State layout and values match torch.optim too.
    ref_state = getattr(torch.optim, name)(mlp(dtype).parameters(), **cfg)
    ref_state_model = mlp(dtype)
    ref_state = getattr(torch.optim, name)(ref_state_model.parameters(), **cfg)
    train(ref_state_model, ref_state)
    for p_ref, p_our in zip(ref_state_model.parameters(), our_model.parameters()):
        s_ref, s_our = ref_state.state[p_ref], ours_opt.state[p_our]
        assert set(s_our) == set(k for k, v in s_ref.items() if v is not None)
        for key, value in s_ref.items():
            if torch.is_tensor(value):
                assert rel_err(s_our[key], value) <= TRAJECTORY[dtype], key


def soft(z, t):
    return torch.sign(z) * torch.clamp_min(z.abs() - t, 0)


def test_soft_threshold_known_answers():
    from fusedreg.reference import prox
    v = torch.tensor([3.0, -0.5, -3.0, 1.0, 0.0], dtype=torch.float64)
    out = prox(v, 1.0, 1, l1=1.0, l1_subgradient=False, l2=0, l0=0, nonneg=False)
    assert out.tolist() == [2.0, 0.0, -2.0, 0.0, 0.0]


def test_one_prox_sgd_step_on_quadratic_is_soft_threshold(backend):
    # f(w) = 1/2 ||w - z||^2, lr = 1: the gradient step lands on z, the prox on soft(z, l1).
    z = torch.tensor([3.0, -0.5, 0.25, -2.0, 1.0, 0.0, 7.5], dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))
    opt = fusedreg.SGD([w], lr=1.0, l1=1.0, backend=backend)
    (0.5 * ((w - z) ** 2).sum()).backward()
    opt.step()
    assert torch.equal(w.detach(), soft(z, 1.0))
    assert w.detach().tolist() == [2.0, 0.0, 0.0, -1.0, 0.0, 0.0, 6.5]


def orthonormal_design(n=64, d=8, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, d)))
    X = torch.tensor(q * np.sqrt(n))  # X^T X / n = I
    w_true = torch.tensor(rng.standard_normal(d) * 2)
    y = X @ w_true + 0.3 * torch.tensor(rng.standard_normal(n))
    return X, y


def test_lasso_on_orthonormal_design_is_soft_threshold(backend):
    X, y = orthonormal_design()
    n, alpha = X.shape[0], 0.7
    expected = soft(X.T @ y / n, alpha)
    w = torch.nn.Parameter(torch.zeros(X.shape[1], dtype=torch.float64))
    opt = fusedreg.SGD([w], lr=1.0, l1=alpha, backend=backend)  # L = 1 here, so one step with lr = 1/L
    (0.5 * ((X @ w - y) ** 2).mean()).backward()
    opt.step()
    assert rel_err(w.detach(), expected) <= 1e-14
    assert torch.equal(w.detach() == 0, expected == 0)
    assert (expected == 0).any() and (expected != 0).any()


def regression(n=200, d=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X = (X - X.mean(0)) / X.std(0)
    w = np.zeros(d)
    w[:4] = [3.0, -2.0, 1.5, 0.5]
    y = X @ w + 1.0 + 0.5 * rng.standard_normal(n)
    return X, y


def fit_penalized(X, y, opt_name, a, b, steps, **opt_kw):
    """Full-batch fit of 1/(2n)||y - Xw - c||^2 + a||w||_1 + b/2||w||^2, intercept c unpenalized."""
    Xt, yt = torch.tensor(X), torch.tensor(y)
    w = torch.nn.Parameter(torch.zeros(X.shape[1], dtype=torch.float64))
    c = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
    groups = [dict(params=[w], l1=a, weight_decay=b), dict(params=[c], l1=0.0, weight_decay=0.0)]
    opt = getattr(fusedreg, opt_name)(groups, **opt_kw)
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((Xt @ w + c - yt) ** 2).mean()).backward()
        opt.step()
    return w.detach().numpy(), c.item()


def sklearn_fit(X, y, a, b, **kw):
    from sklearn.linear_model import ElasticNet
    alpha = a + b
    model = ElasticNet(alpha=alpha, l1_ratio=a / alpha, tol=1e-12, max_iter=1_000_000, **kw).fit(X, y)
    return model.coef_, model.intercept_


@pytest.mark.parametrize("a,b", [(0.1, 0.0), (0.2, 0.3)], ids=["lasso", "elasticnet"])
def test_prox_sgd_reaches_sklearn(a, b, backend):
    X, y = regression()
    L = np.linalg.norm(np.c_[X, np.ones(len(X))], 2) ** 2 / len(X)
    w, c = fit_penalized(X, y, "SGD", a, b, steps=500, lr=1 / (L + b), backend=backend)
    coef, intercept = sklearn_fit(X, y, a, b)
    assert np.abs(w - coef).max() <= SOLVER and abs(c - intercept) <= SOLVER
    assert np.array_equal(w == 0, coef == 0) and (coef == 0).any()


@pytest.mark.parametrize("a,b", [(0.1, 0.0), (0.2, 0.3)], ids=["lasso", "elasticnet"])
def test_prox_adam_reaches_sklearn(a, b, backend):
    X, y = regression()
    w, c = fit_penalized(X, y, "Adam", a, b, steps=3000, lr=0.01, backend=backend)
    coef, intercept = sklearn_fit(X, y, a, b)
    assert np.abs(w - coef).max() <= SOLVER and abs(c - intercept) <= SOLVER
    assert np.array_equal(w == 0, coef == 0) and (coef == 0).any()


@pytest.mark.parametrize("name,cfg", [("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)),
                                      ("Adam", dict(lr=0.01, weight_decay=0.01)),
                                      ("AdamW", dict(lr=0.01, amsgrad=True))])
def test_subgradient_mode_equals_penalty_in_the_loss(name, cfg, backend):
    l1 = 0.01
    ref_model, our_model = mlp(torch.float64), mlp(torch.float64)
    ref_opt = getattr(torch.optim, name)(ref_model.parameters(), **cfg)
    our_opt = getattr(fusedreg, name)(our_model.parameters(), **cfg, l1=l1, l1_mode="subgradient", backend=backend)
    X, y = data(torch.float64)
    for _ in range(20):
        for model, opt, extra in ((ref_model, ref_opt, True), (our_model, our_opt, False)):
            opt.zero_grad()
            loss = ((model(X) - y) ** 2).mean()
            if extra:
                loss = loss + l1 * sum(p.abs().sum() for p in model.parameters())
            loss.backward()
            opt.step()
        assert rel_err(flat(our_model), flat(ref_model)) <= TRAJECTORY[torch.float64]
    assert not (flat(our_model) == 0).any()  # subgradient never lands on exact zeros


def test_prox_l1_gives_exact_zeros_that_the_loss_penalty_does_not(backend):
    model, manual = mlp(torch.float32), mlp(torch.float32)
    train(model, fusedreg.AdamW(model.parameters(), lr=0.02, l1=0.05, backend=backend), steps=40)
    l1 = 0.05
    train(manual, torch.optim.AdamW(manual.parameters(), lr=0.02), steps=40,
          loss_extra=lambda m: l1 * sum(p.abs().sum() for p in m.parameters()))
    assert (flat(model) == 0).float().mean() > 0.2
    assert (flat(manual) == 0).sum() == 0


@pytest.mark.parametrize("name,cfg", [("SGD", dict(lr=0.05, momentum=0.9)), ("SGD", dict(lr=0.05)),
                                      ("Adam", dict(lr=0.01, amsgrad=True)), ("Adam", dict(lr=0.01)),
                                      ("AdamW", dict(lr=0.01)), ("AdamW", dict(lr=0.01, amsgrad=True)),
                                      ("Adagrad", dict(lr=0.05, lr_decay=0.01))])
def test_state_dict_interop_with_torch_optim(name, cfg, backend):
    """torch.optim -> fusedreg and fusedreg -> torch.optim mid-run, then identical continuation."""
    dt = torch.float64
    straight = mlp(dt)
    train(straight, getattr(torch.optim, name)(straight.parameters(), **cfg), steps=20)
    for first, second in ((torch.optim, fusedreg), (fusedreg, torch.optim)):
        model = mlp(dt)
        kw = {} if first is torch.optim else dict(backend=backend)
        opt = getattr(first, name)(model.parameters(), **cfg, **kw)
        train(model, opt, steps=10)
        sd = copy.deepcopy(opt.state_dict())
        kw = {} if second is torch.optim else dict(backend=backend)
        opt2 = getattr(second, name)(model.parameters(), **cfg, **kw)
        opt2.load_state_dict(sd)
        X, y = data(dt)
        for _ in range(10):
            opt2.zero_grad()
            ((model(X) - y) ** 2).mean().backward()
            opt2.step()
        assert rel_err(flat(model), flat(straight)) <= TRAJECTORY[dt], f"{first.__name__} -> {second.__name__}"


def test_state_dict_round_trip_continues_identically(backend):
    a, b = mlp(torch.float32), mlp(torch.float32)
    opt_a = fusedreg.AdamW(a.parameters(), lr=0.01, l1=0.01, amsgrad=True, backend=backend)
    train(a, opt_a, steps=5)
    b.load_state_dict(a.state_dict())
    opt_b = fusedreg.AdamW(b.parameters(), lr=0.5, backend=backend)  # hyperparameters come from the state_dict
    opt_b.load_state_dict(opt_a.state_dict())
    assert opt_b.param_groups[0]["l1"] == 0.01 and opt_b.param_groups[0]["lr"] == 0.01
    train(a, opt_a, steps=5)
    train(b, opt_b, steps=5)
    assert torch.equal(flat(a), flat(b))


def test_low_precision_state_stays_fp32_through_load_state_dict(backend):
    model = mlp(torch.bfloat16)
    opt = fusedreg.Adam(model.parameters(), lr=0.01, backend=backend)
    train(model, opt, steps=3)
    sd = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(sd)
    for p in model.parameters():
        assert opt.state[p]["exp_avg"].dtype == torch.float32
        assert opt.state[p]["step"].dtype == torch.float32


def test_param_groups_with_different_penalties(backend):
    model = mlp(torch.float64)
    weights = [model[0].weight, model[2].weight]
    biases = [model[0].bias, model[2].bias]
    opt = fusedreg.SGD([dict(params=weights, l1=0.05), dict(params=biases, lr=0.01)], lr=0.1, backend=backend)
    train(model, opt, steps=30)
    assert all((w == 0).any() for w in weights)
    assert not any((b == 0).any() for b in biases)
    # The same run done by hand: torch SGD then soft-threshold of the weights only.
    ref = mlp(torch.float64)
    ref_opt = torch.optim.SGD([dict(params=[ref[0].weight, ref[2].weight]),
                               dict(params=[ref[0].bias, ref[2].bias], lr=0.01)], lr=0.1)
    X, y = data(torch.float64)
    for _ in range(30):
        ref_opt.zero_grad()
        ((ref(X) - y) ** 2).mean().backward()
        ref_opt.step()
        with torch.no_grad():
            for w in (ref[0].weight, ref[2].weight):
                w.copy_(soft(w, 0.1 * 0.05))
    assert rel_err(flat(model), flat(ref)) <= TRAJECTORY[torch.float64]


def test_lr_scheduler_and_closure(backend):
    ref_model, our_model = mlp(torch.float64), mlp(torch.float64)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1, momentum=0.9)
    our_opt = fusedreg.SGD(our_model.parameters(), lr=0.1, momentum=0.9, backend=backend)
    scheds = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10) for o in (ref_opt, our_opt)]
    X, y = data(torch.float64)
    for _ in range(15):
        for model, opt, sched in ((ref_model, ref_opt, scheds[0]), (our_model, our_opt, scheds[1])):
            def closure(model=model, opt=opt):
                opt.zero_grad()
                loss = ((model(X) - y) ** 2).mean()
                loss.backward()
                return loss
            loss = opt.step(closure)
            assert torch.is_tensor(loss)
            sched.step()
    assert our_opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    assert rel_err(flat(our_model), flat(ref_model)) <= TRAJECTORY[torch.float64]


BAD_ARGS = [
    ("SGD", dict(lr=-0.1), "lr"), ("SGD", dict(lr=0.1, l1=-1.0), "l1"),
    ("SGD", dict(lr=0.1, weight_decay=-1.0), "weight_decay"), ("SGD", dict(lr=0.1, momentum=-0.5), "momentum"),
    ("SGD", dict(lr=0.1, nesterov=True), "Nesterov"), ("SGD", dict(lr=0.1, l1_mode="lasso"), "l1_mode"),
    ("SGD", dict(lr=float("nan")), "lr"),
    ("Adam", dict(eps=-1e-8), "eps"), ("Adam", dict(betas=(1.0, 0.999)), "beta"),
    ("AdamW", dict(betas=(0.9, -0.1)), "beta"), ("AdamW", dict(l1=float("nan")), "l1"),
    ("Adagrad", dict(lr_decay=-1.0), "lr_decay"),
]


@pytest.mark.parametrize("name,kw,match", BAD_ARGS)
def test_bad_hyperparameters_fail_at_construction(name, kw, match):
    with pytest.raises(ValueError, match=match):
        getattr(fusedreg, name)(mlp(torch.float32).parameters(), **kw)


def test_unknown_backend_lists_choices(monkeypatch):
    model = mlp(torch.float32)
    with pytest.raises(ValueError, match="'tpu'.*auto.*cuda.*triton.*cpp.*torch"):
        fusedreg.SGD(model.parameters(), lr=0.1, backend="tpu")  # a bad name fails at construction
    # A name that only turns up at step time (FUSEDREG_BACKEND under backend="auto") fails before anything moves.
    monkeypatch.setenv("FUSEDREG_BACKEND", "tpu")
    opt = fusedreg.SGD(model.parameters(), lr=0.1)
    X, y = data(torch.float32)
    ((model(X) - y) ** 2).mean().backward()
    before = flat(model).clone()
    with pytest.raises(ValueError, match="cuda.*triton.*cpp.*torch"):
        opt.step()
    assert torch.equal(flat(model), before) and not opt.state


def snapshot(model, opt):
    return flat(model).clone(), copy.deepcopy(opt.state_dict())


def assert_untouched(model, opt, snap):
    assert torch.equal(flat(model), snap[0])
    sd = opt.state_dict()
    assert sd["state"].keys() == snap[1]["state"].keys()
    for k, st in snap[1]["state"].items():
        for key, v in st.items():
            assert torch.equal(sd["state"][k][key], v)


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad"])
def test_bad_input_at_step_leaves_params_and_state_untouched(name, backend):
    model = mlp(torch.float32)
    opt = getattr(fusedreg, name)(model.parameters(), lr=0.01, backend=backend,
                                  **(dict(momentum=0.9) if name == "SGD" else {}))
    train(model, opt, steps=2)
    X, y = data(torch.float32)
    ((model(X) - y) ** 2).mean().backward()
    snap = snapshot(model, opt)
    # A sparse gradient on the last param (refused by Adam; by SGD and Adagrad with weight_decay, as torch.optim
    # does): the earlier params must not have been stepped either.
    model[2].bias.grad = model[2].bias.grad.to_sparse()
    opt.param_groups[0]["weight_decay"] = 0.1
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert_untouched(model, opt, snap)
    opt.param_groups[0]["weight_decay"] = 0.0
    model[2].bias.grad = torch.zeros(3)
    opt.param_groups[0]["lr"] = -1.0  # a group edited into a bad value after construction
    with pytest.raises(ValueError, match="lr"):
        opt.step()
    assert_untouched(model, opt, snap)


def test_functional_rejects_mismatched_grads_before_touching_anything(backend):
    params = [torch.ones(4), torch.ones(3)]
    with pytest.raises(RuntimeError, match="does not match"):
        fusedreg.functional.sgd(params, [torch.ones(4), torch.ones(5)], [], lr=0.1, backend=backend)
    with pytest.raises(RuntimeError, match="does not match"):
        fusedreg.functional.sgd(params, [torch.ones(4), torch.ones(3, dtype=torch.float64)], [], lr=0.1,
                                backend=backend)
    with pytest.raises(ValueError, match="momentum_buffers"):
        fusedreg.functional.sgd(params, [torch.ones(4), torch.ones(3)], [torch.zeros(4)], lr=0.1, momentum=0.9,
                                backend=backend)
    assert all(torch.equal(p, torch.ones_like(p)) for p in params)


# ------------------------------------------------------------------------------------------------------------
# Ftrl: against an fp64 implementation of TensorFlow's / Keras's formula written here (numpy, Keras's clip form),
# and the two known equivalences.

def drawn_grads(gen, shapes, dtype, steps=12):
    """`steps` lists of N(0, 1) grads of `shapes`, drawn in fp64 and rounded to dtype."""
    return [[torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes] for _ in range(steps)]


def step_with(opt, ps, grads):
    """One step of opt per list of grads (copies, set as ps' .grad); returns opt."""
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = g.clone()
        opt.step()
    return opt


def ftrl_fp64(w0, grads, dtype, lr, lr_power=-0.5, initial_accumulator_value=0.1, beta=0.0, l1=0.0, l2=0.0,
              l2_shrinkage=0.0, l0=0.0, nonneg=False, maximize=False, l1_mode="prox"):
    """Keras's Ftrl step in fp64, per param: linear += g_s - (n'^-p - n^-p)/lr * w; quadratic = n'^-p/lr + 2*(l2 +
    beta/(2*lr)); w = (clip(linear, -l1, l1) - linear)/quadratic; then w = 0 where the l0 term makes 0 the better
    argmin (w^2*quadratic/2 <= l0), w = max(w, 0) for nonneg; w is stored in `dtype` after every step."""
    w = w0.double().numpy()
    n = np.full_like(w, initial_accumulator_value)
    z = np.zeros_like(w)
    for g in grads:
        g = -g.double().numpy() if maximize else g.double().numpy()
        thr = l1
        if l1_mode == "subgradient":
            g, thr = g + l1 * np.sign(w), 0.0
        n_new = n + g * g
        z = z + (g + 2 * l2_shrinkage * w) - (n_new ** -lr_power - n ** -lr_power) / lr * w
        quad = n_new ** -lr_power / lr + 2 * (l2 + beta / (2 * lr))
        w = (np.clip(z, -thr, thr) - z) / quad
        if l0:
            w = np.where(w * w * quad / 2 <= l0, 0.0, w)
        if nonneg:
            w = np.maximum(w, 0.0)
        n = n_new
        w = torch.from_numpy(w).to(dtype).double().numpy()
    return torch.from_numpy(w), torch.from_numpy(n), torch.from_numpy(z)


FTRL_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.05, beta=0.5, l1=1.0, l2=0.01, l2_shrinkage=0.02),
    dict(lr=0.2, lr_power=-0.3, initial_accumulator_value=0.5, l1=2.0, maximize=True, l0=1e-2, nonneg=True),
    dict(lr=0.1, lr_power=0.0, l1=0.02, l2=0.1),
    dict(lr=0.1, lr_power=-0.8, initial_accumulator_value=0.0, l1=0.01, l1_mode="subgradient"),
]
FTRL_TOL = {torch.float64: TRAJECTORY[torch.float64], torch.float32: TRAJECTORY[torch.float32],
            torch.bfloat16: 2.0 ** -6, torch.float16: 2.0 ** -9}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("cfg", FTRL_CONFIGS, ids=[f"ftrl-{i}" for i in range(len(FTRL_CONFIGS))])
def test_ftrl_matches_an_fp64_implementation_of_the_formula(cfg, dtype, backend):
    gen = torch.Generator().manual_seed(5)
    shapes = ((7, 5), (33,), (1,))
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)) for s in shapes]
    w0 = [p.detach().clone() for p in ps]
    grads = drawn_grads(gen, shapes, dtype)
    opt = step_with(fusedreg.Ftrl(ps, **cfg, backend=backend), ps, grads)
    for i, p in enumerate(ps):
        w, n, z = ftrl_fp64(w0[i], [gs[i] for gs in grads], dtype, **cfg)
        st = opt.state[p]
        assert set(st) == {"accumulator", "linear"}
        assert st["accumulator"].dtype == st["linear"].dtype == (torch.float64 if dtype == torch.float64
                                                                  else torch.float32)
        assert torch.equal(p.detach() == 0, w == 0), f"param {i}: exact-zero set differs"
        # z (and w = -(z -/+ l1)/q) can cancel down to far below the unit-size terms it sums: errors are held
        # against the larger of the tensor's largest value and the terms' size (1 for z, lr for w)
        for got, want, floor in ((p, w, cfg["lr"]), (st["accumulator"], n, 1.0), (st["linear"], z, 1.0)):
            err = (got.detach().double() - want).abs().max().item()
            assert err <= FTRL_TOL[dtype] * max(want.abs().max().item(), floor), (i, err)
    if cfg.get("l1", 0) >= 1:
        assert any((p == 0).any() for p in ps) and not all((p == 0).all() for p in ps)  # the penalty made zeros


@pytest.mark.parametrize("group_dim", [0, 1])
def test_ftrl_group_lasso_step_is_the_argmin_of_the_ftrl_objective(group_dim, backend):
    # FTRL's step is w = argmin z'.w + 1/2 sum q w^2 + l1 |w|_1 (+ the group term c ||w_g||, c = group_l1 sqrt(|g|)),
    # with z' and q from the new state. The step's w is checked against that problem's optimality conditions, from
    # the state before the step and the grad alone, in fp64: a zero group needs ||soft(z'_g, l1)|| <= c; in a
    # nonzero group, w_i = 0 needs |z'_i| <= l1, else z'_i + q_i w_i + l1 sign(w_i) + c w_i/||w_g|| = 0.
    gen = torch.Generator().manual_seed(11)
    cfg = dict(lr=0.1, lr_power=-0.6, beta=0.3, l1=0.3, l2=0.05, group_l1=8.0, group_dim=group_dim)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in ((12, 9), (5, 4, 6), (7,))]
    opt = fusedreg.Ftrl(ps, **cfg, backend=backend)
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in ps] for _ in range(4)]
    for gs in grads[:-1]:
        for p, g in zip(ps, gs):
            p.grad = g
        opt.step()
    before = [(opt.state[p]["accumulator"].clone(), opt.state[p]["linear"].clone(), p.detach().clone()) for p in ps]
    for p, g in zip(ps, grads[-1]):
        p.grad = g
    opt.step()
    zero_groups = shrunk_groups = 0
    for p, g, (n, z, w0) in zip(ps, grads[-1], before):
        e = -cfg["lr_power"]
        n1 = n + g * g
        z1 = z + g - (n1 ** e - n ** e) / cfg["lr"] * w0
        q = (cfg["beta"] + n1 ** e) / cfg["lr"] + 2 * cfg["l2"]
        w = p.detach()
        torch.testing.assert_close(opt.state[p]["linear"], z1, rtol=1e-13, atol=1e-13)
        if w.dim() < 2:  # no group term: the closed form
            want = -torch.sign(z1) * torch.clamp_min(z1.abs() - cfg["l1"], 0) / q
            torch.testing.assert_close(w, want, rtol=1e-13, atol=0)
            continue
        groups = lambda t: t.movedim(group_dim, 0).reshape(t.shape[group_dim], -1)  # noqa: E731
        c = cfg["group_l1"] * (w.numel() / w.shape[group_dim]) ** 0.5
        for wg, zg, qg in zip(groups(w), groups(z1), groups(q)):
            soft = torch.sign(zg) * torch.clamp_min(zg.abs() - cfg["l1"], 0)
            if (wg == 0).all():
                zero_groups += 1
                assert soft.norm() <= c * (1 + 1e-12)
                continue
            shrunk_groups += 1
            nz = wg != 0
            assert (zg[~nz].abs() <= cfg["l1"]).all()
            grad = zg + qg * wg + cfg["l1"] * torch.sign(wg) + c * wg / wg.norm()
            assert grad[nz].abs().max() <= 1e-12 * (zg.abs().max() + c), grad[nz].abs().max()
            assert soft.norm() > c
    assert zero_groups > 0 and shrunk_groups > 0, (zero_groups, shrunk_groups)
    # lr = 0 takes no step, group lasso included
    snap = [p.detach().clone() for p in ps]
    opt.param_groups[0]["lr"] = 0.0
    opt.step()
    assert all(torch.equal(p.detach(), s) for p, s in zip(ps, snap))


def linreg(dtype):
    model = torch.nn.Linear(6, 3).to(dtype)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    return model


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("init", [0.1, 0.0])
def test_ftrl_with_lr_power_minus_half_steps_like_adagrad_from_zero(dtype, init, backend):
    ref_model, our_model = linreg(dtype), linreg(dtype)
    # eps=0 and a zero accumulator: Adagrad's first step divides by sqrt(g^2) (a zero grad would give 0/0: none here)
    ref = train(ref_model, torch.optim.Adagrad(ref_model.parameters(), lr=0.05, initial_accumulator_value=init,
                                               eps=0))
    ours = train(our_model, fusedreg.Ftrl(our_model.parameters(), lr=0.05, lr_power=-0.5,
                                          initial_accumulator_value=init, backend=backend))
    assert rel_err(ours, ref) <= TRAJECTORY[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_ftrl_with_lr_power_zero_steps_like_plain_sgd_from_zero(dtype, backend):
    ref_model, our_model = linreg(dtype), linreg(dtype)
    ref = train(ref_model, torch.optim.SGD(ref_model.parameters(), lr=0.05))
    ours = train(our_model, fusedreg.Ftrl(our_model.parameters(), lr=0.05, lr_power=0.0, backend=backend))
    assert rel_err(ours, ref) <= TRAJECTORY[dtype]


def test_ftrl_state_dict_round_trip_and_param_groups(backend):
    a, b = mlp(torch.float32), mlp(torch.float32)
    groups = lambda m: [dict(params=[m[0].weight, m[2].weight], l1=0.01), dict(params=[m[0].bias, m[2].bias],
                                                                              lr_power=-0.7)]  # noqa: E731
    opt_a = fusedreg.Ftrl(groups(a), lr=0.1, l2=0.01, beta=0.1, backend=backend)
    train(a, opt_a, steps=5)
    b.load_state_dict(a.state_dict())
    opt_b = fusedreg.Ftrl(groups(b), lr=0.5, backend=backend)
    sd = opt_a.state_dict()
    assert all(set(st) == {"accumulator", "linear"} for st in sd["state"].values())
    opt_b.load_state_dict(sd)
    assert opt_b.param_groups[0]["l1"] == 0.01 and opt_b.param_groups[1]["lr_power"] == -0.7
    assert opt_b.param_groups[0]["lr"] == 0.1 and opt_b.param_groups[0]["beta"] == 0.1
    train(a, opt_a, steps=5)
    train(b, opt_b, steps=5)
    assert torch.equal(flat(a), flat(b))
    assert (a[0].weight == 0).any() and not (a[0].bias == 0).any()


@pytest.mark.parametrize("kw,match", [
    (dict(lr_power=0.5), "lr_power"), (dict(lr_power=float("nan")), "lr_power"), (dict(lr=-0.1), "lr"),
    (dict(initial_accumulator_value=-0.1), "initial_accumulator_value"), (dict(beta=-1.0), "beta"),
    (dict(l1=-1.0), "l1"), (dict(l2=-1.0), "l2"), (dict(l2_shrinkage=-1.0), "l2_shrinkage"),
    (dict(l0=-1.0), "l0"), (dict(group_l1=-0.1), "group_l1")], ids=str)
def test_ftrl_bad_hyperparameters(kw, match, backend):
    with pytest.raises(ValueError, match=match):
        fusedreg.Ftrl(mlp(torch.float32).parameters(), **{"lr": 0.1, **kw})
    # the same value edited into a group after construction fails at step, before anything moves
    model = mlp(torch.float32)
    opt = fusedreg.Ftrl([dict(params=model[0].parameters()), dict(params=model[2].parameters())], lr=0.1,
                        l1=0.01, backend=backend)
    train(model, opt, steps=2)
    X, y = data(torch.float32)
    ((model(X) - y) ** 2).mean().backward()
    snap = snapshot(model, opt)
    opt.param_groups[1].update(kw)
    with pytest.raises(ValueError, match=match):
        opt.step()
    assert_untouched(model, opt, snap)


def test_ftrl_master_weights_follow_the_fp32_run(backend):
    # bf16 params with an fp32 master: the master takes the fp32 run's steps (given the same bf16 grads), the
    # param is the master rounded, and the state is fp32.
    gen = torch.Generator().manual_seed(3)
    w0 = [torch.randn(7, 5, generator=gen), torch.randn(3, generator=gen)]
    low = [torch.nn.Parameter(w.to(torch.bfloat16)) for w in w0]
    ref = [torch.nn.Parameter(w.to(torch.bfloat16).float()) for w in w0]
    cfg = dict(lr=0.1, l1=0.5, l2=0.01, beta=0.1)
    opt = fusedreg.Ftrl(low, master_weights=True, **cfg, backend=backend)
    ref_opt = fusedreg.Ftrl(ref, **cfg, backend=backend)
    for _ in range(8):
        for p, r in zip(low, ref):
            g = torch.randn(p.shape, generator=gen).to(torch.bfloat16)
            p.grad, r.grad = g, g.float()
        opt.step()
        ref_opt.step()
    for p, r in zip(low, ref):
        st = opt.state[p]
        assert st["master_param"].dtype == st["accumulator"].dtype == st["linear"].dtype == torch.float32
        assert torch.equal(st["master_param"], r.detach())
        assert torch.equal(p.detach(), r.detach().to(torch.bfloat16))
    assert any((p == 0).any() for p in low)


# ------------------------------------------------------------------------------------------------------------
# Lion: against lion-pytorch (the oracle) with every penalty at 0, and with penalties against an fp64
# implementation of lion-pytorch's step and of the penalties written here (numpy).

LION_CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
    dict(lr=0.003, betas=(0.95, 0.98), weight_decay=0.3, decoupled_weight_decay=True),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("cfg", LION_CONFIGS, ids=[f"lion-{i}" for i in range(len(LION_CONFIGS))])
def test_lion_matches_lion_pytorch_without_penalty(cfg, dtype, backend):
    ref_model, our_model = mlp(dtype), mlp(dtype)
    ref_opt = lion_pytorch.Lion(ref_model.parameters(), **cfg)
    our_opt = fusedreg.Lion(our_model.parameters(), **cfg, backend=backend)
    ref, ours = train(ref_model, ref_opt), train(our_model, our_opt)
    assert rel_err(ours, ref) <= TRAJECTORY[dtype]
    for p_ref, p_our in zip(ref_model.parameters(), our_model.parameters()):
        assert set(our_opt.state[p_our]) == set(ref_opt.state[p_ref]) == {"exp_avg"}
        assert rel_err(our_opt.state[p_our]["exp_avg"], ref_opt.state[p_ref]["exp_avg"]) <= TRAJECTORY[dtype]
    assert set(ref_opt.param_groups[0]) <= set(our_opt.param_groups[0])


def test_lion_state_dict_interop_with_lion_pytorch(backend):
    """lion-pytorch -> fusedreg and fusedreg -> lion-pytorch mid-run, then the same continuation."""
    dt = torch.float64
    cfg = dict(lr=0.01, betas=(0.85, 0.97), weight_decay=0.05)
    straight = mlp(dt)
    train(straight, lion_pytorch.Lion(straight.parameters(), **cfg), steps=20)
    for first, second in ((lion_pytorch, fusedreg), (fusedreg, lion_pytorch)):
        model = mlp(dt)
        opt = first.Lion(model.parameters(), **cfg, **(dict(backend=backend) if first is fusedreg else {}))
        train(model, opt, steps=10)
        sd = copy.deepcopy(opt.state_dict())
        # use_triton is lion-pytorch's keyword: accepted (backend= chooses fusedreg's kernel)
        opt2 = second.Lion(model.parameters(), lr=0.5, **(dict(backend=backend, use_triton=True)
                                                            if second is fusedreg else {}))
        opt2.load_state_dict(sd)  # the hyperparameters come from the state_dict
        assert opt2.param_groups[0]["lr"] == cfg["lr"] and tuple(opt2.param_groups[0]["betas"]) == cfg["betas"]
        assert all(set(st) == {"exp_avg"} for st in opt2.state_dict()["state"].values())
        train(model, opt2, steps=10)
        assert rel_err(flat(model), flat(straight)) <= TRAJECTORY[dt], f"{first.__name__} -> {second.__name__}"


def lion_fp64(w0, grads, dtype, lr, betas=(0.9, 0.99), weight_decay=0.0, l1=0.0, l1_mode="decoupled", l0=0.0,
              nonneg=False, group_l1=0.0, group_dim=0):
    """lion-pytorch's step in fp64 (w *= 1 - lr*wd; w -= lr*sign(b1*m + (1-b1)*g); m = b2*m + (1-b2)*g), then the
    penalties with step lr: soft-threshold by lr*l1 (l1_mode="subgradient": l1*sign(w) added to g first), w = 0
    where |w| <= sqrt(2*lr*l0), max(w, 0), then every group (rows or columns of a tensor with dim >= 2) times
    max(0, 1 - lr*group_l1*sqrt(|g|)/||w_g||); w is stored in `dtype` after every step."""
    b1, b2 = betas
    w = w0.double().numpy()
    m = np.zeros_like(w)
    for g in grads:
        g = g.double().numpy()
        if l1_mode == "subgradient":
            g = g + l1 * np.sign(w)
        w = w * (1 - lr * weight_decay)
        w = w - lr * np.sign(b1 * m + (1 - b1) * g)
        m = b2 * m + (1 - b2) * g
        if l1_mode != "subgradient":
            w = np.sign(w) * np.maximum(np.abs(w) - lr * l1, 0.0)
        if l0:
            w = np.where(np.abs(w) <= np.sqrt(2 * lr * l0), 0.0, w)
        if nonneg:
            w = np.maximum(w, 0.0)
        if group_l1 and w.ndim >= 2:
            v = np.moveaxis(w, group_dim, 0)
            norm = np.sqrt((v.reshape(v.shape[0], -1) ** 2).sum(axis=1))
            with np.errstate(divide="ignore"):
                f = np.maximum(0.0, 1 - lr * group_l1 * np.sqrt(v[0].size) / norm)
            w = np.moveaxis(v * f.reshape((-1,) + (1,) * (v.ndim - 1)), 0, group_dim)
        w = torch.from_numpy(np.ascontiguousarray(w)).to(dtype).double().numpy()
    return torch.from_numpy(w), torch.from_numpy(m)


LION_PENALTY_CONFIGS = [
    dict(lr=0.01, l1=1.0),  # l1_mode="decoupled", Lion's default; lr*l1 = lr: a zero stays zero
    dict(lr=0.01, betas=(0.8, 0.95), weight_decay=0.1, l1=2.0, l0=1e-3, nonneg=True),
    dict(lr=0.01, l1=0.3, l1_mode="subgradient", nonneg=True),
    dict(lr=0.01, l1=0.2, group_l1=3.0),
    dict(lr=0.01, weight_decay=0.1, l0=1e-4, group_l1=3.0, group_dim=1),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("cfg", LION_PENALTY_CONFIGS, ids=[f"lion-pen-{i}" for i in range(len(LION_PENALTY_CONFIGS))])
def test_lion_penalties_match_an_fp64_implementation(cfg, dtype, backend):
    gen = torch.Generator().manual_seed(7)
    shapes = ((7, 5), (4, 6, 2), (33,))
    w0 = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    if cfg.get("group_l1"):  # every third group small: the group prox zeroes those, and keeps the others
        for w in w0[:2]:
            w.movedim(cfg.get("group_dim", 0), 0)[::3] *= 1e-2
    ps = [torch.nn.Parameter(w.to(dtype)) for w in w0]
    w0 = [p.detach().clone() for p in ps]
    grads = drawn_grads(gen, shapes, dtype)
    opt = step_with(fusedreg.Lion(ps, **cfg, backend=backend), ps, grads)
    tol = TRAJECTORY[dtype]
    for i, p in enumerate(ps):
        w, m = lion_fp64(w0[i], [gs[i] for gs in grads], dtype, **cfg)
        assert torch.equal(p.detach() == 0, w == 0), f"param {i}: exact-zero set differs"
        assert (p.detach().double() - w).abs().max() <= tol * max(w.abs().max().item(), cfg["lr"]), i
        assert (opt.state[p]["exp_avg"].double() - m).abs().max() <= tol * m.abs().max().item(), i
    zeros = sum(int((p == 0).sum()) for p in ps)
    assert 0 < zeros < sum(p.numel() for p in ps)  # the penalties made zeros, not only zeros
    if cfg.get("group_l1"):
        gd = cfg.get("group_dim", 0)
        for p in ps[:2]:
            norms = torch.linalg.vector_norm(p.detach().movedim(gd, 0).flatten(1), dim=1)
            assert (norms[::3] == 0).all() and (norms != 0).sum() >= len(norms) // 2


def test_lion_refuses_prox_l1_complex_params_and_sparse_grads(backend):
    with pytest.raises(ValueError, match="l1_mode='prox' is not defined for Lion.*'decoupled'"):
        fusedreg.Lion(mlp(torch.float32).parameters(), l1=0.1, l1_mode="prox")
    with pytest.raises(ValueError, match="complex"):
        fusedreg.Lion([torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))])
    model = mlp(torch.float32)
    opt = fusedreg.Lion(model.parameters(), lr=0.01, l1=0.1, backend=backend)
    assert opt.param_groups[0]["l1_mode"] == "decoupled"
    train(model, opt, steps=2)
    X, y = data(torch.float32)
    ((model(X) - y) ** 2).mean().backward()
    snap = snapshot(model, opt)
    model[2].bias.grad = model[2].bias.grad.to_sparse()
    with pytest.raises(RuntimeError, match="Lion does not support sparse gradients"):
        opt.step()
    assert_untouched(model, opt, snap)
    model[2].bias.grad = model[2].bias.grad.to_dense()
    opt.param_groups[0]["l1_mode"] = "prox"  # edited into a group after construction: refused at step
    with pytest.raises(ValueError, match="l1_mode='prox'"):
        opt.step()
    assert_untouched(model, opt, snap)


# ---- Muon: torch.optim.Muon's trajectory, its state both ways, the penalties against an fp64 implementation -----

def muon_mlp(dtype, seed=0):
    # Muon takes 2-D params only: a bias-free MLP, one tall (16x6) and one wide (3x16) weight (two lr ratios)
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16, bias=False), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3, bias=False)).to(dtype)


MUON_CONFIGS = [
    dict(lr=0.02),
    dict(lr=0.02, nesterov=False, adjust_lr_fn="match_rms_adamw"),
    dict(lr=0.01, weight_decay=0.3, momentum=0.8, adjust_lr_fn="original", ns_steps=6),
    dict(lr=0.02, nesterov=False, ns_coefficients=(3.4, -4.7, 2.0), eps=1e-5),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cfg", MUON_CONFIGS, ids=range(len(MUON_CONFIGS)))
def test_muon_matches_torch_optim_muon_without_penalty(cfg, dtype, backend):
    ref_model, our_model = muon_mlp(dtype), muon_mlp(dtype)
    ref_opt = torch.optim.Muon(ref_model.parameters(), **cfg)
    ours_opt = fusedreg.Muon(our_model.parameters(), **cfg, backend=backend)
    assert rel_err(train(our_model, ours_opt), train(ref_model, ref_opt)) <= TRAJECTORY[dtype]
    for p_ref, p_our in zip(ref_model.parameters(), our_model.parameters()):
        assert set(ours_opt.state[p_our]) == set(ref_opt.state[p_ref]) == {"momentum_buffer"}
        buf = ours_opt.state[p_our]["momentum_buffer"]
        assert rel_err(buf, ref_opt.state[p_ref]["momentum_buffer"]) <= TRAJECTORY[dtype]


@pytest.mark.parametrize("ours_first", [True, False])
def test_muon_state_dict_moves_both_ways(ours_first, backend):
    # 10 steps on one side, the state_dict loaded into the other, 10 more there; against 20 steps of torch's
    cfg = dict(lr=0.02, weight_decay=0.05)
    first, second, whole = muon_mlp(torch.float64), muon_mlp(torch.float64), muon_mlp(torch.float64)
    ours = lambda m: fusedreg.Muon(m.parameters(), **cfg, backend=backend)  # noqa: E731
    theirs = lambda m: torch.optim.Muon(m.parameters(), **cfg)  # noqa: E731
    a = ours(first) if ours_first else theirs(first)
    train(first, a, steps=10)
    second.load_state_dict(first.state_dict())
    b = theirs(second) if ours_first else ours(second)
    b.load_state_dict(a.state_dict())
    assert all(torch.is_tensor(st["momentum_buffer"]) for st in b.state.values())
    got = train(second, b, steps=10)
    want = train(whole, theirs(whole), steps=20)
    assert rel_err(got, want) <= TRAJECTORY[torch.float64]


def muon_fp64(ps, grads_seq, *, lr, weight_decay, momentum, nesterov, l1, l1_mode, l0, nonneg, group_l1, group_dim):
    """Muon with the penalties, written independently in numpy fp64 from the formulas (fusedreg.Muon's docstring);
    only the orthogonalization, torch's bf16 iteration, is fusedreg.optim.newton_schulz."""
    ws = [p.detach().numpy().astype(np.float64).copy() for p in ps]
    bufs = [np.zeros_like(w) for w in ws]
    for grads in grads_seq:
        for i, (w, g) in enumerate(zip(ws, grads)):
            g = g.numpy().astype(np.float64)
            if l1_mode == "subgradient":
                g = g + l1 * np.sign(w)
            bufs[i] = bufs[i] + (1 - momentum) * (g - bufs[i])
            u = g + momentum * (bufs[i] - g) if nesterov else bufs[i]
            o = fusedreg.optim.newton_schulz(torch.from_numpy(u), coefficients=(3.4445, -4.775, 2.0315), steps=5,
                                             eps=1e-7).double().numpy()
            a, b = w.shape
            w = w * (1 - lr * weight_decay) - lr * np.sqrt(max(1, a / b)) * o
            if l1_mode == "decoupled":
                w = np.sign(w) * np.maximum(np.abs(w) - lr * l1, 0)
            w = np.where(np.abs(w) <= np.sqrt(2 * lr * l0), 0.0, w)
            if nonneg:
                w = np.maximum(w, 0)
            norms = np.linalg.norm(w, axis=1 - group_dim, keepdims=True)
            size = w.shape[1 - group_dim]
            w = w * np.maximum(1 - lr * group_l1 * np.sqrt(size) / np.where(norms > 0, norms, 1), 0)
            ws[i] = w
    return ws


@pytest.mark.parametrize("cfg", [
    dict(l1=0.5, l1_mode="decoupled", l0=1e-4, nonneg=False, group_l1=0.3, group_dim=0, nesterov=True),
    dict(l1=0.5, l1_mode="decoupled", l0=0.0, nonneg=True, group_l1=0.5, group_dim=1, nesterov=False),
    dict(l1=0.2, l1_mode="subgradient", l0=1e-3, nonneg=False, group_l1=0.0, group_dim=0, nesterov=True),
], ids=["decoupled-rows", "decoupled-nonneg-cols", "subgradient-l0"])
def test_muon_penalties_match_an_fp64_implementation(cfg, backend):
    g = torch.Generator().manual_seed(5)
    ps = [torch.randn(12, 5, generator=g, dtype=torch.float64) * 0.3,
          torch.randn(4, 9, generator=g, dtype=torch.float64) * 0.3]
    grads_seq = [[torch.randn(p.shape, generator=g, dtype=torch.float64) for p in ps] for _ in range(6)]
    hp = dict(lr=0.05, weight_decay=0.1, momentum=0.9, **cfg)
    want = muon_fp64(ps, grads_seq, **hp)
    ours = [p.clone().requires_grad_() for p in ps]
    opt = fusedreg.Muon(ours, backend=backend, **hp)
    for grads in grads_seq:
        for p, gr in zip(ours, grads):
            p.grad = gr.clone()
        opt.step()
    zeros = 0
    for p, w in zip(ours, want):
        w = torch.from_numpy(w)
        assert torch.equal(p.detach() == 0, w == 0)
        assert rel_err(p.detach(), w) <= 1e-12
        zeros += int((w == 0).sum())
    assert 0 < zeros < sum(p.numel() for p in ps), "the penalties must zero some weights and keep others"


def test_muon_refuses_prox_l1_and_torchs_bad_inputs():
    w = torch.nn.Parameter(torch.randn(3, 4))
    with pytest.raises(ValueError, match="l1_mode='prox' is not defined for Muon.*decoupled"):
        fusedreg.Muon([w], l1=0.1, l1_mode="prox")
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        fusedreg.Muon([torch.nn.Parameter(torch.randn(3))])
    with pytest.raises(ValueError, match="Adjust learning rate function bad is not supported"):
        fusedreg.Muon([w], adjust_lr_fn="bad")
    with pytest.raises(ValueError, match="exactly 3"):
        fusedreg.Muon([w], ns_coefficients=(1.0, 2.0))
    with pytest.raises(ValueError, match="Number of steps"):
        fusedreg.Muon([w], ns_steps=100)
    with pytest.raises(ValueError, match="Invalid lr"):
        fusedreg.Muon([w], lr=-1.0)


def test_muon_adamw_groups_step_as_fusedreg_adamw_in_the_same_step(backend):
    # KellerJordan/Muon's MuonWithAuxAdam split: hidden 2-D weights with Muon, the rest (here biases and the
    # output layer) with AdamW's math and its own penalties, in one optimizer; against the two optimizers apart.
    def net():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                                   torch.nn.Linear(16, 3))

    def split(m):
        hidden = [m[0].weight, m[2].weight]
        return hidden, [p for p in m.parameters() if all(p is not h for h in hidden)]

    one, two = net(), net()
    hidden, rest = split(one)
    side = dict(lr=0.01, betas=(0.9, 0.95), weight_decay=0.01, l1=1e-3)
    opt = fusedreg.Muon([dict(params=hidden, l1=0.05, group_l1=0.02),
                         dict(params=rest, use_muon=False, **side)], lr=0.02, backend=backend)
    hidden2, rest2 = split(two)
    muon = fusedreg.Muon(hidden2, lr=0.02, l1=0.05, group_l1=0.02, backend=backend)
    adamw = fusedreg.AdamW(rest2, **side, backend=backend)
    X, y = data(torch.float32)
    for _ in range(10):
        for m, opts in ((one, [opt]), (two, [muon, adamw])):
            for o in opts:
                o.zero_grad()
            ((m(X) - y) ** 2).mean().backward()
            for o in opts:
                o.step()
    assert torch.equal(flat(one), flat(two))
    assert (hidden[0] == 0).any()
    g = opt.param_groups[1]
    assert (g["eps"], g["amsgrad"], g["l1_mode"]) == (1e-8, False, "prox")  # AdamW's defaults, not Muon's
    assert set(opt.state[rest[0]]) == {"step", "exp_avg", "exp_avg_sq"}
    assert set(opt.state[hidden[0]]) == {"momentum_buffer"}
    # the state_dict round trip keeps both kinds of group
    again = fusedreg.Muon([dict(params=split(two)[0]), dict(params=split(two)[1], use_muon=False)], backend=backend)
    again.load_state_dict(opt.state_dict())
    assert again.param_groups[1]["betas"] == (0.9, 0.95) and not again.param_groups[1]["use_muon"]
