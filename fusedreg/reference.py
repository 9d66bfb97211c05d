"""The "torch" backend: pure PyTorch, any device, and the oracle every native kernel is tested against.

Each tensor is lifted to opmath (fp64 for fp64 params, else fp32), updated out of place in torch.optim's order,
and written back once. Scalar factors are formed in double on the host and rounded to opmath once, the same
way the native kernels form them, so the exact-zero patterns agree at the threshold.
"""
import contextlib
import math

import torch

from . import _ops


# The metric group prox's Newton solve (group_prox): at most this many steps, stopping once a step moves the
# norm by no more than this relative amount (the Triton kernel uses these; csrc/fusedreg_math.h has C++'s).
NEWTON_MAX_ITER = 100
NEWTON_RTOL = 4 * torch.finfo(torch.float64).eps


def opmath(dtype):
    if dtype.is_complex:  # complex params keep complex state (as torch.optim does); the kernels see it as real
        return torch.complex128 if dtype == torch.complex128 else torch.complex64
    return torch.float64 if dtype == torch.float64 else torch.float32


def _skip(found_inf):
    return found_inf is not None and bool(found_inf.item())


def _grad(p, g, grad_scale, maximize, weight_decay, l1=0.0, l1_subgradient=False, **_):
    """The gradient after AMP unscaling, maximize, subgradient L1 and coupled weight decay (the elementwise
    penalties come as keywords, those other than l1 unused here)."""
    g = g.to(p.dtype)
    if grad_scale is not None:
        g = g / grad_scale.to(device=g.device, dtype=g.dtype)
    if maximize:
        g = -g
    if l1 != 0 and l1_subgradient:
        g = g + l1 * torch.sign(p)
    if weight_decay != 0:
        g = g + weight_decay * p
    return g


def prox(v, step, denom, l1=0.0, l1_subgradient=False, l1_decoupled=False, l2=0.0, l0=0.0, nonneg=False):
    """The elementwise penalties (fusedreg._ops.ELEMENTWISE) on v with per-element step step/denom (denom is 1 for
    SGD): soft-threshold (l1_decoupled: by step*l1, the scalar step alone), proximal l2, hard threshold,
    projection on w >= 0."""
    dt = v.dtype
    if l1 != 0 and not l1_subgradient:
        thr = _scalar(step * l1, dt)
        if not l1_decoupled:
            thr = thr / denom
        v = torch.sign(v) * torch.clamp_min(v.abs() - thr, 0)
    if l2 != 0:
        v = v / (1 + _scalar(step * l2, dt) / denom)
    if l0 != 0:
        v = torch.where(v.abs() <= torch.sqrt(_scalar(2 * step * l0, dt) / denom), torch.zeros_like(v), v)
    if nonneg:
        v = torch.clamp_min(v, 0)
    return v


def _scalar(x, dtype):
    # Round a host double to opmath once, as a 0-dim tensor so torch does not re-promote it.
    return torch.tensor(x, dtype=dtype)


def _group(param, step, denom, group_l1, group_dim, l2, l1_decoupled=False):
    """The group prox on a param the op has just written (so bf16/fp16 params are rounded before it, as in the
    native kernels, which scale the stored value): rows or columns of params with dim >= 2. l1_decoupled (Adam,
    Adagrad): the closed form with the scalar step, no metric and no l2 term."""
    if l1_decoupled and denom is not None:
        denom, l2 = None, 0.0
    if group_l1 != 0 and param.dim() >= 2:
        dt = opmath(param.dtype)
        param.copy_(group_prox(param.to(dt), step, group_l1, group_dim, denom, l2))


def op_lr(lr, lr_tensor):
    """The lr an op steps with: lr_tensor's value when given (it replaces the float lr; read on the host here)."""
    return lr if lr_tensor is None else float(lr_tensor.item())


def check_group_dim(group_dim):
    # Every backend checks this before it changes anything (the native kernels in stage()).
    if group_dim not in (0, 1):
        raise RuntimeError(f"fusedreg: group_dim must be 0 (rows) or 1 (columns), got {group_dim}")


def check_rows(op, params, grads, rows, group_l1):
    """Sparse grads (rows): the contract (fusedreg._ops.check), then the indices' values, before anything
    changes."""
    if rows:
        _ops.check_rows(op, params, grads, rows, group_l1)
        _ops.rows_ok(op, params, rows)


@contextlib.contextmanager
def gathered(rows, i, *tensors):
    """The rows rows[i] of each tensor (None stays None) as copies the step updates in place, scattered back
    after it: a sparse step is the dense one on the gathered rows. Without rows, the tensors themselves."""
    if not rows:
        yield tensors
        return
    r = rows[i]
    parts = [None if t is None else t.index_select(0, r) for t in tensors]
    yield parts
    for t, part in zip(tensors, parts):
        if t is not None:
            t.index_copy_(0, r, part)


# Each op takes fusedreg._ops.ARGS[op] by keyword, the elementwise penalties as **pen (for prox).

def sgd_(params, grads, momentum_buffers, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
         maximize=False, first_step=False, group_l1=0.0, group_dim=0, grad_scale=None, found_inf=None,
         lr_tensor=None, rows=None, **pen):
    check_group_dim(group_dim)
    check_rows("sgd_", params, grads, rows, group_l1)
    lr = op_lr(lr, lr_tensor)
    if _skip(found_inf):
        return
    for i, grad in enumerate(grads):
        with gathered(rows, i, params[i], momentum_buffers[i] if momentum != 0 else None) as (param, buf):
            dt = opmath(param.dtype)
            p = param.to(dt)
            g = _grad(p, grad.to(dt), grad_scale, maximize, weight_decay, **pen)
            if momentum != 0:
                b = g if first_step else buf.to(dt) * _scalar(momentum, dt) + _scalar(1 - dampening, dt) * g
                buf.copy_(b)
                g = g + _scalar(momentum, dt) * b if nesterov else b
            p = p - _scalar(lr, dt) * g
            param.copy_(prox(p, lr, 1, **pen))
            _group(param, lr, None, group_l1, group_dim, pen.get("l2", 0.0))


def adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, lr, beta1=0.9, beta2=0.999,
          eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False, maximize=False, group_l1=0.0, group_dim=0,
          grad_scale=None, found_inf=None, lr_tensor=None, **pen):
    check_group_dim(group_dim)
    lr = op_lr(lr, lr_tensor)
    if _skip(found_inf):
        return
    for i, (param, grad) in enumerate(zip(params, grads)):
        dt = opmath(param.dtype)
        p = param.to(dt)
        g = _grad(p, grad.to(dt), grad_scale, maximize, 0 if decoupled else weight_decay, **pen)
        if decoupled and weight_decay != 0:
            p = p * _scalar(1 - lr * weight_decay, dt)
        state_steps[i].add_(1)
        step = float(state_steps[i].item())
        m = torch.lerp(exp_avgs[i].to(dt), g, _scalar(1 - beta1, dt))
        v = exp_avg_sqs[i].to(dt) * _scalar(beta2, dt) + _scalar(1 - beta2, dt) * g * g
        exp_avgs[i].copy_(m)
        exp_avg_sqs[i].copy_(v)
        if amsgrad:
            v = torch.maximum(max_exp_avg_sqs[i].to(dt), v)
            max_exp_avg_sqs[i].copy_(v)
        bc1 = 1 - beta1 ** step
        bc2_sqrt = math.sqrt(1 - beta2 ** step)
        denom = torch.sqrt(v) / _scalar(bc2_sqrt, dt) + _scalar(eps, dt)
        p = p - _scalar(lr / bc1, dt) * (m / denom)
        param.copy_(prox(p, lr, denom, **pen))
        _group(param, lr, denom, group_l1, group_dim, pen.get("l2", 0.0), pen.get("l1_decoupled", False))


def adagrad_(params, grads, state_sums, state_steps, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
             maximize=False, group_l1=0.0, group_dim=0, grad_scale=None, found_inf=None, lr_tensor=None, rows=None,
             **pen):
    check_group_dim(group_dim)
    check_rows("adagrad_", params, grads, rows, group_l1)
    lr = op_lr(lr, lr_tensor)
    if _skip(found_inf):
        return
    for i, grad in enumerate(grads):
        state_steps[i].add_(1)
        clr = lr / (1 + (float(state_steps[i].item()) - 1) * lr_decay)
        with gathered(rows, i, params[i], state_sums[i]) as (param, state_sum):
            dt = opmath(param.dtype)
            p = param.to(dt)
            g = _grad(p, grad.to(dt), grad_scale, maximize, weight_decay, **pen)
            s = state_sum.to(dt) + g * g
            state_sum.copy_(s)
            denom = torch.sqrt(s) + _scalar(eps, dt)
            p = p - _scalar(clr, dt) * (g / denom)
            param.copy_(prox(p, clr, denom, **pen))
            _group(param, clr, denom, group_l1, group_dim, pen.get("l2", 0.0), pen.get("l1_decoupled", False))


def lion_(params, grads, exp_avgs, lr, beta1=0.9, beta2=0.99, weight_decay=0.0, maximize=False, group_l1=0.0,
          group_dim=0, grad_scale=None, found_inf=None, lr_tensor=None, **pen):
    """Lion as lion-pytorch's update_fn, in its order: p *= 1 - lr*wd; c = beta1*m + (1-beta1)*g;
    p -= lr*sign(c); m = beta2*m + (1-beta2)*g; then the penalties and the group prox with step lr, as SGD's."""
    check_group_dim(group_dim)
    lr = op_lr(lr, lr_tensor)
    if _skip(found_inf):
        return
    for param, grad, exp_avg in zip(params, grads, exp_avgs):
        dt = opmath(param.dtype)
        p = param.to(dt)
        g = _grad(p, grad.to(dt), grad_scale, maximize, 0, **pen)
        if weight_decay != 0:
            p = p * _scalar(1 - lr * weight_decay, dt)
        m = exp_avg.to(dt)
        c = m * _scalar(beta1, dt) + _scalar(1 - beta1, dt) * g
        p = p - _scalar(lr, dt) * torch.sign(c)
        exp_avg.copy_(m * _scalar(beta2, dt) + _scalar(1 - beta2, dt) * g)
        param.copy_(prox(p, lr, 1, **pen))
        _group(param, lr, None, group_l1, group_dim, pen.get("l2", 0.0))


def ftrl_power(n, lr_power):
    """n^(-lr_power) as every kernel forms it: sqrt for -0.5 (TensorFlow's case), 1 for 0 (0^0 = 1), else pow
    with the exponent rounded to opmath. pow runs in fp64: torch's fp32 pow rounds its vectorized body and its
    scalar tail differently, so its result would depend on the thread split."""
    if lr_power == -0.5:
        return torch.sqrt(n)
    if lr_power == 0:
        return torch.ones_like(n)
    return torch.pow(n.double(), float(_scalar(-lr_power, n.dtype))).to(n.dtype)


def ftrl_prox(pen):
    """The elementwise penalties FTRL applies after its closed form, with the element's step 1/q: all but l1 and l2,
    which the closed form has itself (so a new penalty reaches FTRL in every language, as make_ftrl clears only
    those two in C++)."""
    return {**pen, "l1": 0.0, "l2": 0.0}


def ftrl_(params, grads, accumulators, linears, lr, lr_power=-0.5, beta=0.0, l2_shrinkage=0.0, maximize=False,
          group_l1=0.0, group_dim=0, grad_scale=None, found_inf=None, lr_tensor=None, rows=None, **pen):
    """FTRL-Proximal as TensorFlow's ApplyFtrlV2 (with Keras's beta), per element:
        g_s = g + 2*l2_shrinkage*w;  n' = n + g^2;  sigma = (n'^-p - n^-p)/lr;  z += g_s - sigma*w;
        q = (beta + n'^-p)/lr + 2*l2;  w = 0 where |z| <= l1, else -(z - sign(z)*l1)/q;  n = n'
    (p = lr_power; g after unscaling, maximize and a subgradient l1, which then leaves the closed form's l1 at 0),
    then l0 and nonneg with the element's step 1/q: the exact argmin of the same per-element objective; then
    group lasso, group_l1*sqrt(|g|)*||w_g|| added to that objective: the group prox in the metric q with step 1
    (FTRL's penalties are not scaled by lr; q holds 1/lr and l2), which composed with the l1 threshold is the exact
    joint prox, as for Adam. lr = 0 changes nothing (TensorFlow needs lr > 0; torch.distributed.checkpoint makes
    state with an lr = 0 step). With rows, the same on the rows present (TensorFlow's sparse apply): the others
    and their state stay."""
    check_group_dim(group_dim)
    if pen.get("l1_decoupled"):
        raise RuntimeError("fusedreg::ftrl_: l1_decoupled is not defined for FTRL, whose l1 is its closed form's")
    check_rows("ftrl_", params, grads, rows, group_l1)
    lr = op_lr(lr, lr_tensor)
    if _skip(found_inf) or lr == 0:  # lr = 0 takes no step (FTRL divides by lr; DCP's state init steps with 0)
        return
    l1 = 0.0 if pen.get("l1_subgradient") else pen.get("l1", 0.0)
    for i, grad in enumerate(grads):
        with gathered(rows, i, params[i], accumulators[i], linears[i]) as (param, acc, linear):
            dt = opmath(param.dtype)
            p = param.to(dt)
            g = _grad(p, grad.to(dt), grad_scale, maximize, 0, **pen)
            gs = g + _scalar(2 * l2_shrinkage, dt) * p if l2_shrinkage != 0 else g
            n = acc.to(dt)
            n_new = n + g * g
            pn = ftrl_power(n_new, lr_power)
            sigma = (pn - ftrl_power(n, lr_power)) / _scalar(lr, dt)
            z = linear.to(dt) + (gs - sigma * p)
            q = (_scalar(beta, dt) + pn) / _scalar(lr, dt) + _scalar(2 * pen.get("l2", 0.0), dt)
            # The select, not the formula, makes the zeros: where q is 0 (n' = beta = l2 = 0) TensorFlow's 0 stays.
            thr = _scalar(l1, dt)
            w = torch.where(z.abs() <= thr, torch.zeros_like(z), -(torch.sign(z) * (z.abs() - thr)) / q)
            acc.copy_(n_new)
            linear.copy_(z)
            param.copy_(prox(w, 1.0, q, **ftrl_prox(pen)))
            _group(param, 1.0, q, group_l1, group_dim, 0.0)  # l2 is in q


def muon_momentum_(params, grads, momentum_buffers, updates, momentum=0.95, nesterov=True, maximize=False,
                   grad_scale=None, found_inf=None, **pen):
    """torch.optim.Muon's momentum, before its orthogonalization: buf = lerp(buf, g, 1 - momentum), and with
    nesterov the orthogonalization's input lerp(g, buf, momentum) into updates (g after unscaling, maximize and a
    subgradient l1). params are only read."""
    if _skip(found_inf):
        return
    for i, (param, grad) in enumerate(zip(params, grads)):
        dt = opmath(param.dtype)
        g = _grad(param.to(dt), grad.to(dt), grad_scale, maximize, 0, **pen)
        b = torch.lerp(momentum_buffers[i], g, _scalar(1 - momentum, dt))
        momentum_buffers[i].copy_(b)
        if nesterov:
            updates[i].copy_(torch.lerp(g, b, _scalar(momentum, dt)))


def muon_(params, grads, lr, lr_ratio=1.0, weight_decay=0.0, group_l1=0.0, group_dim=0, grad_scale=None,
          found_inf=None, lr_tensor=None, **pen):
    """torch.optim.Muon's step from the orthogonalized updates (grads): w *= 1 - lr*wd; w -= lr*lr_ratio*u (as
    torch's add_ with alpha; u = grads/grad_scale when given: the class unscales in muon_momentum_ and passes none);
    then SGD's penalties with step lr (no metric: l1's threshold is lr*l1, decoupled),
    and the closed-form group prox with step lr."""
    check_group_dim(group_dim)
    lr = op_lr(lr, lr_tensor)
    if _skip(found_inf):
        return
    for param, grad in zip(params, grads):
        dt = opmath(param.dtype)
        p = param.to(dt)
        if weight_decay != 0:
            p = p * _scalar(1 - lr * weight_decay, dt)
        u = grad.to(dt) if grad_scale is None else grad.to(dt) / grad_scale.to(device=grad.device, dtype=dt)
        p = torch.add(p, u, alpha=-(lr * lr_ratio))
        param.copy_(prox(p, lr, 1, **pen))
        _group(param, lr, None, group_l1, group_dim, pen.get("l2", 0.0))


# ----------------------------------------------------------------------------------------------------------------
# Group lasso: every op applies it after its elementwise penalties, with the same per-element step (group_prox).

def group_dims(ndim, group_dim):
    """The dims a group norm reduces over: every dim but group_dim (group_dim=0: p[i], 1: p[:, j])."""
    return tuple(d for d in range(ndim) if d != group_dim)


def group_size(shape, group_dim):
    return math.prod(shape) // shape[group_dim] if shape[group_dim] else 0


def group_prox(v, step, group_l1, group_dim, denom=None, l2=0.0, max_iter=NEWTON_MAX_ITER):
    """Group-lasso prox of v (a tensor with dim >= 2, in opmath) for the penalty group_l1 * sqrt(|g|) * ||w_g||.

    denom is None (SGD): the textbook prox with the scalar step t = step,
        w_g = v_g * max(0, 1 - t*group_l1*sqrt(|g|) / ||v_g||).
    denom is a tensor (Adam: sqrt(v_hat) + eps, Adagrad: sqrt(sum) + eps, Ftrl: q with step 1): the exact prox in
    the optimizer's own diagonal metric D = denom/step, i.e. argmin_w 1/2 (w - v)^T D (w - v) +
    group_l1*sqrt(|g|)*||w_g||, which is what the elementwise L1 threshold step*l1/denom is for L1. With
    a_i = step*group_l1*sqrt(|g|)/denom_i:
        w_g = 0                       if ||v_g / a_g|| <= 1   (one scalar test per group),
        w_i = v_i * r / (r + a_i)     otherwise, r = ||w_g|| the root of sum_i v_i^2/(r + a_i)^2 = 1,
    found by Newton on the concave increasing 1/sqrt(sum_i v_i^2/(r + a_i)^2) - 1 from the lower bound
    max(||v_g|| - max a_g, 0), so it rises monotonically to the root (exact in one step when a is constant in
    the group, where it equals the scalar-step formula above with t = step/denom).
    l2 (Adagrad's proximal l2, already applied to v by the op) makes the metric D + l2: denom -> denom + step*l2
    (and t -> t/(1 + t*l2) when denom is None), so l1 + l2 + group is the exact joint prox.
    """
    if step * group_l1 == 0 or v.numel() == 0:  # lr = 0 included: nothing to shrink (and no 0/0 on zero groups)
        return v
    dt = v.dtype
    dims = group_dims(v.dim(), group_dim)
    c = step * group_l1 * math.sqrt(group_size(v.shape, group_dim))
    if denom is None:
        c = c / (1 + step * l2)
        norm = torch.linalg.vector_norm(v, dim=dims, keepdim=True, dtype=torch.float64)
        return v * torch.clamp_min(1 - c / norm, 0).to(dt)
    # Group sums run in fp64 (a group can be a 10^5-long column), the per-element factors are rounded to opmath.
    scale = denom.to(dt) + _scalar(step * l2, dt) if l2 != 0 else denom.to(dt)
    a = (_scalar(c, dt) / scale).double()
    return v * _metric_factor(v.double(), a, dims, max_iter).to(dt)


def _metric_factor(v, a, dims, max_iter):
    """The factor w/v of the metric group prox (0 on zero groups), everything in fp64."""
    q0 = torch.linalg.vector_norm(v / a, dim=dims, keepdim=True)
    keep = q0 > 1
    vk = torch.where(keep, v, torch.zeros_like(v))  # zero groups: drop them from the root finding
    amax = torch.amax(a, dim=dims, keepdim=True)
    r = torch.clamp_min(torch.linalg.vector_norm(vk, dim=dims, keepdim=True) - amax, 0)
    v2 = vk * vk
    for _ in range(max_iter):
        inv = 1 / (r + a)
        s = torch.sum(v2 * inv * inv, dim=dims, keepdim=True)
        t = torch.sum(v2 * inv * inv * inv, dim=dims, keepdim=True)
        dr = torch.where(keep, s * (torch.sqrt(s) - 1) / t, torch.zeros_like(r))
        r = r + torch.clamp_min(dr, 0)  # monotone from the left; a negative dr is rounding at the root
        if not bool((dr > NEWTON_RTOL * r).any()):
            break
    return torch.where(keep, r / (r + a), torch.zeros_like(v))
