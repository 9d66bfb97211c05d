"""The ops, described once: one table per op names every argument (name, schema type, default, meaning), and the
schemas, the fake kernels and the contract check are generated from it.

The C++ extension registers CPU and CUDA kernels under these names (csrc/), the pure-PyTorch reference is the
"default" kernel for any other device, and the fake kernels let torch.compile trace through a step. Every op
updates its tensors in place and returns nothing. The schemas make every scalar keyword-only, so no two arguments
can be swapped silently.

Per-element order inside every op (torch.optim's, then ours):
  g = grad / grad_scale  ->  g = -g if maximize  ->  g += l1*sign(p) if l1_subgradient  ->  g += wd*p (coupled)
  -> optimizer update (AdamW, Lion: p *= 1 - lr*wd first)  ->  proximal penalties with the element's step t:
  soft-threshold by t*l1 (unless subgradient), divide by 1 + t*l2, zero where |p| <= sqrt(2*t*l0), max(p, 0).
  t = lr for SGD and Lion, lr/denom for Adam (denom = sqrt(v_hat) + eps), clr/(sqrt(sum) + eps) for Adagrad.
  l1_decoupled: the soft-threshold (only it) uses the scalar step instead, lr (Adagrad: clr) * l1, and the group
  prox below is the closed form with that step (no metric, no l2 term); SGD and Lion are the same either way.
FTRL instead computes w from its state in closed form (reference.ftrl_), its l1/l2 inside it, then l0 and nonneg
with t = 1/quadratic.
Sparse grads (ops with a `rows` argument): rows[i] lists, distinct (in any order), the rows (index along dim 0) of
params[i] that grads[i] holds, grads[i] being those rows' values, shape (len(rows[i]),) + params[i].shape[1:]; the
op then reads and writes only those rows of the param and of its state, with the same per-element math (state of
absent rows untouched; step counters advance as in a dense step). rows None (or []) means dense grads.
Then, when group_l1 > 0, the group-lasso prox on every param with dim >= 2 (groups: rows for group_dim 0,
columns for 1), in the same metric (reference.group_prox; with l1_decoupled the identity), applied to the param
as just written.
When found_inf is given and nonzero, nothing changes and no step counter advances.
"""
import importlib
import os
from typing import NamedTuple

import torch

LIB = "fusedreg"

_REQUIRED = object()


class Arg(NamedTuple):
    name: str
    type: str  # the schema type
    default: object = _REQUIRED
    doc: str = ""
    # Tensor lists: "param", "grad", "state" (opmath, the param's shape), "steps" (one float32 element each).
    role: str = ""
    # A state list used only when this scalar argument is truthy (else it must be empty).
    when: str = ""


# Sparse grads, for the ops whose math is row-separable (sgd_, adagrad_, ftrl_): the op's last argument, keyword-only.
ROWS = Arg("rows", "Tensor[]?", None, "None: dense grads; else one int64 1-D tensor of distinct row indices per "
                                      "param, and grads[i] the values of those rows of params[i] (shape "
                                      "(len(rows[i]),) + params[i].shape[1:]): only those rows and their state are "
                                      "updated", role="rows")


# The elementwise penalties, then the arguments every op ends with: group lasso, AMP's two tensors, the device lr.
ELEMENTWISE = (
    Arg("l1", "float", 0.0, "λ of λ·Σ|w|: soft-threshold by t·l1 after the update (t: the element's step)"),
    Arg("l1_subgradient", "bool", False, "apply l1 as g += l1·sign(w) before the update instead"),
    Arg("l1_decoupled", "bool", False, "soft-threshold by lr·l1 (the op's scalar step, without the optimizer's "
                                       "denominator), and group lasso in closed form with step lr (no metric); "
                                       "SGD: the same as off; ftrl_: refused"),
    Arg("l2", "float", 0.0, "TensorFlow's proximal l2: divide by 1 + t·l2 after the threshold"),
    Arg("l0", "float", 0.0, "hard threshold: w = 0 where |w| <= sqrt(2·t·l0)"),
    Arg("nonneg", "bool", False, "project onto w >= 0 last"),
)
PENALTY = ELEMENTWISE + (
    Arg("group_l1", "float", 0.0, "group lasso λ·Σ_g sqrt(|g|)·||w_g|| over params with dim >= 2"),
    Arg("group_dim", "int", 0, "group lasso groups: 0 rows (output neurons), 1 columns (inputs)"),
    Arg("grad_scale", "Tensor?", None, "GradScaler's scale: the kernel divides the grads by it"),
    Arg("found_inf", "Tensor?", None, "GradScaler's flag: nonzero skips the whole step"),
    Arg("lr_tensor", "Tensor?", None, "a one-element floating tensor that replaces lr (read on the device by "
                                      "the CUDA kernels: no host sync, CUDA-graph capturable)"),
)

_PARAMS = Arg("params", "Tensor(a!)[]", doc="updated in place", role="param")
_GRADS = Arg("grads", "Tensor[]", doc="dense, the params' shape, dtype and device", role="grad")
_LR = Arg("lr", "float", doc="learning rate (ignored when lr_tensor is given)")

ARGS = {
    "sgd_": (
        _PARAMS, _GRADS,
        Arg("momentum_buffers", "Tensor(b!)[]", doc="empty when momentum == 0", role="state", when="momentum"),
        _LR,
        Arg("momentum", "float", 0.0),
        Arg("dampening", "float", 0.0),
        Arg("weight_decay", "float", 0.0, "coupled L2: g += weight_decay·w"),
        Arg("nesterov", "bool", False),
        Arg("maximize", "bool", False),
        Arg("first_step", "bool", False, "the buffers are new: buf = g (torch.optim.SGD's first step)"),
    ) + PENALTY + (ROWS,),
    "adam_": (
        _PARAMS, _GRADS,
        Arg("exp_avgs", "Tensor(b!)[]", role="state"),
        Arg("exp_avg_sqs", "Tensor(c!)[]", role="state"),
        Arg("max_exp_avg_sqs", "Tensor(d!)[]", doc="empty unless amsgrad", role="state", when="amsgrad"),
        Arg("state_steps", "Tensor(e!)[]", doc="advanced by one per step", role="steps"),
        _LR,
        Arg("beta1", "float", 0.9),
        Arg("beta2", "float", 0.999),
        Arg("eps", "float", 1e-8),
        Arg("weight_decay", "float", 0.0, "coupled (g += wd·w), or decoupled (w *= 1 - lr·wd) with decoupled"),
        Arg("decoupled", "bool", False, "AdamW's decay"),
        Arg("amsgrad", "bool", False),
        Arg("maximize", "bool", False),
    ) + PENALTY,
    "adagrad_": (
        _PARAMS, _GRADS,
        Arg("state_sums", "Tensor(b!)[]", role="state"),
        Arg("state_steps", "Tensor(c!)[]", doc="advanced by one per step", role="steps"),
        _LR,
        Arg("lr_decay", "float", 0.0),
        Arg("weight_decay", "float", 0.0, "coupled L2: g += weight_decay·w"),
        Arg("eps", "float", 1e-10),
        Arg("maximize", "bool", False),
    ) + PENALTY + (ROWS,),
    # FTRL-Proximal (TensorFlow's ApplyFtrlV2, Keras's beta): its l1 and l2 are the closed form's (l2 adds 2·l2 to
    # the quadratic term: the penalty l2·Σw², TensorFlow's l2_regularization_strength), l0 and nonneg the exact
    # argmin of the same per-element objective; group lasso the prox in FTRL's metric q with step 1.
    "ftrl_": (
        _PARAMS, _GRADS,
        Arg("accumulators", "Tensor(b!)[]", doc="n, the sum of squared grads (starts at the optimizer's "
                                                 "initial_accumulator_value)", role="state"),
        Arg("linears", "Tensor(c!)[]", doc="z, the linear term (starts at 0)", role="state"),
        _LR,
        Arg("lr_power", "float", -0.5, "the per-element step is lr/n^(-lr_power); <= 0 (-0.5: Adagrad's)"),
        Arg("beta", "float", 0.0, "Keras's beta: adds beta/lr to the quadratic term"),
        Arg("l2_shrinkage", "float", 0.0, "TensorFlow's l2_shrinkage_regularization_strength: z sees "
                                          "g + 2·l2_shrinkage·w (the accumulator g²)"),
        Arg("maximize", "bool", False),
    ) + PENALTY + (ROWS,),
    # Lion (Chen et al. 2023) as lion-pytorch's update_fn: p *= 1 - lr·wd; c = beta1·m + (1-beta1)·g;
    # p -= lr·sign(c); m = beta2·m + (1-beta2)·g; then the penalties with step lr, as SGD's (no metric).
    "lion_": (
        _PARAMS, _GRADS,
        Arg("exp_avgs", "Tensor(b!)[]", role="state"),
        _LR,
        Arg("beta1", "float", 0.9, "the interpolation of the update's sign: sign(beta1·m + (1-beta1)·g)"),
        Arg("beta2", "float", 0.99, "the momentum's decay: m = beta2·m + (1-beta2)·g"),
        Arg("weight_decay", "float", 0.0, "decoupled: w *= 1 - lr·weight_decay before the update"),
        Arg("maximize", "bool", False),
    ) + PENALTY,
    # Muon (torch.optim.Muon) is two ops around the Newton-Schulz orthogonalization, which the class runs with
    # torch's matmuls: muon_momentum_ before it (momentum; no prox penalties, so it takes only the gradient's
    # preprocessing of PENALTY: subgradient l1 and AMP), muon_ after it (decay, the step, then the penalties).
    "muon_momentum_": (
        _PARAMS._replace(doc="read for the sign of subgradient l1; the values are written back unchanged"), _GRADS,
        Arg("momentum_buffers", "Tensor(b!)[]", doc="buf = lerp(buf, g, 1 - momentum)", role="state"),
        Arg("updates", "Tensor(c!)[]", doc="written: lerp(g, buf, momentum), the orthogonalization's input; empty "
                                          "unless nesterov (the input is then the buffer)", role="state",
            when="nesterov"),
        Arg("momentum", "float", 0.95),
        Arg("nesterov", "bool", True),
        Arg("maximize", "bool", False),
    ) + tuple(a for a in PENALTY if a.name in ("l1", "l1_subgradient", "grad_scale", "found_inf")),
    "muon_": (
        _PARAMS,
        _GRADS._replace(doc="the orthogonalized updates, the params' shape and dtype"),
        _LR,
        Arg("lr_ratio", "float", 1.0, "the update's step is lr·lr_ratio (torch.optim.Muon's adjusted lr)"),
        Arg("weight_decay", "float", 0.0, "decoupled: w *= 1 - lr·weight_decay before the update"),
    ) + PENALTY,
}

# The file stem of an op's kernels (csrc/cpu/<stem>.cpp, csrc/cuda/<stem>.cu, fusedreg/triton/<stem>.py): its
# name, or the optimizer's whose second op it is.
STEMS = {"muon_momentum_": "muon"}


def stem(op):
    return STEMS.get(op, op.rstrip("_"))


def _literal(value):
    return "None" if value is None else repr(value)


def schema(op, name=None):
    """The schema string of `op` ("sgd_", ...), optionally under another name (the Triton ops reuse it)."""
    parts, keyword = [], False
    for a in ARGS[op]:
        if not a.type.endswith("[]") and not keyword:  # ROWS ("Tensor[]?") comes after the scalars
            parts.append("*")  # every scalar and optional tensor by keyword: no two can be swapped silently
            keyword = True
        parts.append(f"{a.type} {a.name}" + ("" if a.default is _REQUIRED else f"={_literal(a.default)}"))
    return f"{name or op}({', '.join(parts)}) -> ()"


def defaults(op):
    """{name: default} of the op's arguments that have one."""
    return {a.name: a.default for a in ARGS[op] if a.default is not _REQUIRED}


def _opmath(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def check(op, **kw):
    """The contract of every kernel of `op`, as the native kernels enforce it (csrc/ops.h stage()), with
    torch._check so that torch.compile reports a violation too: one dtype and device per call, dense grads of
    the params' shape, state in opmath with the params' shape, one-element float32 step counters, a state list
    that its option leaves unused is empty, group_dim 0 or 1, and one-element floating AMP / lr tensors. With
    rows (sparse grads): one int64 1-D index tensor per param (dim >= 1) on its device, grads[i] of shape
    (len(rows[i]),) + params[i].shape[1:], and no group lasso. That the indices are distinct and in range is a
    property of their values, checked by the kernels that read them on the host (rows_ok)."""
    args = ARGS[op]
    params = kw["params"]
    n = len(params)
    rows = kw.get("rows") or None
    check_rows(op, params, kw["grads"], rows, kw.get("group_l1", 0))
    torch._check(op != "ftrl_" or not kw.get("l1_decoupled", False),
                 lambda: f"fusedreg::{op}: l1_decoupled is not defined for FTRL, whose l1 is its closed form's")
    torch._check(kw.get("group_dim", 0) in (0, 1),
                 lambda: f"fusedreg::{op}: group_dim must be 0 (rows) or 1 (columns), got {kw['group_dim']}")
    for a in args:
        if a.role in ("grad", "state", "steps"):
            used = not a.when or bool(kw.get(a.when, 0))
            got = len(kw[a.name])
            torch._check(got == n if used else got == 0,
                         lambda: f"fusedreg::{op}: {a.name} must have " + (f"{n} tensors (one per param), got {got}"
                                                                            if used else "no tensors when "
                                                                            f"{a.when} is off, got {got}"))
        elif a.type == "Tensor?" and kw.get(a.name) is not None:
            t = kw[a.name]
            torch._check(t.numel() == 1 and t.is_floating_point(),
                         lambda: f"fusedreg::{op}: {a.name} must be a one-element floating tensor")
    if not n:
        return
    dtype, device = params[0].dtype, params[0].device
    torch._check(dtype in _DTYPES, lambda: f"fusedreg::{op}: params must be float32, float64, bfloat16 or "
                                           f"float16, got {dtype}")
    opmath = _opmath(dtype)
    for i, p in enumerate(params):
        torch._check(p.dtype == dtype and p.device == device,
                     lambda: f"fusedreg::{op}: all params of one call must share dtype and device; params[0] is "
                             f"{dtype} on {device}, params[{i}] is {p.dtype} on {p.device}")
        for a in args:
            if a.role not in ("grad", "state", "steps") or not kw[a.name]:
                continue
            t = kw[a.name][i]
            torch._check(t.layout == torch.strided, lambda: f"fusedreg::{op}: {a.name}[{i}] must be dense")
            torch._check(t.device == device, lambda: f"fusedreg::{op}: {a.name}[{i}] is on {t.device}, params on "
                                                     f"{device}")
            if a.role == "steps":
                torch._check(t.numel() == 1 and t.dtype == torch.float32,
                             lambda: f"fusedreg::{op}: {a.name}[{i}] must be a one-element float32 tensor")
            elif a.role == "state" or rows is None:
                want = dtype if a.role == "grad" else opmath
                torch._check(t.dtype == want and t.shape == p.shape,
                             lambda: f"fusedreg::{op}: {a.name}[{i}] must be {want} with the shape of params[{i}] "
                                     f"{tuple(p.shape)}, got {t.dtype} {tuple(t.shape)}")


def check_rows(op, params, grads, rows, group_l1=0.0):
    """The part of check() about sparse grads (rows None or [] means dense; nothing to check)."""
    if not rows:
        return
    n = len(params)
    torch._check(len(rows) == n, lambda: f"fusedreg::{op}: rows must have {n} tensors (one per param), got "
                                         f"{len(rows)}")
    torch._check(group_l1 == 0, lambda: f"fusedreg::{op}: group lasso (group_l1) does not support sparse grads "
                                        f"(rows)")
    for i, (p, g, r) in enumerate(zip(params, grads, rows)):
        torch._check(r.dtype == torch.int64 and r.dim() == 1 and r.device == p.device and p.dim() >= 1,
                     lambda: f"fusedreg::{op}: rows[{i}] must be a 1-D int64 tensor on {p.device} (params[{i}] "
                             f"with dim >= 1), got {r.dtype} {tuple(r.shape)} on {r.device}")
        want = (r.shape[0],) + tuple(p.shape[1:])
        torch._check(g.layout == torch.strided and g.dtype == p.dtype and tuple(g.shape) == want,
                     lambda: f"fusedreg::{op}: grads[{i}] must be the dense {p.dtype} values of rows[{i}], shape "
                             f"{want}, got {g.layout} {g.dtype} {tuple(g.shape)}")


def rows_ok(op, params, rows):
    """Raise unless every rows[i] (a host-readable int64 1-D tensor) holds distinct indices within params[i]'s
    dim 0: the kernels update rows in parallel, so a repeated row would race, and an index out of range would
    write outside the param."""
    for i, (p, r) in enumerate(zip(params, rows)):
        if r.numel() and not (int(r.min()) >= 0 and int(r.max()) < p.shape[0] and
                              torch.unique(r).numel() == r.numel()):
            raise RuntimeError(f"fusedreg::{op}: rows[{i}] must be distinct indices in [0, {p.shape[0]}) (a "
                               f"coalesced sparse grad's)")


def fake(op):
    """The fake kernel of `op` (also of its Triton custom op): it checks the contract."""
    def kernel(*args, **kwargs):
        # Positional tensor lists as the schema orders them, then the keyword-only rest.
        check(op, **{**defaults(op), **dict(zip((a.name for a in ARGS[op]), args)), **kwargs})
    kernel.__name__ = f"{op}fake"
    return kernel


SCHEMAS = {op: schema(op) for op in ARGS}


def _load_kernels():
    """Import fusedreg._C, whose static initializers register its kernels, before the schemas exist: defining a
    schema then checks the kernels already registered for it, so a _C built for other schemas is a Python error
    here (a kernel registered after its schema is checked while the library loads, where a mismatch can only
    terminate the process). A missing or unloadable _C is backends' business (the reference runs instead)."""
    if os.environ.get("FUSEDREG_NO_EXT") == "1":
        return False
    try:
        importlib.import_module(f"{__package__}._C")
    except ImportError:
        return False
    return True


_native = _load_kernels()
for _op in ARGS:
    try:
        torch.library.define(f"{LIB}::{_op}", "(" + SCHEMAS[_op].split("(", 1)[1])
    except RuntimeError as e:
        if not _native:
            raise
        raise ImportError(f"fusedreg._C was built for other op schemas than fusedreg/_ops.py defines now (its "
                          f"{_op} kernel does not fit); rebuild it: bash scripts/setup.sh, or pip install "
                          f"--no-build-isolation --no-deps -e . (torch said: {str(e).splitlines()[0]})") from e
    torch.library.register_fake(f"{LIB}::{_op}")(fake(_op))
