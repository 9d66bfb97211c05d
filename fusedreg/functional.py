"""Stateless fused steps over lists of tensors; the optimizer classes call these and hold no math.

Each call checks every input before it touches anything, groups the tensors by device and dtype, and hands each
group to one backend kernel (see fusedreg.backends). All updates are in place.
"""
import math

import torch

from . import backends

L1_MODES = ("prox", "subgradient")


def check_nonneg(name, value):
    v = float(value)
    if math.isnan(v) or v < 0:
        raise ValueError(f"Invalid {name} value: {value} (must be >= 0)")


def check_penalties(l1=0.0, l1_mode="prox", l2=0.0, l0=0.0, weight_decay=0.0):
    for name, value in (("l1", l1), ("l2", l2), ("l0", l0), ("weight_decay", weight_decay)):
        check_nonneg(name, value)
    if l1_mode not in L1_MODES:
        raise ValueError(f"Invalid l1_mode {l1_mode!r}; choose one of {L1_MODES}")


def check_tensors(params, **lists):
    """Raise before anything changes if the lists cannot be stepped together."""
    for name, ts in lists.items():
        if len(ts) != len(params):
            raise ValueError(f"{name} has {len(ts)} tensors for {len(params)} params")
    for i, p in enumerate(params):
        if p.is_complex():
            raise RuntimeError(f"param {i} is complex ({p.dtype}); fusedreg supports real floating params only")
        if not p.is_floating_point():
            raise RuntimeError(f"param {i} has dtype {p.dtype}; fusedreg needs floating-point params")
        g = lists["grads"][i]
        if g.is_sparse or g.layout != torch.strided:
            raise RuntimeError(f"param {i} has a sparse gradient; fusedreg does not support sparse gradients")
        if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
            raise RuntimeError(f"param {i}: grad {tuple(g.shape)} {g.dtype} on {g.device} does not match "
                               f"param {tuple(p.shape)} {p.dtype} on {p.device}")
        for name, ts in lists.items():
            if ts[i].device != p.device:
                raise RuntimeError(f"param {i}: {name} tensor is on {ts[i].device}, param on {p.device}")


def _run(op, backend, params, lists, scalars, grad_scale, found_inf):
    """Group by (device, dtype) and call the chosen kernel once per group."""
    groups = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    for (device, _), idx in groups.items():
        name = backends.resolve(backend, device)
        args = [[params[i] for i in idx]] + [[ts[i] for i in idx] if ts else [] for ts in lists]
        gs = None if grad_scale is None else grad_scale.to(device, non_blocking=True)
        fi = None if found_inf is None else found_inf.to(device, non_blocking=True)
        backends.kernel(name, op)(*args, *scalars, gs, fi)


def _resolve_all(backend, params):
    # Resolve every device first so an unavailable backend fails before any group is stepped.
    for device in {p.device for p in params}:
        backends.resolve(backend, device)


def sgd(params, grads, momentum_buffers, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
        maximize=False, first_step=False, l1=0.0, l1_mode="prox", l2=0.0, l0=0.0, nonneg=False,
        grad_scale=None, found_inf=None, backend="auto"):
    """One SGD step (torch.optim.SGD's math) with fused penalties. momentum_buffers: [] when momentum == 0."""
    check_nonneg("lr", lr)
    check_nonneg("momentum", momentum)
    check_nonneg("dampening", dampening)
    check_penalties(l1, l1_mode, l2, l0, weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    lists = dict(grads=grads, momentum_buffers=momentum_buffers) if momentum != 0 else dict(grads=grads)
    check_tensors(params, **lists)
    _resolve_all(backend, params)
    _run("sgd_", backend, params, [grads, momentum_buffers if momentum != 0 else []],
         [float(lr), float(momentum), float(dampening), float(weight_decay), bool(nesterov), bool(maximize),
          bool(first_step), float(l1), l1_mode == "subgradient", float(l2), float(l0), bool(nonneg)],
         grad_scale, found_inf)


def adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr, beta1=0.9, beta2=0.999,
         eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False, maximize=False, l1=0.0, l1_mode="prox",
         l2=0.0, l0=0.0, nonneg=False, grad_scale=None, found_inf=None, backend="auto"):
    """One Adam (decoupled=False) or AdamW (decoupled=True) step with fused penalties; advances state_steps."""
    check_nonneg("lr", lr)
    check_nonneg("eps", eps)
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid {name} value: {b} (must be in [0, 1))")
    check_penalties(l1, l1_mode, l2, l0, weight_decay)
    lists = dict(grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, state_steps=state_steps)
    if amsgrad:
        lists["max_exp_avg_sqs"] = max_exp_avg_sqs
    check_tensors(params, **lists)
    _resolve_all(backend, params)
    _run("adam_", backend, params, [grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else [], state_steps],
         [float(lr), float(beta1), float(beta2), float(eps), float(weight_decay), bool(decoupled), bool(amsgrad),
          bool(maximize), float(l1), l1_mode == "subgradient", float(l2), float(l0), bool(nonneg)],
         grad_scale, found_inf)


def adagrad(params, grads, state_sums, state_steps, *, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
            maximize=False, l1=0.0, l1_mode="prox", l2=0.0, l0=0.0, nonneg=False, grad_scale=None,
            found_inf=None, backend="auto"):
    """One Adagrad step (torch.optim.Adagrad's math) with fused penalties; l2 is TF's proximal l2."""
    check_nonneg("lr", lr)
    check_nonneg("lr_decay", lr_decay)
    check_nonneg("eps", eps)
    check_penalties(l1, l1_mode, l2, l0, weight_decay)
    check_tensors(params, grads=grads, state_sums=state_sums, state_steps=state_steps)
    _resolve_all(backend, params)
    _run("adagrad_", backend, params, [grads, state_sums, state_steps],
         [float(lr), float(lr_decay), float(weight_decay), float(eps), bool(maximize), float(l1),
          l1_mode == "subgradient", float(l2), float(l0), bool(nonneg)],
         grad_scale, found_inf)
