"""Stateless fused steps over lists of tensors; the optimizer classes call these and hold no math.

Each call checks every input before it touches anything, groups the tensors by device and dtype, and hands each
group to one backend kernel (see fusedreg.backends). All updates are in place.

Non-finite gradients: without found_inf (no GradScaler) a NaN or inf gradient propagates into its param and
state exactly as in torch.optim: nothing is skipped or zeroed, and the proximal steps keep NaN as NaN (a NaN is
never thresholded to an exact 0). With GradScaler (found_inf given and nonzero) the whole step is skipped: no
param, state or step counter changes.
"""
import math

import torch

from . import backends, reference

L1_MODES = ("prox", "subgradient")


def check_nonneg(name, value):
    if torch.is_tensor(value) and value.device.type != "cpu":
        # An lr tensor on an accelerator goes to the kernels as it is, read on the device (no host sync, so a step
        # can be captured in a CUDA graph); like torch's capturable optimizers, its value is not checked here.
        if value.numel() != 1 or not value.is_floating_point():
            raise ValueError(f"Invalid {name}: a tensor {name} must be one floating-point element, got "
                             f"{value.dtype} of shape {tuple(value.shape)}")
        return
    v = float(value)
    if math.isnan(v) or v < 0:
        raise ValueError(f"Invalid {name} value: {value} (must be >= 0)")


def check_penalties(l1=0.0, l1_mode="prox", l2=0.0, l0=0.0, weight_decay=0.0, group_l1=0.0, group_dim=0):
    for name, value in (("l1", l1), ("l2", l2), ("l0", l0), ("weight_decay", weight_decay), ("group_l1", group_l1)):
        check_nonneg(name, value)
    if l1_mode not in L1_MODES:
        raise ValueError(f"Invalid l1_mode {l1_mode!r}; choose one of {L1_MODES}")
    if isinstance(group_dim, bool) or group_dim not in (0, 1):
        raise ValueError(f"Invalid group_dim {group_dim!r}; choose 0 (rows: output neurons) or 1 (columns: inputs)")


def check_tensors(params, missing_ok=(), **lists):
    """Raise before anything changes if the lists cannot be stepped together.

    Every backend accepts exactly what passes here: real floating params with dense strided grads of the same
    shape, dtype and device; state tensors (every list but grads and state_steps) of the param's shape on its
    device in opmath (fp64 for fp64 params, else fp32: fusedreg.optim creates them so); state_steps one-element
    float32 tensors on the param's device. Non-contiguous params, grads and state are fine (a native kernel
    works on contiguous copies and writes them back). Refused: meta tensors (no data to update), tensors whose
    own elements overlap (expand()ed / stride-0 views: one element would be written several times) and a tensor
    that is updated in place appearing twice in one call (the same param twice, or state sharing a param's
    memory), which would be stepped twice. Entries of the lists named in missing_ok may be None (state the
    step itself will create).

    This runs on every optimizer step over every tensor: with the C++ extension one native pass
    (fusedreg._C.lists_ok) answers for the common case, and only lists it does not vouch for take the Python
    walk below, which is the one place the errors are worded.
    """
    states = [(name, ts) for name, ts in lists.items() if name != "grads"]
    if not _vouched(params, missing_ok, lists, states):
        _walk(params, missing_ok, lists, states)


def _vouched(params, missing_ok, lists, states):
    """Whether fusedreg._C.lists_ok vouches for the lists (False without the extension, or in any doubt)."""
    lists_ok = backends.lists_ok()
    if lists_ok is None:
        return False
    names = [name for name, _ in states]
    try:
        return lists_ok(params, lists["grads"], [ts for _, ts in states],
                        names.index("state_steps") if "state_steps" in names else -1,
                        [name in missing_ok for name in names])
    except TypeError:  # an entry that is not a tensor (or None where allowed): the walk words it
        return False


def _walk(params, missing_ok, lists, states):
    # One pass, attributes read once per tensor.
    for name, ts in lists.items():
        if len(ts) != len(params):
            raise ValueError(f"{name} has {len(ts)} tensors for {len(params)} params")
    grads = lists["grads"]
    tensor, strided = torch.Tensor, torch.strided
    written = {}

    def once(i, name, t, device):
        # Each tensor updated in place must appear once (its memory, on its device). Overlap 1 = YES (a stride-0 /
        # expand()ed view); 2 = TOO_HARD (unusual strides) is let through, like torch does.
        if not t.is_contiguous() and torch._debug_has_internal_overlap(t) == 1:
            raise RuntimeError(f"param {i}: the {name} tensor overlaps itself in memory (strides {t.stride()} "
                               f"for shape {tuple(t.shape)}, e.g. an expand()ed view), so an in-place step "
                               f"would write one element several times; pass a tensor that owns its memory "
                               f"(.clone())")
        if t.numel():
            key = (device, t.data_ptr())
            if key in written:
                j, other = written[key]
                raise RuntimeError(f"param {i}: the {name} tensor shares its memory with the {other} tensor of "
                                   f"param {j}; every tensor updated in place must appear once")
            written[key] = (i, name)

    for i, p in enumerate(params):
        if not isinstance(p, tensor):
            raise TypeError(f"param {i} is a {type(p).__name__}, not a tensor")
        dtype, device, shape = p.dtype, p.device, p.shape
        if dtype.is_complex:
            raise RuntimeError(f"param {i} is complex ({dtype}); fusedreg supports real floating params only")
        if not dtype.is_floating_point:
            raise RuntimeError(f"param {i} has dtype {dtype}; fusedreg needs floating-point params")
        if device.type == "meta":
            raise RuntimeError(f"param {i} is on the meta device: it has no data to update (params of one call "
                               f"may sit on several real devices, each stepped by its own kernel)")
        if p.layout != strided:
            raise RuntimeError(f"param {i} has layout {p.layout}; fusedreg needs dense strided params")
        g = grads[i]
        if g is None:
            raise RuntimeError(f"param {i} has no gradient (None); pass only params that have one")
        if not isinstance(g, tensor):
            raise RuntimeError(f"param {i}: grads entry is {type(g).__name__}, not a tensor")
        if g.layout != strided:
            raise RuntimeError(f"param {i} has a sparse gradient ({g.layout}); fusedreg does not support sparse "
                               f"gradients")
        if g.shape != shape or g.dtype != dtype or g.device != device:
            raise RuntimeError(f"param {i}: grad {tuple(g.shape)} {g.dtype} on {g.device} does not match "
                               f"param {tuple(shape)} {dtype} on {device}")
        once(i, "param", p, device)
        opmath = reference.opmath(dtype)
        for name, ts in states:
            t = ts[i]
            if t is None and name in missing_ok:
                continue
            if not isinstance(t, tensor):
                raise RuntimeError(f"param {i}: {name} entry is {type(t).__name__}, not a tensor")
            if t.device != device:
                raise RuntimeError(f"param {i}: {name} tensor is on {t.device}, param on {device}")
            if name == "state_steps":
                if t.numel() != 1 or t.dtype != torch.float32:
                    raise RuntimeError(f"param {i}: {name} tensor must be a one-element float32 tensor, got "
                                       f"{t.dtype} with shape {tuple(t.shape)}")
            else:
                if t.layout != strided:
                    raise RuntimeError(f"param {i}: {name} tensor has layout {t.layout}; state must be dense")
                if t.shape != shape or t.dtype != opmath:
                    raise RuntimeError(f"param {i}: {name} tensor is {tuple(t.shape)} {t.dtype}, expected the "
                                       f"param's shape {tuple(shape)} in {opmath} (state is kept in opmath)")
            once(i, name, t, device)


def _run(op, backend, params, lists, scalars, grad_scale, found_inf):
    """Group by (device, dtype) and call the chosen kernel once per group. scalars[0] is lr, a number or a
    one-element tensor: on the group's (non-CPU) device it goes to the kernel as lr_tensor, else as a float."""
    for name, t in (("grad_scale", grad_scale), ("found_inf", found_inf)):
        if t is not None and not (torch.is_tensor(t) and t.numel() == 1 and t.is_floating_point()):
            raise RuntimeError(f"{name} must be None or a one-element floating tensor (GradScaler's), got "
                               f"{t if not torch.is_tensor(t) else f'{t.dtype} of shape {tuple(t.shape)}'}")
    groups = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    for (device, _), idx in groups.items():
        name = backends.resolve(backend, device)
        args = [[params[i] for i in idx]] + [[ts[i] for i in idx] if ts else [] for ts in lists]
        gs = None if grad_scale is None else grad_scale.to(device, non_blocking=True)
        fi = None if found_inf is None else found_inf.to(device, non_blocking=True)
        lr = scalars[0]
        on_device = torch.is_tensor(lr) and lr.device == device and device.type != "cpu"
        # NaN where the kernel reads lr_tensor instead: a kernel that used the float by mistake would show it.
        lr_float = float("nan") if on_device else float(lr)
        backends.kernel(name, op)(*args, lr_float, *scalars[1:], gs, fi, lr if on_device else None)


# _checked=True (the optimizer classes, whose _check has validated these hyperparameters and whose _prepare has run
# check_tensors on these very lists and resolved the backend for every device): skip all of it, which would
# otherwise cost more than the kernel on small models.
def _resolve_all(backend, params):
    # Resolve every device first so an unavailable backend fails before any group is stepped.
    for device in {p.device for p in params}:
        backends.resolve(backend, device)


def sgd(params, grads, momentum_buffers, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
        maximize=False, first_step=False, l1=0.0, l1_mode="prox", l2=0.0, l0=0.0, nonneg=False, group_l1=0.0,
        group_dim=0, grad_scale=None, found_inf=None, backend="auto", _checked=False):
    """One SGD step (torch.optim.SGD's math) with fused penalties. momentum_buffers: [] when momentum == 0.

    group_l1 > 0 also applies the exact group-lasso prox with step lr to every param with dim >= 2."""
    if not _checked:
        check_nonneg("lr", lr)
        check_nonneg("momentum", momentum)
        check_nonneg("dampening", dampening)
        check_penalties(l1, l1_mode, l2, l0, weight_decay, group_l1, group_dim)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        lists = dict(grads=grads, momentum_buffers=momentum_buffers) if momentum != 0 else dict(grads=grads)
        check_tensors(params, **lists)
        _resolve_all(backend, params)
    _run("sgd_", backend, params, [grads, momentum_buffers if momentum != 0 else []],
         [lr, float(momentum), float(dampening), float(weight_decay), bool(nesterov), bool(maximize),
          bool(first_step), float(l1), l1_mode == "subgradient", float(l2), float(l0), bool(nonneg),
          float(group_l1), int(group_dim)],
         grad_scale, found_inf)


def adam(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, *, lr, beta1=0.9, beta2=0.999,
         eps=1e-8, weight_decay=0.0, decoupled=False, amsgrad=False, maximize=False, l1=0.0, l1_mode="prox",
         l2=0.0, l0=0.0, nonneg=False, group_l1=0.0, group_dim=0, grad_scale=None, found_inf=None,
         backend="auto", _checked=False):
    """One Adam (decoupled=False) or AdamW (decoupled=True) step with fused penalties; advances state_steps.

    group_l1 > 0 also applies the group-lasso prox in Adam's metric (per-element step lr/denom, denom =
    sqrt(v_hat) + eps from the just-updated state; see reference.group_prox) to every param with dim >= 2."""
    if not _checked:
        check_nonneg("lr", lr)
        check_nonneg("eps", eps)
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid {name} value: {b} (must be in [0, 1))")
        check_penalties(l1, l1_mode, l2, l0, weight_decay, group_l1, group_dim)
        lists = dict(grads=grads, exp_avgs=exp_avgs, exp_avg_sqs=exp_avg_sqs, state_steps=state_steps)
        if amsgrad:
            lists["max_exp_avg_sqs"] = max_exp_avg_sqs
        check_tensors(params, **lists)
        _resolve_all(backend, params)
    _run("adam_", backend, params, [grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else [], state_steps],
         [lr, float(beta1), float(beta2), float(eps), float(weight_decay), bool(decoupled), bool(amsgrad),
          bool(maximize), float(l1), l1_mode == "subgradient", float(l2), float(l0), bool(nonneg),
          float(group_l1), int(group_dim)],
         grad_scale, found_inf)


def adagrad(params, grads, state_sums, state_steps, *, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
            maximize=False, l1=0.0, l1_mode="prox", l2=0.0, l0=0.0, nonneg=False, group_l1=0.0, group_dim=0,
            grad_scale=None, found_inf=None, backend="auto", _checked=False):
    """One Adagrad step (torch.optim.Adagrad's math) with fused penalties; l2 is TF's proximal l2.

    group_l1 > 0 also applies the group-lasso prox in Adagrad's metric (per-element step clr/(sqrt(sum) + eps),
    joint with l2; see reference.group_prox) to every param with dim >= 2."""
    if not _checked:
        check_nonneg("lr", lr)
        check_nonneg("lr_decay", lr_decay)
        check_nonneg("eps", eps)
        check_penalties(l1, l1_mode, l2, l0, weight_decay, group_l1, group_dim)
        check_tensors(params, grads=grads, state_sums=state_sums, state_steps=state_steps)
        _resolve_all(backend, params)
    _run("adagrad_", backend, params, [grads, state_sums, state_steps],
         [lr, float(lr_decay), float(weight_decay), float(eps), bool(maximize), float(l1),
          l1_mode == "subgradient", float(l2), float(l0), bool(nonneg), float(group_l1), int(group_dim)],
         grad_scale, found_inf)
