"""Issue #7, the penalty family: elastic net and positive lasso vs scikit-learn, group lasso (prox known answers,
rows/columns/long rows, Adam's metric prox and its convergence), L0 and positivity, Adagrad vs TensorFlow's
ProximalAdagrad and torch.optim.Adagrad, every penalty on every backend vs the reference, and the helpers
fusedreg.penalty / sparsity / param_groups / elastic_net vs plain PyTorch."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import fusedreg
from fusedreg import functional as F
from fusedreg import reference
from tolerances import SOLVER, STEP, TRAJECTORY, rel_err

f64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    # Thousands of tiny full-batch steps: intra-op threads only add wake-up latency (10x on a busy 2-core box).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------ elastic_net

def test_elastic_net_keywords():
    assert fusedreg.elastic_net(0.1, 0.3) == pytest.approx(dict(l1=0.03, weight_decay=0.07))
    assert fusedreg.elastic_net(0.2) == pytest.approx(dict(l1=0.1, weight_decay=0.1))
    assert fusedreg.elastic_net(0.5, 1.0) == dict(l1=0.5, weight_decay=0.0)
    assert fusedreg.elastic_net(0.5, 0.0) == dict(l1=0.0, weight_decay=0.5)
    for bad in (dict(alpha=-1.0), dict(alpha=float("nan")), dict(alpha=float("inf")), dict(alpha=1.0, l1_ratio=1.5),
                dict(alpha=1.0, l1_ratio=-0.1)):
        with pytest.raises(ValueError):
            fusedreg.elastic_net(**bad)


# ------------------------------------------------------------------------- scikit-learn as the oracle (fp64)

def _regression(n=200, d=10, seed=0, intercept=3.0):
    """Standardized, well-conditioned design (X^T X / n has eigenvalues in about [0.6, 1.5])."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=f64)
    X = (X - X.mean(0)) / X.std(0, unbiased=False)
    w = torch.zeros(d, dtype=f64)
    w[:4] = torch.tensor([2.0, -1.5, 1.0, 0.5], dtype=f64)
    y = X @ w + 0.5 * torch.randn(n, generator=g, dtype=f64) + intercept
    return X, y


def _fit_linear(make_opt, X, y, steps, **penalties):
    """Full batch on 0.5*mean((Xw + c - y)^2): w in a penalized group, the intercept c in an unpenalized one."""
    n, d = X.shape
    w = torch.zeros(d, dtype=f64, requires_grad=True)
    c = torch.zeros(1, dtype=f64, requires_grad=True)
    opt = make_opt([dict(params=[w], **penalties), dict(params=[c])])
    for _ in range(steps):
        r = X @ w.detach() + c.detach() - y
        w.grad = X.T @ r / n
        c.grad = r.mean().reshape(1)
        opt.step()
    return w.detach(), c.detach()


def _lipschitz(X):
    Xa = torch.cat([X, torch.ones(X.shape[0], 1, dtype=f64)], 1)
    return torch.linalg.matrix_norm(Xa, 2).item() ** 2 / X.shape[0]


@pytest.mark.parametrize("alpha,l1_ratio", [(0.1, 0.5), (0.2, 0.8), (0.05, 0.2), (0.3, 1.0)])
def test_sgd_elastic_net_reaches_sklearn(alpha, l1_ratio, backend):
    from sklearn.linear_model import ElasticNet
    X, y = _regression()
    ref = ElasticNet(alpha=alpha, l1_ratio=l1_ratio, tol=1e-12, max_iter=100_000).fit(X.numpy(), y.numpy())
    pen = fusedreg.elastic_net(alpha, l1_ratio)
    lr = 1.0 / (_lipschitz(X) + pen["weight_decay"])
    w, c = _fit_linear(lambda g: fusedreg.SGD(g, lr=lr, backend=backend), X, y, 400, **pen)
    assert np.abs(w.numpy() - ref.coef_).max() <= SOLVER
    assert abs(c.item() - ref.intercept_) <= SOLVER
    np.testing.assert_array_equal(w.numpy() == 0, ref.coef_ == 0)  # the same exact zeros


def test_adam_elastic_net_reaches_sklearn(backend):
    # Prox-Adam (threshold lr*l1/denom, coupled decay) has the elastic net's KKT points as its fixed points.
    from sklearn.linear_model import ElasticNet
    X, y = _regression()
    ref = ElasticNet(alpha=0.1, l1_ratio=0.5, tol=1e-12, max_iter=100_000).fit(X.numpy(), y.numpy())
    w, c = _fit_linear(lambda g: fusedreg.Adam(g, lr=0.03, backend=backend), X, y, 1500,
                       **fusedreg.elastic_net(0.1, 0.5))
    assert np.abs(w.numpy() - ref.coef_).max() <= SOLVER
    assert abs(c.item() - ref.intercept_) <= SOLVER


@pytest.mark.parametrize("alpha", [0.05, 0.3])
def test_nonneg_lasso_reaches_sklearn_positive(alpha, backend):
    from sklearn.linear_model import Lasso
    X, y = _regression()
    ref = Lasso(alpha=alpha, positive=True, tol=1e-12, max_iter=100_000).fit(X.numpy(), y.numpy())
    assert (ref.coef_ == 0).any() and (ref.coef_ > 0).any()
    w, c = _fit_linear(lambda g: fusedreg.SGD(g, lr=1.0 / _lipschitz(X), backend=backend), X, y, 400,
                       l1=alpha, nonneg=True)
    assert (w >= 0).all()
    assert np.abs(w.numpy() - ref.coef_).max() <= SOLVER
    assert abs(c.item() - ref.intercept_) <= SOLVER
    np.testing.assert_array_equal(w.numpy() == 0, ref.coef_ == 0)


def test_nonneg_lasso_orthonormal_design_known_answer(backend):
    # X^T X / n = I: the non-negative lasso is max(X^T y / n - alpha, 0); one prox step with lr = 1/L = 1 from 0
    # lands on it, and it is a fixed point.
    n, d, alpha = 64, 8, 0.3
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=f64))
    X = math.sqrt(n) * Q
    y = X @ torch.linspace(-1, 1, d, dtype=f64) + 0.1 * torch.randn(n, generator=g, dtype=f64)
    expected = torch.clamp_min(X.T @ y / n - alpha, 0)
    assert (expected == 0).sum() >= 2 and (expected > 0).sum() >= 2
    w = torch.zeros(d, dtype=f64, requires_grad=True)
    opt = fusedreg.SGD([w], lr=1.0, l1=alpha, nonneg=True, backend=backend)
    for step in range(5):
        w.grad = X.T @ (X @ w.detach() - y) / n
        opt.step()
        assert rel_err(w.detach(), expected) <= 1e-14, step


# ------------------------------------------------------------------------------------------ group lasso

@pytest.mark.parametrize("group_dim", [0, 1])
@pytest.mark.parametrize("thr,expected", [(2.5, (1.5, 2.0)), (5.0, (0.0, 0.0)), (7.0, (0.0, 0.0))])
def test_group_prox_known_answers(thr, expected, group_dim, backend):
    # v = (3, 4), ||v|| = 5, |g| = 2: t*lambda*sqrt(2) = thr.
    shape = (1, 2) if group_dim == 0 else (2, 1)
    w = torch.tensor([3.0, 4.0], dtype=f64).reshape(shape).requires_grad_()
    w.grad = torch.zeros_like(w)
    opt = fusedreg.SGD([w], lr=0.5, group_l1=thr / (0.5 * math.sqrt(2)), group_dim=group_dim, backend=backend)
    opt.step()
    assert torch.allclose(w.detach().flatten(), torch.tensor(expected, dtype=f64), rtol=0, atol=1e-15)
    if expected == (0.0, 0.0):
        assert (w == 0).all()
    # Adam's metric prox with a denominator constant in the group is the same formula with t = lr/denom.
    v = torch.tensor([3.0, 4.0], dtype=f64).reshape(shape)
    out = reference.group_prox(v, 0.5, thr / (0.25 * math.sqrt(2)), group_dim, torch.full_like(v, 2.0))
    assert torch.allclose(out.flatten(), torch.tensor(expected, dtype=f64), rtol=0, atol=1e-14)


def _group_prox_closed_form(v, c, group_dim):
    """Plain loops: w_g = v_g * max(0, 1 - c*sqrt(|g|)/||v_g||) over p[i] (dim 0) or p[:, j] (dim 1)."""
    out = v.clone()
    for i in range(v.shape[group_dim]):
        g = v.select(group_dim, i)
        scale = max(0.0, 1 - c * math.sqrt(g.numel()) / g.norm().item()) if g.norm() > 0 else 0.0
        out.select(group_dim, i).copy_(g * scale)
    return out


@pytest.mark.parametrize("shape,group_dim", [((6, 5), 0), ((6, 5), 1), ((4, 3, 5), 0), ((4, 3, 5), 1),
                                             ((3, 200_000), 0), ((200_000, 3), 1), ((5, 0), 0), ((1, 1), 1)])
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_sgd_group_lasso_rows_columns_long_rows(shape, group_dim, dtype, backend):
    torch.manual_seed(2)
    # Spread the group norms (1x, 2x, ...) so no kept group is shrunk to a cancellation-sized remainder.
    spread = torch.arange(1, shape[group_dim] + 1, dtype=dtype).reshape([-1 if d == group_dim else 1
                                                                         for d in range(len(shape))])
    w = (torch.randn(shape, dtype=dtype) * spread).requires_grad_()
    b = torch.randn(shape[0], dtype=dtype, requires_grad=True)  # 1-D: no groups
    w.grad, b.grad = torch.randn_like(w), torch.randn_like(b)
    lr, lam = 0.1, 1.0
    v, bv = (w - lr * w.grad).detach().double(), (b - lr * b.grad).detach()
    norms = torch.linalg.vector_norm(v, dim=reference.group_dims(v.dim(), group_dim)) if v.numel() else v
    size = v.numel() // shape[group_dim] if shape[group_dim] else 0
    if norms.numel() >= 2:  # put the threshold between two group norms: some groups are zeroed, some shrunk
        mid = norms.sort().values[norms.numel() // 2 - 1: norms.numel() // 2 + 1].mean().item()
        lam = mid / (lr * math.sqrt(size))
        assert (norms <= lr * lam * math.sqrt(size)).any() and (norms > lr * lam * math.sqrt(size)).any()
    fusedreg.SGD([w, b], lr=lr, group_l1=lam, group_dim=group_dim, backend=backend).step()
    expected = _group_prox_closed_form(v, lr * lam, group_dim) if max(shape) < 1000 else \
        v * torch.clamp_min(1 - lr * lam * math.sqrt(size) / norms, 0).reshape(
            [-1 if d == group_dim else 1 for d in range(v.dim())])
    assert rel_err(w.detach(), expected) <= STEP[dtype]
    assert torch.equal(b.detach(), bv)  # 1-D params are left alone
    if v.numel():
        zero = torch.linalg.vector_norm(w.detach().double(), dim=reference.group_dims(v.dim(), group_dim)) == 0
        assert torch.equal(zero, norms <= lr * lam * math.sqrt(size))


def _metric_kkt(v, w, a, group_dim):
    """Optimality of w for min_w 1/2 sum_i (w_i - v_i)^2 / a_i * s + s*||w_g|| written per group: nonzero groups
    satisfy (w - v)/a + w/||w|| = 0, zero groups ||v / a|| <= 1. Returns the worst residual."""
    worst = 0.0
    for i in range(v.shape[group_dim]):
        vg, wg, ag = v.select(group_dim, i), w.select(group_dim, i), a.select(group_dim, i)
        if (wg == 0).all():
            worst = max(worst, (vg / ag).norm().item() - 1)
        else:
            worst = max(worst, ((wg - vg) / ag + wg / wg.norm()).abs().max().item())
    return worst


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape,group_dim", [((7, 5), 0), ((7, 5), 1), ((3, 4, 6), 1), ((2, 5000), 0)])
def test_metric_group_prox_is_exact(seed, shape, group_dim):
    # reference.group_prox with a per-element denominator is the exact prox in the metric D = denom/step:
    # argmin 1/2 (w - v)^T D (w - v) + lambda*sqrt(|g|)*||w_g||, checked by its optimality conditions, with the
    # denominators spread over six decades inside each group.
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=g, dtype=f64) * 3
    denom = 10 ** (6 * torch.rand(shape, generator=g, dtype=f64) - 3)
    step, lam = 0.2, 0.5 + seed
    size = v.numel() // shape[group_dim]
    w = reference.group_prox(v, step, lam, group_dim, denom)
    a = step * lam * math.sqrt(size) / denom
    assert _metric_kkt(v, w, a, group_dim) <= 1e-9
    # Signs kept, magnitudes shrunk; exact zeros are whole groups.
    assert (w * v >= 0).all() and (w.abs() <= v.abs()).all()
    nz = (w != 0).reshape(w.shape).any(dim=reference.group_dims(w.dim(), group_dim))
    for i in range(shape[group_dim]):
        assert bool((w.select(group_dim, i) != 0).all()) == bool(nz[i])


def _group_regression(n=200, d=10, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=f64)
    X = (X - X.mean(0)) / X.std(0, unbiased=False)
    W = torch.zeros(k, d, dtype=f64)
    W[:, :4] = torch.randn(k, 4, generator=g, dtype=f64)
    Y = X @ W.T + 0.5 * torch.randn(n, k, generator=g, dtype=f64) + 1.0
    return X, Y


def _fit_group(make_opt, X, Y, steps, **penalties):
    """Multi-output regression 0.5*mean((X W^T + c - Y)^2) over n*k; W's columns are the input features."""
    n, k = Y.shape
    W = torch.zeros(k, X.shape[1], dtype=f64, requires_grad=True)
    c = torch.zeros(k, dtype=f64, requires_grad=True)
    opt = make_opt([dict(params=[W], **penalties), dict(params=[c])])
    for _ in range(steps):
        R = X @ W.detach().T + c.detach() - Y
        W.grad = R.T @ X / (n * k)
        c.grad = R.mean(0) / k
        opt.step()
    R = X @ W.detach().T + c.detach() - Y
    return W.detach(), c.detach(), R.T @ X / (n * k)


def test_group_lasso_solution_sgd_and_adam(backend):
    # SGD (exact prox, lr = 1/L) reaches the group-lasso solution over input features, checked by its KKT
    # conditions; prox-Adam with the metric group prox reaches the same point (its fixed points are exactly the
    # group-lasso KKT points, whatever the spread of Adam's denominators within a group).
    X, Y = _group_regression()
    n, k = Y.shape
    lam = 0.1
    s = lam * math.sqrt(k)  # columns have k entries
    L = _lipschitz(X) / k
    Ws, cs, G = _fit_group(lambda g: fusedreg.SGD(g, lr=1 / L, backend=backend), X, Y, 150, group_l1=lam,
                           group_dim=1)
    zero = (Ws == 0).all(0)
    assert 2 <= int(zero.sum()) <= 8
    assert ((Ws != 0).all(0) | zero).all()  # whole features
    for j in range(X.shape[1]):
        if zero[j]:
            assert G[:, j].norm() <= s
        else:
            assert (G[:, j] + s * Ws[:, j] / Ws[:, j].norm()).abs().max() <= 1e-12
    Wa, ca, _ = _fit_group(lambda g: fusedreg.Adam(g, lr=0.03, backend=backend), X, Y, 500, group_l1=lam,
                           group_dim=1)
    assert (Wa - Ws).abs().max() <= SOLVER and (ca - cs).abs().max() <= SOLVER
    assert torch.equal((Wa == 0).all(0), zero)


def test_group_lasso_with_l1_is_sparse_group_lasso():
    # prox of l1 + group = group prox of the soft-threshold (exact for SGD): the op soft-thresholds, then groups.
    torch.manual_seed(3)
    w = torch.randn(5, 8, dtype=f64, requires_grad=True)
    w.grad = torch.randn_like(w)
    lr, l1, lam = 0.5, 0.3, 0.4
    v = (w - lr * w.grad).detach()
    expected = _group_prox_closed_form(torch.sign(v) * torch.clamp_min(v.abs() - lr * l1, 0), lr * lam, 0)
    fusedreg.SGD([w], lr=lr, l1=l1, group_l1=lam).step()
    assert rel_err(w.detach(), expected) <= 1e-14
    assert (w == 0).any()


@pytest.mark.parametrize("group_dim", [0, 1])
def test_adagrad_l1_l2_group_is_the_joint_metric_prox(group_dim, backend):
    # One Adagrad step with l1 + l2 + group_l1 solves min_w 1/2 sum d_i (w_i - u_i)^2 + l1|w|_1 + l2/2 |w|^2
    # + s*||w_g|| exactly, with d = (sqrt(sum) + eps)/lr and u = w - lr*g/(sqrt(sum) + eps): checked by KKT.
    g = torch.Generator().manual_seed(10)
    w0 = torch.randn(6, 5, generator=g, dtype=f64)
    grad = torch.randn(6, 5, generator=g, dtype=f64)
    lr, l1, l2, lam, acc0 = 0.5, 0.05, 0.3, 1.0, 0.01
    w = w0.clone().requires_grad_()
    w.grad = grad.clone()
    opt = fusedreg.Adagrad([w], lr=lr, l1=l1, l2=l2, group_l1=lam, group_dim=group_dim,
                           initial_accumulator_value=acc0, backend=backend)
    opt.step()
    denom = torch.sqrt(acc0 + grad * grad) + 1e-10
    d, u = denom / lr, w0 - lr * grad / denom
    s = lam * math.sqrt(w0.numel() // w0.shape[group_dim])
    out, zero_groups = w.detach(), 0
    for i in range(w0.shape[group_dim]):
        wg, ug, dg = out.select(group_dim, i), u.select(group_dim, i), d.select(group_dim, i)
        if (wg == 0).all():
            zero_groups += 1
            soft = torch.sign(dg * ug) * torch.clamp_min((dg * ug).abs() - l1, 0)
            assert soft.norm() <= s
            continue
        nz = wg != 0
        res = dg * (wg - ug) + l1 * torch.sign(wg) + l2 * wg + s * wg / wg.norm()
        assert res[nz].abs().max() <= 1e-12
        assert ((dg * ug)[~nz].abs() <= l1).all()
    assert 0 < zero_groups < w0.shape[group_dim]


def test_group_lasso_skipped_step_changes_nothing():
    w = torch.randn(4, 3, dtype=f64)
    before = w.clone()
    st = [torch.zeros((), dtype=torch.float32)]
    F.adam([w], [torch.randn_like(w)], [torch.zeros_like(w)], [torch.zeros_like(w)], [], st, lr=0.1,
           group_l1=10.0, found_inf=torch.ones(()))
    F.sgd([w], [torch.randn_like(w)], [], lr=0.1, group_l1=10.0, found_inf=torch.ones(()))
    assert torch.equal(w, before) and st[0].item() == 0


def test_group_keys_validated_and_defaulted():
    w = torch.zeros(3, 3, requires_grad=True)
    for bad in (dict(group_l1=-1.0), dict(group_dim=2), dict(group_dim=-1), dict(group_dim=True)):
        with pytest.raises(ValueError):
            fusedreg.Adam([w], **bad)
    opt = fusedreg.SGD([w], lr=0.1)
    assert opt.param_groups[0]["group_l1"] == 0.0 and opt.param_groups[0]["group_dim"] == 0
    # A state_dict saved without the keys (before they existed, or torch.optim's) keeps the values the loading
    # optimizer was built with (issue #17: a torch checkpoint must not switch the penalties off).
    sd = opt.state_dict()
    for g in sd["param_groups"]:
        del g["group_l1"], g["group_dim"]
    opt2 = fusedreg.SGD([w], lr=0.1, group_l1=1.0, group_dim=1)
    opt2.load_state_dict(sd)
    w.grad = torch.ones_like(w)
    opt2.step()
    assert opt2.param_groups[0]["group_l1"] == 1.0 and opt2.param_groups[0]["group_dim"] == 1


# --------------------------------------------------------------------------------------------- L0, nonneg

def test_l0_hard_threshold_and_nonneg(backend):
    # lr = 0.5, l0 = 1: zero where |v| <= sqrt(2*0.5*1) = 1, the boundary included; nonneg: max(v, 0).
    v = torch.tensor([1.0, -1.0, 1.0 + 1e-12, -1.5, 0.3, 2.0], dtype=f64)
    w = v.clone().requires_grad_()
    w.grad = torch.zeros_like(w)
    fusedreg.SGD([w], lr=0.5, l0=1.0, backend=backend).step()
    assert torch.equal(w.detach(), torch.tensor([0.0, 0.0, 1.0 + 1e-12, -1.5, 0.0, 2.0], dtype=f64))
    w = v.clone().requires_grad_()
    w.grad = torch.zeros_like(w)
    fusedreg.SGD([w], lr=0.5, nonneg=True, backend=backend).step()
    assert torch.equal(w.detach(), torch.clamp_min(v, 0))


# ------------------------------------------------------------------------------------------------ Adagrad

def _tf_proximal_adagrad(w, grads, lr, l1, l2, init_acc, dtype):
    """tensorflow/core/kernels/training_ops.cc ApplyProximalAdagrad, in numpy:
    acc += g^2; eta = lr*rsqrt(acc); v = w - eta*g; w = sign(v)*max(|v| - eta*l1, 0)/(1 + eta*l2)."""
    w = w.astype(dtype)
    acc = np.full_like(w, init_acc)
    lr, l1, l2 = dtype(lr), dtype(l1), dtype(l2)
    for g in grads:
        g = g.astype(dtype)
        acc = acc + g * g
        eta = lr * (dtype(1) / np.sqrt(acc))
        v = w - eta * g
        if l1 > 0:
            w = np.sign(v) * np.maximum(np.abs(v) - eta * l1, dtype(0)) / (dtype(1) + eta * l2)
        else:
            w = v / (dtype(1) + eta * l2)
    return w, acc


@pytest.mark.parametrize("l1,l2", [(0.0, 0.0), (0.05, 0.0), (0.0, 0.1), (0.05, 0.1), (0.5, 1.0)])
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_adagrad_matches_tensorflow_proximal_adagrad(l1, l2, dtype, backend):
    g = torch.Generator().manual_seed(4)
    w0 = torch.randn(6, 7, generator=g, dtype=f64)
    grads = [torch.randn(6, 7, generator=g, dtype=f64) for _ in range(12)]
    lr, init_acc = 0.1, 0.1
    npd = np.float64 if dtype == f64 else np.float32
    expected, acc = _tf_proximal_adagrad(w0.numpy(), [x.numpy() for x in grads], lr, l1, l2, init_acc, npd)
    w = w0.to(dtype).requires_grad_()
    opt = fusedreg.Adagrad([w], lr=lr, l1=l1, l2=l2, initial_accumulator_value=init_acc, eps=0.0, backend=backend)
    for x in grads:
        w.grad = x.to(dtype)
        opt.step()
    tol = TRAJECTORY[dtype]
    assert rel_err(w.detach(), torch.from_numpy(expected)) <= tol
    assert rel_err(opt.state[w]["sum"], torch.from_numpy(acc)) <= tol
    if l1 > 0:
        assert torch.equal(w.detach() == 0, torch.from_numpy(expected == 0))


ADAGRAD_CONFIGS = [dict(lr=0.1), dict(lr=0.1, lr_decay=0.05), dict(lr=0.05, initial_accumulator_value=0.3),
                   dict(lr=0.1, eps=1e-3, weight_decay=0.02),
                   dict(lr=0.1, maximize=True, lr_decay=0.01, initial_accumulator_value=0.1)]


@pytest.mark.parametrize("cfg", ADAGRAD_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_adagrad_matches_torch_at_zero_penalties(cfg, dtype, backend):
    g = torch.Generator().manual_seed(5)
    a = torch.randn(5, 4, generator=g, dtype=dtype).requires_grad_()
    b = a.detach().clone().requires_grad_()
    ours = fusedreg.Adagrad([a], backend=backend, **cfg)
    ref = torch.optim.Adagrad([b], **cfg)
    for _ in range(20):
        grad = torch.randn(5, 4, generator=g, dtype=dtype)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    assert rel_err(a.detach(), b.detach()) <= TRAJECTORY[dtype]
    assert rel_err(ours.state[a]["sum"], ref.state[b]["sum"]) <= TRAJECTORY[dtype]
    assert ours.state[a]["step"].item() == ref.state[b]["step"].item() == 20


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW"])
def test_other_optimizers_match_torch_with_penalty_keys_at_zero(name):
    # The new keys at 0 leave torch.optim's math untouched.
    cfg = dict(SGD=dict(lr=0.05, momentum=0.9, weight_decay=0.01), Adam=dict(lr=0.01, weight_decay=0.01),
               AdamW=dict(lr=0.01, weight_decay=0.05))[name]
    a = torch.randn(6, 5, dtype=f64, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    ours = getattr(fusedreg, name)([a], group_l1=0.0, group_dim=1, l1=0.0, l0=0.0, **cfg)
    ref = getattr(torch.optim, name)([b], **cfg)
    for _ in range(20):
        grad = torch.randn(6, 5, dtype=f64)
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    assert rel_err(a.detach(), b.detach()) <= TRAJECTORY[f64]


# ---------------------------------------------------------------------- every penalty x backend vs reference

PENALTY_CONFIGS = {
    "l1": dict(l1=0.02),
    "l1_subgradient": dict(l1=0.02, l1_mode="subgradient"),
    "elastic_net": fusedreg.elastic_net(0.04, 0.5),
    "group_rows": dict(group_l1=2.0, group_dim=0),
    "group_cols": dict(group_l1=2.0, group_dim=1),
    "sparse_group": dict(l1=0.01, group_l1=0.1, group_dim=1),
    "nonneg": dict(nonneg=True),
    "nonneg_lasso": dict(nonneg=True, l1=0.02),
    "l0": dict(l0=1e-3),
    "everything": dict(l1=0.01, weight_decay=0.01, l0=1e-4, nonneg=True, group_l1=0.03, group_dim=0),
}
OPTIMIZERS = {
    "SGD": dict(lr=0.2, momentum=0.9),
    "Adam": dict(lr=0.02),
    "AdamW": dict(lr=0.02, weight_decay=0.05),
    "Adagrad": dict(lr=0.1, l2=0.05, initial_accumulator_value=0.1),
}


@pytest.mark.parametrize("penalty", list(PENALTY_CONFIGS))
@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_every_penalty_matches_reference(penalty, name, dtype, backend):
    torch.manual_seed(6)
    params = [torch.randn(8, 6, dtype=dtype), torch.randn(6, dtype=dtype), torch.randn(3, 4, 5, dtype=dtype)]
    grads = [[torch.randn_like(p) for p in params] for _ in range(8)]
    cfg = {**OPTIMIZERS[name], **PENALTY_CONFIGS[penalty]}
    if name == "AdamW" and "weight_decay" in PENALTY_CONFIGS[penalty]:
        cfg["weight_decay"] = PENALTY_CONFIGS[penalty]["weight_decay"]
    runs = {}
    for b in dict.fromkeys([backend, "torch"]):
        ps = [p.clone().requires_grad_() for p in params]
        opt = getattr(fusedreg, name)(ps, backend=b, **cfg)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        runs[b] = (ps, opt)
    (ps, opt), (qs, ref) = runs[backend], runs["torch"]
    for p, q in zip(ps, qs):
        assert rel_err(p.detach(), q.detach()) <= TRAJECTORY[dtype]
        for key, value in opt.state[p].items():
            assert rel_err(value, ref.state[q][key]) <= TRAJECTORY[dtype], key
    if penalty.startswith("group") and name == "SGD":
        # Large steps over noise: some whole groups are zero (so the zero patterns were compared too).
        w = ps[0].detach()
        assert (w == 0).all(dim=1 - PENALTY_CONFIGS[penalty]["group_dim"]).any()


# ----------------------------------------------------------------------------------------- penalty value

def _plain_penalty(tensors, l1=0.0, weight_decay=0.0, group_l1=0.0, group_dim=0, l2=0.0, l0=0.0):
    total = 0.0
    for t in tensors:
        t = t.detach().double()
        total += l1 * t.abs().sum().item() + 0.5 * (weight_decay + l2) * (t * t).sum().item()
        total += l0 * (t != 0).sum().item()
        if t.dim() >= 2 and group_l1:
            for i in range(t.shape[group_dim]):
                g = t.select(group_dim, i)
                total += group_l1 * math.sqrt(g.numel()) * g.norm().item()
    return total


def _model():
    torch.manual_seed(7)
    m = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.ReLU(), nn.Conv1d(5, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        m[0].weight[2] = 0          # a pruned output neuron
        m[0].weight[:, 4] = 0       # a pruned input feature
        m[3].weight[:, 1] = 0       # a pruned input channel (a column of a 3-D weight)
        m[5].bias.zero_()
    return m


@pytest.mark.parametrize("kw", [dict(l1=0.1), dict(weight_decay=0.3), dict(group_l1=0.2),
                                dict(group_l1=0.2, group_dim=1),
                                dict(l1=0.1, weight_decay=0.3, group_l1=0.2, group_dim=1, l2=0.05, l0=0.01)])
def test_penalty_matches_plain_torch(kw):
    m = _model()
    value = fusedreg.penalty(m, **kw)
    assert value.dim() == 0 and value.dtype == torch.float32  # the params' dtype: loss + penalty stays fp32
    # A module is penalized as param_groups places it: no biases or norm weights, no group lasso on the output
    # layer's rows (here the last Linear's).
    weights = [m[0].weight, m[3].weight]
    expected = _plain_penalty(weights, **kw)
    if kw.get("group_l1") and not kw.get("group_dim"):
        expected += _plain_penalty([m[5].weight], **dict(kw, group_l1=0.0))
    else:
        weights.append(m[5].weight)
        expected = _plain_penalty(weights, **kw)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert fusedreg.penalty(m.double(), **kw).item() == pytest.approx(expected, rel=1e-12)
    # iterables of tensors: every tensor, biases included; the widest dtype
    ts = [torch.randn(4, 3), torch.randn(7, dtype=f64), torch.zeros(0, 3)]
    assert fusedreg.penalty(ts, **kw).dtype == f64
    assert fusedreg.penalty(ts, **kw).item() == pytest.approx(_plain_penalty(ts, **kw), rel=1e-12)
    assert fusedreg.penalty(ts[:1], **kw).dtype == torch.float32


def test_penalty_of_a_complex_param_is_the_modulus():
    z = torch.randn(5, 3, dtype=torch.complex64)
    value = fusedreg.penalty([z], l1=0.5, weight_decay=0.2)
    assert value.dtype == torch.float32
    expected = 0.5 * z.abs().double().sum() + 0.1 * (z.abs().double() ** 2).sum()
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)


def test_penalty_of_optimizer_uses_each_groups_keys():
    m = _model().double()
    groups = fusedreg.param_groups(m, l1=0.1, weight_decay=0.2, group_l1=0.3, group_dim=1)
    opt = fusedreg.SGD(groups, lr=0.1)
    expected = _plain_penalty(groups[0]["params"], l1=0.1, weight_decay=0.2, group_l1=0.3, group_dim=1)
    assert fusedreg.penalty(opt).item() == pytest.approx(expected, rel=1e-12)
    # keywords with an optimizer: every param it holds, biases too
    assert fusedreg.penalty(opt, l1=1.0).item() == pytest.approx(_plain_penalty(m.parameters(), l1=1.0), rel=1e-12)
    assert fusedreg.penalty([]).item() == 0.0
    with pytest.raises(ValueError):
        fusedreg.penalty(m, l1=-1.0)


def test_penalty_of_ftrl_counts_its_l2_as_tensorflow_does():
    # FTRL's l2 is l2*sum(w^2) (TensorFlow's l2_regularization_strength), its shrinkage l2_shrinkage*sum(w^2)
    m = _model()
    m = m.double()
    opt = fusedreg.Ftrl(m.parameters(), lr=0.1, l1=0.1, l2=0.2, l2_shrinkage=0.05)
    w = torch.cat([p.detach().double().flatten() for p in m.parameters()])
    expected = 0.1 * w.abs().sum() + (0.2 + 0.05) * (w * w).sum()
    assert fusedreg.penalty(opt).item() == pytest.approx(expected.item(), rel=1e-12)
    # and its group lasso as every class's: group_l1 * sqrt(|g|) * ||w_g|| over the columns of each param of dim >= 2
    opt = fusedreg.Ftrl(m.parameters(), lr=0.1, l1=0.1, l2=0.2, l2_shrinkage=0.05, group_l1=0.3, group_dim=1)
    cols = [p.detach().double().transpose(0, 1).flatten(1) for p in m.parameters() if p.dim() >= 2]
    group = sum(0.3 * c.shape[1] ** 0.5 * c.norm(dim=1).sum() for c in cols)
    assert fusedreg.penalty(opt).item() == pytest.approx((expected + group).item(), rel=1e-12)


# ---------------------------------------------------------------------------------------------- sparsity

def test_sparsity_matches_plain_torch():
    m = _model()
    sp = fusedreg.sparsity(m)
    named = dict(m.named_parameters())
    assert [r.name for r in sp.rows] == list(named)
    total = zeros = 0
    for r in sp.rows:
        t = named[r.name].detach()
        assert r.shape == tuple(t.shape) and r.numel == t.numel()
        assert r.zeros == int((t == 0).sum()) and r.fraction == pytest.approx(r.zeros / t.numel())
        if t.dim() >= 2:
            assert r.zero_rows == sum(bool((t[i] == 0).all()) for i in range(t.shape[0]))
            assert r.zero_cols == sum(bool((t[:, j] == 0).all()) for j in range(t.shape[1]))
            assert (r.n_rows, r.n_cols) == tuple(t.shape[:2])
        else:
            assert r.zero_rows is None and r.zero_cols is None
        total += t.numel()
        zeros += int((t == 0).sum())
    assert sp.overall == pytest.approx(zeros / total) and (sp.zeros, sp.numel) == (zeros, total)
    assert (sp["0.weight"].zero_rows, sp["0.weight"].zero_cols) == (1, 1)
    assert (sp["3.weight"].zero_rows, sp["3.weight"].zero_cols) == (0, 1)
    assert sp["5.bias"].fraction == 1.0
    text = str(sp)
    lines = text.splitlines()
    assert "zero rows" in lines[0] and "zero cols" in lines[0] and lines[-1].startswith("total")
    assert len(lines) == len(sp.rows) + 4 and "0.weight" in text and "1/5" in text and repr(sp) == text
    assert len({len(line) for line in lines[:3]}) <= 2  # aligned columns


def test_sparsity_of_tensors_and_empty():
    sp = fusedreg.sparsity([torch.zeros(3, 2), torch.tensor([0.0, 1.0]), torch.zeros(0, 4)])
    assert [r.name for r in sp] == ["p0", "p1", "p2"]
    assert sp[0].fraction == 1.0 and sp[0].zero_rows == 3 and sp[0].zero_cols == 2
    assert sp[1].zeros == 1 and sp[2].fraction == 0.0 and sp[2].zero_rows == 0
    assert sp.overall == pytest.approx(7 / 8)
    assert fusedreg.sparsity([]).overall == 0.0
    assert fusedreg.sparsity({"w": torch.zeros(2, 2)})["w"].zeros == 4
    str(fusedreg.sparsity([]))


def test_group_lasso_training_prunes_neurons_and_features():
    # Group lasso on the rows of the first layer prunes whole hidden neurons, on the columns whole inputs.
    torch.manual_seed(8)
    X = torch.randn(256, 10)
    y = X[:, :2].sum(1, keepdim=True)
    for group_dim in (0, 1):
        m = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 1))
        groups = fusedreg.param_groups(m, no_penalty=("bias", lambda name, p: name.startswith("2.")),
                                       group_l1=0.02, group_dim=group_dim)
        opt = fusedreg.Adam(groups, lr=0.05)
        for _ in range(80):
            opt.zero_grad()
            loss = nn.functional.mse_loss(m(X), y)
            loss.backward()
            opt.step()
        assert loss.item() < 0.05
        r = fusedreg.sparsity(m)["0.weight"]
        pruned = r.zero_rows if group_dim == 0 else r.zero_cols
        assert pruned >= 4
        assert r.zeros == pruned * (10 if group_dim == 0 else 16)  # zeros only as whole groups
        if group_dim == 1:  # exactly the 8 irrelevant inputs are pruned
            assert torch.equal((m[0].weight == 0).all(0), torch.arange(10) >= 2)
        assert fusedreg.sparsity(m)["2.weight"].zeros == 0


# ---------------------------------------------------------------------------------------------- param_groups

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.fc = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3, bias=False)
        self.scale = nn.Parameter(torch.ones(3))
        self.tied = self.head.weight  # a shared param is listed once


def _ids(ps):
    return {id(p) for p in ps}


def test_param_groups_default_excludes_biases_and_norms():
    net = _Net()
    groups = fusedreg.param_groups(net, l1=1e-3, weight_decay=0.1, group_l1=0.01, group_dim=1, lr=0.5)
    pen, free = groups
    assert _ids(pen["params"]) == _ids([net.emb.weight, net.fc.weight, net.head.weight, net.scale])
    assert _ids(free["params"]) == _ids([net.fc.bias, net.bn.weight, net.bn.bias, net.ln.weight, net.ln.bias])
    assert (pen["l1"], pen["weight_decay"], pen["group_l1"], pen["group_dim"], pen["lr"]) == (1e-3, 0.1, 0.01, 1, 0.5)
    assert (free["l1"], free["weight_decay"], free["group_l1"], free["l0"], free["nonneg"]) == (0, 0, 0, 0, False)
    assert free["lr"] == 0.5 and free["group_dim"] == 1
    assert len(pen["params"]) + len(free["params"]) == len(list(net.parameters()))
    # AdamW's default decay does not reach the unpenalized group.
    opt = fusedreg.AdamW(groups)
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[0]["weight_decay"] == 0.1


def test_param_groups_rules():
    net = _Net()
    pen, free = fusedreg.param_groups(net, no_penalty=("bias", "norm", "embedding", "1d"), l1=0.1)
    assert _ids(pen["params"]) == _ids([net.fc.weight, net.head.weight])
    assert _ids([net.emb.weight, net.scale]) <= _ids(free["params"])
    pen, free = fusedreg.param_groups(net, no_penalty=(nn.Linear,), l2=0.1)
    # head.weight is also the root's `tied`: a match under either name exempts it
    assert _ids(free["params"]) == _ids([net.fc.weight, net.fc.bias, net.head.weight]) and free["l2"] == 0.0
    assert "l2" in pen and pen["l2"] == 0.1
    (only,) = fusedreg.param_groups(net, no_penalty=(), l1=0.1)
    assert len(only["params"]) == len(list(net.parameters()))
    (only,) = fusedreg.param_groups(net, no_penalty=lambda name, p: True, l1=0.1)
    assert only["l1"] == 0.0
    with pytest.raises(TypeError):
        fusedreg.param_groups(net, no_penalty=(3,))


def test_param_groups_leave_biases_unpenalized_in_training():
    torch.manual_seed(9)
    m = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4))
    before = copy.deepcopy(m)
    opt = fusedreg.SGD(fusedreg.param_groups(m, l1=10.0, weight_decay=1.0, group_l1=10.0), lr=0.1)
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert (m[0].weight == 0).all()  # a huge penalty wipes the weight matrix...
    for name in ("0.bias", "1.weight", "1.bias"):  # ...and nothing else
        assert torch.equal(dict(m.named_parameters())[name], dict(before.named_parameters())[name])


def _mlp():
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 3))


def test_param_groups_leave_the_output_rows_out_of_group_lasso():
    m = _mlp()
    assert fusedreg.penalties.last_layer(m) is m[5]
    pen, head, free = fusedreg.param_groups(m, l1=1e-3, group_l1=1e-2, lr=0.1)
    assert _ids(pen["params"]) == _ids([m[0].weight, m[2].weight])
    assert _ids(head["params"]) == _ids([m[5].weight])  # the classes: every penalty but group lasso
    assert (head["l1"], head["group_l1"], head["lr"], pen["group_l1"]) == (1e-3, 0.0, 0.1, 1e-2)
    assert _ids(free["params"]) == _ids([m[0].bias, m[2].bias, m[3].weight, m[3].bias, m[5].bias])
    # Columns of the output layer are the last hidden layer's neurons: group lasso may prune them.
    pen, free = fusedreg.param_groups(m, group_l1=1e-2, group_dim=1)
    assert _ids(pen["params"]) == _ids([m[0].weight, m[2].weight, m[5].weight])
    # Without group_l1 there is no group to leave out.
    assert len(fusedreg.param_groups(m, l1=1e-3)) == 2
    # A single layer is its own output and its only layer: group lasso stays on it.
    lin = nn.Linear(4, 3)
    assert fusedreg.penalties.last_layer(lin) is None
    assert _ids(fusedreg.param_groups(lin, group_l1=1.0)[0]["params"]) == {id(lin.weight)}
    # include= puts it back; no_group=() turns the rule off
    pen, free = fusedreg.param_groups(m, group_l1=1e-2, include="5.weight")
    assert id(m[5].weight) in _ids(pen["params"]) and id(m[5].bias) in _ids(free["params"])
    assert len(fusedreg.param_groups(m, group_l1=1e-2, no_group=())) == 2


def test_param_groups_exclude_and_include_by_name_pattern_and_module():
    m = _mlp()
    # exclude adds to the defaults (biases and norms stay unpenalized); a module name covers its params
    pen, free = fusedreg.param_groups(m, l1=0.1, exclude="0")
    assert _ids(pen["params"]) == _ids([m[2].weight, m[5].weight])
    assert _ids([m[0].weight, m[0].bias, m[3].weight]) <= _ids(free["params"])
    # globs over the full name, module instances and types
    for rule in ("[02].weight", m[2], nn.LayerNorm):
        pen, free = fusedreg.param_groups(m, l1=0.1, no_penalty=(), include=(), exclude=rule)
        left = {"[02].weight": [m[0].weight, m[2].weight], 2: [m[2].weight, m[2].bias]}
        want = left.get(rule if isinstance(rule, str) else 2 if rule is m[2] else None, [m[3].weight, m[3].bias])
        assert _ids(free["params"]) == _ids(want), rule
    # include wins over no_penalty and exclude: penalize the biases too
    pen, free = fusedreg.param_groups(m, l1=0.1, include="bias")
    assert _ids(free["params"]) == {id(m[3].weight)} and id(m[0].bias) in _ids(pen["params"])  # a norm's bias too
    pen, free = fusedreg.param_groups(m, l1=0.1, exclude="*", include=m[5])
    assert _ids(pen["params"]) == _ids([m[5].weight, m[5].bias])
    with pytest.raises(TypeError):
        fusedreg.param_groups(m, l1=0.1, include=(3.0,))


def test_penalty_of_a_module_skips_biases_and_norms():
    m = _mlp()
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(1.0)
    weights = 8 * 6 + 6 * 5 + 5 * 3
    assert fusedreg.penalty(m, l1=1.0).item() == weights
    assert fusedreg.penalty(list(m.parameters()), l1=1.0).item() == sum(p.numel() for p in m.parameters())


def test_lambda_max_overall_counts_only_what_the_optimizer_penalizes():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        m[2].bias.copy_(torch.tensor([6.0, 0.0, -6.0]))  # a confident wrong prior: the bias gradient is the largest
    x, t = torch.randn(32, 6) * 0.1, torch.full((32,), 2)
    loss = nn.functional.cross_entropy(m(x), t)
    grads = dict(zip([n for n, _ in m.named_parameters()], torch.autograd.grad(loss, list(m.parameters()),
                                                                               retain_graph=True)))
    biggest = max(grads, key=lambda n: float(grads[n].abs().max()))
    assert biggest.endswith("bias")
    weights = max(float(grads[n].abs().max()) for n in ("0.weight", "2.weight"))
    opt = fusedreg.Adam(fusedreg.param_groups(m, l1=1e-3), lr=1e-3)
    report = fusedreg.lambda_max(m, loss, optimizer=opt)
    assert report.overall == pytest.approx(weights)
    assert not report["2.bias"].penalized and report["0.weight"].penalized
    assert "not penalized" in str(report)
    assert fusedreg.lambda_max(m, loss).overall == pytest.approx(weights)  # a module: param_groups' defaults
    # an optimizer over every param penalizes the biases too
    everything = fusedreg.Adam(m.parameters(), lr=1e-3, l1=1e-3)
    overall = fusedreg.lambda_max(m, loss, optimizer=everything).overall
    assert overall == pytest.approx(float(grads[biggest].abs().max()))
