"""Stateless fused steps over lists of tensors: `sgd`, `adam`, `adagrad`, `ftrl`, `lion`, `muon` (Muon's step after
its orthogonalization), and the checks every step makes.

Each step takes its op's arguments (fusedreg._ops.ARGS: the tensor lists, then every scalar by keyword), with
`l1_mode` in place of the op's `l1_subgradient` and `l1_decoupled` (l1_flags), `lr` a number or a one-element
tensor, and `backend`. It checks every input before it touches anything (check_args: the hyperparameters,
check_tensors: the tensors), then `launch` splits the tensors by device and dtype and hands each part to one
backend kernel (fusedreg.backends). All updates are in place. The optimizer classes make the same checks for all
their param groups first, then call `launch`.

Non-finite gradients: without found_inf (no GradScaler) a NaN or inf gradient propagates into its param and
state exactly as in torch.optim: nothing is skipped or zeroed, and the proximal steps keep NaN as NaN (a NaN is
never thresholded to an exact 0). With GradScaler (found_inf given and nonzero) the whole step is skipped: no
param, state or step counter changes.
"""
import inspect
import math

import torch

from . import _ops, backends, reference

L1_MODES = ("prox", "subgradient", "decoupled")
# The l1_mode of an op whose default is not "prox" (Lion has no per-element step for the prox to take).
L1_DEFAULT = {"lion_": "decoupled"}
# The float arguments of the ops that must be >= 0 (betas have their own range).
_NONNEG = ({a.name for args in _ops.ARGS.values() for a in args if a.type == "float"}
           - {"beta1", "beta2", "lr_power"})


def check_nonneg(name, value):
    if torch.is_tensor(value) and value.numel() != 1:
        raise ValueError(f"Tensor {name} must be 1-element")  # torch.optim's words
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


def check_args(**kw):
    """Raise ValueError for a bad hyperparameter: the one set of rules, by argument name, for the optimizer
    classes (every group, at construction and before every step), the functions below and fusedreg.penalties.
    `op` (an fusedreg._ops.ARGS key) names the op, for the rules that depend on it."""
    for name, value in kw.items():
        if name in ("beta1", "beta2"):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"Invalid {name} value: {value} (must be in [0, 1))")
        elif name in _NONNEG:
            check_nonneg(name, value)
    if "lr_power" in kw:  # FTRL's own rule: n^(-lr_power) must not blow up (TensorFlow's)
        if not float(kw["lr_power"]) <= 0:
            raise ValueError(f"Invalid lr_power value: {kw['lr_power']} (must be <= 0)")
    l1_mode = kw.get("l1_mode", L1_DEFAULT.get(kw.get("op"), "prox"))
    if not isinstance(l1_mode, str) or l1_mode not in L1_MODES:
        raise ValueError(f"Invalid l1_mode {l1_mode!r}; choose one of {L1_MODES}")
    if l1_mode == "decoupled" and kw.get("op") == "ftrl_":
        raise ValueError("l1_mode='decoupled' is not defined for Ftrl: its l1 is FTRL's own, applied by its closed "
                         "form; use l1_mode='prox' (FTRL's) or 'subgradient'")
    if l1_mode == "prox" and kw.get("op") == "lion_":
        raise ValueError("l1_mode='prox' is not defined for Lion: its update is lr*sign(...), with no per-element "
                         "step (diagonal metric) for a prox threshold to take; use l1_mode='decoupled' (Lion's "
                         "default: soft-threshold by lr*l1) or 'subgradient'")
    group_dim = kw.get("group_dim", 0)
    if isinstance(group_dim, bool) or group_dim not in (0, 1):
        raise ValueError(f"Invalid group_dim {group_dim!r}; choose 0 (rows: output neurons) or 1 (columns: inputs)")
    if kw.get("nesterov") and (kw.get("momentum", 0) <= 0 or kw.get("dampening", 0) != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    for name in ("grad_scale", "found_inf"):
        t = kw.get(name)
        if t is not None and not (torch.is_tensor(t) and t.numel() == 1 and t.is_floating_point()):
            raise RuntimeError(f"{name} must be None or a one-element floating tensor (GradScaler's), got "
                               f"{t if not torch.is_tensor(t) else f'{t.dtype} of shape {tuple(t.shape)}'}")


def l1_flags(l1_mode):
    """The ops' l1 switches for an l1_mode: {l1_subgradient, l1_decoupled}."""
    return dict(l1_subgradient=l1_mode == "subgradient", l1_decoupled=l1_mode == "decoupled")


def check_tensors(params, missing_ok=(), **lists):
    """Raise before anything changes if the lists cannot be stepped together.

    Every backend accepts exactly what passes here: floating params (complex ones as torch.view_as_real, which
    is how launch hands them to the kernels) with dense strided grads of the same shape, dtype and device; state
    tensors (every list but grads and state_steps) of the param's shape on its device in opmath (fp64 for fp64
    params, else fp32: fusedreg.optim creates them so); state_steps one-element float32 tensors on the param's
    device. Non-contiguous params, grads and state are fine (a native kernel
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
    if _vouched(params, missing_ok, lists, states):
        return
    if any(isinstance(p, torch.Tensor) and p.dtype.is_complex for p in params):
        # The kernels step complex tensors as view_as_real (launch): check what they will see.
        params, lists = real(params), {name: real(ts) for name, ts in lists.items()}
        states = [(name, ts) for name, ts in lists.items() if name != "grads"]
        if _vouched(params, missing_ok, lists, states):
            return
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
        if g.layout not in (strided, torch.sparse_coo):
            raise RuntimeError(f"param {i} has a {g.layout} gradient; fusedreg takes dense (strided) gradients "
                               f"and, in SGD, Adagrad and Ftrl, sparse COO ones")
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


def real(ts):
    """ts with every complex tensor as torch.view_as_real (other entries as they are)."""
    return [torch.view_as_real(t) if isinstance(t, torch.Tensor) and t.dtype.is_complex else t for t in ts]


# What a complex param cannot take: penalties that act on re and im apart (or on the sign of a complex number).
_NOT_COMPLEX = (("l0", lambda kw: kw.get("l0", 0) != 0), ("nonneg", lambda kw: kw.get("nonneg", False)),
                ("group_l1", lambda kw: kw.get("group_l1", 0) != 0),
                ("l1_mode='subgradient'", lambda kw: kw.get("l1", 0) != 0 and kw.get("l1_subgradient", False)))


def check_complex(params, **scalars):
    """Raise ValueError when complex params come with a penalty that is not defined for them. l1 is: the prox of
    l1*|z| (launch); l0, nonneg, group lasso and subgradient l1 are not."""
    bad = [name for name, on in _NOT_COMPLEX if on(scalars)]  # first: the params are scanned only when needed
    if bad and any(isinstance(p, torch.Tensor) and p.dtype.is_complex for p in params):
        raise ValueError(f"{', '.join(bad)} on complex params is not supported: l1 (prox: it shrinks the modulus "
                         f"|z|), l2, weight_decay and every optimizer option are; put the complex params in a "
                         f"param group without {', '.join(bad)}")


def _complex_part(args, scalars):
    """A complex part of a launch as the real kernels take it, with the copies to write back after the kernel.

    Every tensor becomes torch.view_as_real, so re and im are two real elements stepped alike: torch.optim's own
    way, and every elementwise term (weight decay, Adagrad's proximal l2) is then the same as on the complex
    number. l1 on a complex weight is l1*|z|, whose prox shrinks the modulus (exact zeros at |z| <= t): that is
    the group-lasso prox on the (re, im) pairs, in the op's own metric (Adam's step differs between re and
    im), so the kernels run their group prox on the params viewed as rows of (re, im) with group_l1 = l1/sqrt(2)
    (group_prox weighs a group by sqrt(its size)). With l1_decoupled that group prox is the closed form with the
    op's scalar step, z * max(0, 1 - lr*l1/|z|), for every op. A tensor whose pairs cannot be viewed as rows
    (non-contiguous layouts) goes through a contiguous copy that is written back."""
    args = {k: real(ts) for k, ts in args.items()}
    if scalars.get("l1", 0) == 0:
        return args, scalars, []
    back = []

    def rows(t, write):
        try:
            return t.view(-1, 2)
        except RuntimeError:
            c = t.reshape(-1, 2).clone()
            if write:
                back.append((t, c))
            return c

    args = {k: ts if k == "state_steps" else [rows(t, k != "grads") for t in ts] for k, ts in args.items()}
    return args, {**scalars, "l1": 0.0, "group_l1": scalars["l1"] / math.sqrt(2), "group_dim": 0}, back


# Sparse grads (torch.sparse_coo, e.g. nn.Embedding(sparse=True)) in the ops that take rows (fusedreg._ops.ROWS).
# torch.optim.Adam's words, which AdamW (its subclass) uses too.
_NO_SPARSE = {"adam_": "Adam does not support sparse gradients, please consider SparseAdam instead",
              "lion_": "Lion does not support sparse gradients",
              "muon_momentum_": "Muon does not support sparse gradients"}


def check_sparse(op, grads, params, **scalars):
    """Raise (before anything changes) when `op` cannot step these sparse grads of these params with these
    scalars, as torch.optim raises: Adam/AdamW never (torch's message), Adagrad not with weight_decay (torch's
    message), SGD not with weight_decay (torch.optim.SGD fails there too: its g + wd*p of a sparse g is an error);
    group lasso not at all (its groups are whole rows or columns, not the rows a step touches). Ours alone: a grad
    with several sparse dims on a param whose strides do not let those dims flatten into one (_sparse_part's
    view; e.g. a transposed param)."""
    if not any(g is not None and g.is_sparse for g in grads):
        return
    for i, (p, g) in enumerate(zip(params, grads)):
        sd = g.sparse_dim() if g is not None and g.is_sparse else 1
        if sd > 1 and not _flattens(p, sd):
            raise RuntimeError(f"fusedreg::{op}: params[{i}] (shape {tuple(p.shape)}, strides {p.stride()}) has a "
                               f"sparse grad with {sd} sparse dims, which the kernels step as rows of the param "
                               f"with those dims flattened into one, and its strides do not allow that view: make "
                               f"the param contiguous, or give it a grad with one sparse dim")
    if not any(a.role == "rows" for a in _ops.ARGS[op]):
        raise RuntimeError(_NO_SPARSE.get(op, f"fusedreg::{op} does not support sparse gradients"))
    if scalars.get("weight_decay", 0) != 0:
        raise RuntimeError("weight_decay option is not compatible with sparse gradients")
    if scalars.get("l1", 0) != 0 and any(g is not None and g.is_sparse and g.dtype.is_complex for g in grads):
        # l1 on complex params runs as group lasso on (re, im) pairs (_complex_part), which sparse rows do not take
        raise RuntimeError("l1 on a complex param does not support sparse gradients")
    if scalars.get("group_l1", 0) != 0:
        raise RuntimeError("group lasso (group_l1) does not support sparse gradients: its groups are whole rows "
                           "or columns of a param, not the rows a sparse step touches")


def _flattens(t, dims):
    """Whether t's first `dims` dims can be viewed as one (what _sparse_part does to a param and its state)."""
    try:
        t.view((-1,) + tuple(t.shape[dims:]))
    except RuntimeError:
        return False
    return True


def _densify(op, scalars):
    """Whether sparse grads go through the dense kernel: SGD with momentum. torch.optim.SGD keeps a sparse
    momentum buffer that it decays on every row it has ever held and adds to the param on all of them, so its
    step touches far more than the grad's rows; the dense kernel on the densified grad is that same math (the
    buffer's absent rows are zeros, and p - lr*0 == p), with a dense buffer, and penalties on every row."""
    return op == "sgd_" and scalars.get("momentum", 0) != 0


def _coalesced(g):
    """(indices, values) of g with duplicate indices summed: the kernels need distinct rows, in any order. A grad
    without duplicates (nn.Embedding's of distinct ids) goes as it is when the extension vouches for it
    (fusedreg._C.distinct_rows, one bit per row: ~10 us for 4,096 rows of a 1M table), else after one sort of its
    indices and a gather of its values (0.26 ms there); one with duplicates through coalesce() (0.51 ms)."""
    if not g.is_coalesced() and g.sparse_dim() == 1:
        distinct = backends.distinct_rows()
        if distinct is not None and distinct(g._indices()[0], g.shape[0]):
            return g._indices(), g._values()
        ix, order = g._indices()[0].sort()
        if not bool((ix[1:] == ix[:-1]).any()):
            return ix[None], g._values().index_select(0, order)
    g = g.coalesce()
    return g._indices(), g._values()


def _sparse_part(lists, idx, densify):
    """The lists of the params idx (all with sparse grads) as an op takes them: coalesced (duplicate indices
    summed: _coalesced), rows = the linear index over the sparse dims, grads = the values, and params and
    state viewed with the sparse dims flattened into dim 0 (so a fully sparse 2-D grad steps single elements).
    densify: grads made dense instead, no rows."""
    part = {k: [ts[i] for i in idx] if ts else [] for k, ts in lists.items()}
    if densify:
        part["grads"] = [g.to_dense() for g in part["grads"]]
        return part
    rows, values = [], []
    for j, g in enumerate(part["grads"]):
        ix, vals = _coalesced(g)  # the update is non-linear (and rows run in parallel): indices must be unique
        sd = g.sparse_dim()
        if sd > 1:
            for k, ts in part.items():
                if k != "grads" and ts:
                    ts[j] = ts[j].view((-1,) + tuple(ts[j].shape[sd:]))
            r = ix[0]
            for d in range(1, sd):
                r = r * g.shape[d] + ix[d]
        else:
            r = ix[0]
        rows.append(r.contiguous())
        values.append(vals)
    part["grads"] = values
    part["rows"] = rows
    return part


def resolve(backend, tensors):
    """{device: backend name} for every device of `tensors`: an unavailable backend fails before anything runs."""
    return {device: backends.resolve(backend, device) for device in {t.device for t in tensors}}


# Every scalar a kernel takes, filled in by launch: the reference kernels are plain functions (the tensors that
# launch passes itself aside).
_DEFAULTS = {op: {k: v for k, v in _ops.defaults(op).items()
                  if k not in ("grad_scale", "found_inf", "lr_tensor", "rows")} for op in _ops.ARGS}


def launch(op, names, lists, grad_scale=None, found_inf=None, **scalars):
    """Run `op` on already checked lists ({argument name: tensors}, params first), one kernel call per (device,
    dtype) part, each on the backend `names` (resolve's answer) gives its device. `lr` is a number or a
    one-element tensor: on the group's (non-CPU) device it goes to the kernel as lr_tensor, else as a float."""
    params, grads = lists["params"], lists["grads"]
    parts = {}
    # One kernel call per (device, dtype), and per kind of grad: dense grads, and sparse ones (rows; _sparse_part).
    for i, p in enumerate(params):
        parts.setdefault((p.device, p.dtype, grads[i].is_sparse), []).append(i)
    scalars = {**_DEFAULTS[op], **scalars}
    has_lr = "lr" in scalars  # muon_momentum_ has none
    lr = scalars.pop("lr", None)
    whole = len(parts) == 1
    densify = _densify(op, scalars)
    for (device, dtype, sparse), idx in parts.items():
        if sparse:
            args = _sparse_part(lists, idx, densify)
        else:
            args = lists if whole else {k: [ts[i] for i in idx] if ts else [] for k, ts in lists.items()}
        kw, back = scalars, ()
        if dtype.is_complex:
            args, kw, back = _complex_part(args, scalars)
        on_device = torch.is_tensor(lr) and lr.device == device and device.type != "cpu"
        # NaN where the kernel reads lr_tensor instead: a kernel that used the float by mistake would show it.
        lrs = dict(lr=float("nan") if on_device else float(lr), lr_tensor=lr if on_device else None) if has_lr else {}
        backends.kernel(names[device], op)(
            **args, **kw, **lrs,
            grad_scale=None if grad_scale is None else grad_scale.to(device, non_blocking=True),
            found_inf=None if found_inf is None else found_inf.to(device, non_blocking=True))
        for t, c in back:
            t.copy_(c.view_as(t))


def op_lists(op, lists, on):
    """The op's tensor lists as its kernels take them: a list not in `on` (used's answer: momentum_buffers
    without momentum, max_exp_avg_sqs without amsgrad) is empty."""
    return {a.name: list(lists[a.name]) if a.name in on else [] for a in _ops.ARGS[op] if a.role and a.role != "rows"}


def used(op, scalars):
    """The names of the op's tensor lists that these scalars use."""
    return {a.name for a in _ops.ARGS[op] if a.role and a.role != "rows" and (not a.when or scalars.get(a.when))}


def _stateless(op, doc):
    args = _ops.ARGS[op]
    names = [a.name for a in args if a.role and a.role != "rows"]  # rows come from sparse grads (launch)

    def step(*tensors, backend="auto", l1_mode=L1_DEFAULT.get(op, "prox"), **scalars):
        step.__signature__.bind(*tensors, **scalars)  # a misspelt or missing argument is a TypeError here
        # defaults too: the op's rules may need them
        check_args(op=op, l1_mode=l1_mode, **{**_DEFAULTS[op], **scalars})
        check_complex(tensors[0] if tensors else (), **l1_flags(l1_mode), **scalars)
        on = used(op, scalars)
        lists = op_lists(op, dict(zip(names, tensors)), on)
        check_tensors(**{k: ts for k, ts in lists.items() if k in on})
        check_sparse(op, lists["grads"], lists["params"], **scalars)
        launch(op, resolve(backend, lists["params"]), lists, **l1_flags(l1_mode), **scalars)

    # The signature users see: the op's tensor lists, then its scalars by keyword (l1_mode for l1_subgradient and
    # l1_decoupled, lr a number or a tensor instead of lr/lr_tensor), then backend.
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    for a in args:
        if a.role or a.name in ("lr_tensor", "rows"):
            continue
        if a.name == "l1_subgradient":
            params.append(inspect.Parameter("l1_mode", kw, default=L1_DEFAULT.get(op, "prox")))
        elif a.name == "l1_decoupled":
            continue
        elif a.name == "lr":
            params.append(inspect.Parameter("lr", kw))
        else:
            params.append(inspect.Parameter(a.name, kw, default=a.default))
    params.append(inspect.Parameter("backend", kw, default="auto"))
    step.__signature__ = inspect.Signature(params)
    step.__name__ = step.__qualname__ = op[:-1]
    step.__doc__ = doc + "\n\nArguments: " + "; ".join(f"{a.name}: {a.doc}" for a in args if a.doc) + "."
    return step


sgd = _stateless("sgd_", """One SGD step (torch.optim.SGD's math) with fused penalties. momentum_buffers: [] when
momentum == 0; first_step=True makes new buffers (buf = g). group_l1 > 0 also applies the exact group-lasso prox
with step lr to every param with dim >= 2.""")

adam = _stateless("adam_", """One Adam (decoupled=False) or AdamW (decoupled=True) step with fused penalties;
advances state_steps. group_l1 > 0 also applies the group-lasso prox in Adam's metric (per-element step lr/denom,
denom = sqrt(v_hat) + eps from the just-updated state; see reference.group_prox) to every param with dim >= 2.
l1_mode="decoupled": l1 thresholds by lr*l1 and the group prox is the closed form with step lr.""")

ftrl = _stateless("ftrl_", """One FTRL-Proximal step (TensorFlow's / Keras's Ftrl; fusedreg.Ftrl documents the
math): accumulators start at the initial accumulator value, linears at 0. l1 and l2 are the closed form's
(l2 adds 2*l2 to the quadratic term), l0 and nonneg the exact argmin with them; l1_mode="subgradient" adds
l1*sign(w) to the gradient instead. group_l1 > 0 then applies the group-lasso prox in FTRL's metric (per-element
step 1/q, q the closed form's denominator from the just-updated accumulator; see reference.group_prox) to every
param with dim >= 2.""")

muon = _stateless("muon_", """Muon's step after its orthogonalization (fusedreg.Muon runs the whole step: the momentum,
muon_momentum_, then torch's Newton-Schulz, then this): grads are the orthogonalized updates; w *= 1 - lr*weight_decay,
w -= lr*lr_ratio*u, then the penalties with step lr and no denominator, as SGD's (l1_mode "prox" and "decoupled" are the
same; "subgradient" belongs to muon_momentum_, and leaves l1 out here), and group lasso in closed form with step lr.""")

adagrad = _stateless("adagrad_", """One Adagrad step (torch.optim.Adagrad's math) with fused penalties; l2 is
TensorFlow's proximal l2. group_l1 > 0 also applies the group-lasso prox in Adagrad's metric (per-element step
clr/(sqrt(sum) + eps), joint with l2; see reference.group_prox) to every param with dim >= 2. l1_mode="decoupled":
l1 thresholds by clr*l1 and the group prox is the closed form with step clr, without l2.""")

lion = _stateless("lion_", """One Lion step (lion-pytorch's math: decoupled weight decay, p -= lr*sign(beta1*m +
(1-beta1)*g), m = beta2*m + (1-beta2)*g) with fused penalties, all with step lr as in SGD. l1_mode is "decoupled"
(threshold lr*l1, the default) or "subgradient"; "prox" is refused (Lion has no per-element step). group_l1 > 0
also applies the closed-form group-lasso prox with step lr to every param with dim >= 2.""")
