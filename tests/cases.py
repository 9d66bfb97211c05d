"""The one builder of op calls, for the kernel tests of every backend, opcheck, the ecosystem and reliability
tests and bench/memcheck_step.py.

`build(op, ...)` makes a `Case`: the tensor lists of one call (params, grads, state in opmath, one-element
float32 step counters) and every other argument by keyword, named and defaulted from fusedreg._ops.ARGS, so that
no call depends on the order of a schema. A state list that its option leaves unused (momentum_buffers without
momentum, max_exp_avg_sqs without amsgrad) is empty, as the ops' contract asks. `compare` holds a kernel's
result against the reference's with the tolerances of tests/tolerances.py. `unchanged` (an op call's tensors) and
`snapshot` / `assert_unchanged` (a class's params and state, bit for bit) check that a refused step moved nothing.
"""
import copy

import torch

from fusedreg import _ops
from tolerances import STEP, rel_err

OPS = tuple(_ops.ARGS)
REDUCED = (torch.bfloat16, torch.float16)
# bf16/fp16 params: a kernel's error against an fp64 run of the reference may be at most this times the error of
# the reference run in the params' precision.
REDUCED_FACTOR = 2.0
# The lr of every case that names none (the schema has no default for it; muon_momentum_ has no lr).
LR = {"sgd_": 0.1, "adam_": 1e-2, "adagrad_": 0.1, "ftrl_": 0.1, "lion_": 1e-2, "muon_": 0.02}
SHAPES = ((5, 4), (7,), (0,))
# The state lists that hold squares or sums of squares (random ones are drawn >= 0); the others are signed.
NONNEG = ("exp_avg_sqs", "max_exp_avg_sqs", "state_sums", "accumulators")


def opmath(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def list_names(op):
    """The op's tensor lists, in schema order (rows, a keyword argument, is in a Case's kw)."""
    return [a.name for a in _ops.ARGS[op] if a.role and a.role != "rows"]


def roles(op):
    return {a.name: a.role for a in _ops.ARGS[op] if a.role and a.role != "rows"}


def at_offset(t, offset):
    """A copy of t that is a view at `offset` elements into its storage (misaligned for vector loads)."""
    if offset == 0 or t.dim() == 0:
        return t.clone()
    buf = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    view = buf[offset:].view(t.shape)
    view.copy_(t)
    return view


class Case:
    """One op call: `lists` (name -> list of tensors, schema order) and `kw` (every other argument, by name)."""

    def __init__(self, op, lists, kw):
        self.op, self.lists, self.kw = op, lists, kw

    @property
    def params(self):
        return self.lists["params"]

    @property
    def dtype(self):
        return self.params[0].dtype if self.params else None

    def args(self, **over):
        """(tensor lists, keyword arguments) of the call, `over` replacing any of them by name."""
        lists = {k: over.pop(k) if k in over else v for k, v in self.lists.items()}
        unknown = set(over) - set(self.kw)
        if unknown:
            raise TypeError(f"{self.op} has no arguments {sorted(unknown)}")
        return tuple(lists.values()), {**self.kw, **over}

    def call(self, fn, **over):
        """fn(tensor lists..., every scalar by keyword)."""
        args, kw = self.args(**over)
        fn(*args, **kw)

    def state(self):
        """name -> tensors a step writes: the params, every state list and the step counters."""
        r = roles(self.op)
        return {k: v for k, v in self.lists.items() if r[k] != "grad"}

    def clone(self, dtype=None, device=None, offset=0):
        """A deep copy; with `dtype`, params and grads in it and the state in its opmath (steps stay float32); with
        `offset`, every tensor of dim >= 1 a view at that storage offset. The AMP and lr tensors move along."""
        r = roles(self.op)

        def move(t, role):
            if dtype is not None and role != "steps":
                t = t.to(dtype if role in ("param", "grad") else opmath(dtype))
            t = t.to(device) if device is not None else t
            return at_offset(t, offset)

        lists = {k: [move(t, r[k]) for t in v] for k, v in self.lists.items()}
        kw = dict(self.kw)
        for k, v in kw.items():
            if isinstance(v, torch.Tensor):
                kw[k] = v.to(device or v.device, copy=True)
            elif isinstance(v, list):  # rows
                kw[k] = [t.to(device or t.device, copy=True) for t in v]
        return Case(self.op, lists, kw)

    def new_grads(self, gen, scale=None):
        """Fresh random grads (on CPU from `gen`, then to the params' device), times `scale` (default: the case's
        grad_scale, so that the kernel's division brings them back to unit size)."""
        if scale is None:
            gs = self.kw.get("grad_scale")
            scale = 1.0 if gs is None else float(gs)
        return [(torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(p.dtype).to(p.device)
                for p, shape in zip(self.params, self.grad_shapes())]

    def grad_shapes(self):
        """The grads' shapes: the params', or with rows (sparse grads) (len(rows[i]),) + params[i].shape[1:]."""
        rows = self.kw.get("rows")
        if not rows:
            return [p.shape for p in self.params]
        return [(len(r),) + tuple(p.shape[1:]) for p, r in zip(self.params, rows)]


def build(op, shapes=SHAPES, dtype=torch.float32, device="cpu", gen=None, scale=None, init=None, **hp):
    """The Case of one `op` call on params of `shapes`.

    hp: any scalar argument of the op by its _ops.ARGS name (the rest take their schema default, lr LR[op]).
    scale: grads times scale, with grad_scale = scale and found_inf = 0 (GradScaler's call), unless hp names them.
    init: {state name: value} fills those lists (step counters included) with the value instead of random
    mid-training values; a number fills them all.
    rows (ops with fusedreg._ops.ROWS): one list of distinct row indices per shape: sparse grads,
    the grads then being those rows' values.
    Values are drawn on CPU from `gen` (fp64, then rounded), so the same seed gives the same call on any device.
    """
    names = {a.name for a in _ops.ARGS[op]}
    unknown = set(hp) - names
    if unknown:
        raise TypeError(f"{op} has no arguments {sorted(unknown)}")
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    kw = {**_ops.defaults(op), **({"lr": LR[op]} if "lr" in names else {})}
    if scale is not None:
        kw.update(grad_scale=torch.tensor(float(scale)), found_inf=torch.zeros(()))
    kw.update(hp)
    if kw.get("rows") is not None:
        kw["rows"] = [torch.tensor(list(r), dtype=torch.int64) for r in kw["rows"]]
        gshapes = [(len(r),) + tuple(s[1:]) for r, s in zip(kw["rows"], shapes)]
    else:
        gshapes = shapes
    init = {} if init is None else init
    if not isinstance(init, dict):  # one value for every state list and step counter
        init = {a.name: init for a in _ops.ARGS[op] if a.role in ("state", "steps")}
    od = opmath(dtype)
    lists = {}
    for a in _ops.ARGS[op]:
        if not a.role or a.role == "rows":
            continue
        if a.when and not kw.get(a.when):
            lists[a.name] = []
        elif a.role == "steps":
            lists[a.name] = [torch.tensor(float(init.get(a.name, i % 3)), dtype=torch.float32)
                             for i in range(len(shapes))]
        elif a.name in init:
            lists[a.name] = [torch.full(s, float(init[a.name]), dtype=od) for s in shapes]
        elif a.role == "param":
            lists[a.name] = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
        elif a.role == "grad":
            lists[a.name] = [(torch.randn(s, generator=gen, dtype=torch.float64) * (scale or 1.0)).to(dtype)
                             for s in gshapes]
        elif a.name in NONNEG:  # mid-training values
            lists[a.name] = [(torch.rand(s, generator=gen, dtype=torch.float64) * 0.1).to(od) for s in shapes]
        else:
            lists[a.name] = [(torch.randn(s, generator=gen, dtype=torch.float64) * 0.1).to(od) for s in shapes]
    case = Case(op, lists, kw)
    return case.clone(device=device) if device != "cpu" else case


def shrink_groups(case, by=1e-3, every=3):
    """Scales every `every`-th group (a slice at group_dim) of each param of dim >= 2 by `by`, in place: small
    groups, which the group prox zeroes or which lie near its zero test's edge, beside groups it keeps."""
    for p in case.params:
        if p.dim() >= 2:
            idx = [slice(None)] * p.dim()
            idx[case.kw["group_dim"]] = slice(0, None, every)
            p[tuple(idx)] *= by
    return case


def compare(mine, ref, ref64=None):
    """Every tensor a step writes in `mine` against `ref`: same dtype and shape, step counters equal, the exact-zero
    pattern equal, and within tolerances.STEP, or (bf16/fp16 params, with `ref64` an fp64 reference run) an error
    against ref64 at most REDUCED_FACTOR times ref's own."""
    r = roles(mine.op)
    for name, tensors in mine.state().items():
        for i, (a, b) in enumerate(zip(tensors, ref.lists[name], strict=True)):
            a, b, where = a.cpu(), b.cpu(), f"{name}[{i}] {tuple(b.shape)}"
            assert a.dtype == b.dtype and a.shape == b.shape, where
            if r[name] == "steps":
                assert torch.equal(a, b), where
                continue
            assert torch.equal(a == 0, b == 0), f"{where}: exact-zero pattern differs"
            if a.numel() == 0:
                continue
            if ref64 is not None:
                c = ref64.lists[name][i].cpu().double()
                err, own = (a.double() - c).abs().max().item(), (b.double() - c).abs().max().item()
                assert err <= REDUCED_FACTOR * own, f"{where}: error {err:.3g} vs the reference's own {own:.3g}"
            else:
                assert rel_err(a, b) <= STEP[a.dtype], f"{where}: rel err {rel_err(a, b):.3g}"


def unchanged(case, before):
    """Every tensor of `case` (grads included) equals `before`'s."""
    for name, tensors in case.lists.items():
        for i, (a, b) in enumerate(zip(tensors, before.lists[name], strict=True)):
            assert torch.equal(a.cpu(), b.cpu()), f"{name}[{i}] changed"


def raw(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8).clone()


def snapshot(ps, opt=None):
    """Params (and their optimizer state) as raw bytes, to check bit for bit that a step changed nothing."""
    snap = [raw(p) for p in ps]
    if opt is not None:
        for p in ps:
            st = opt.state.get(p, {})
            snap.append({k: raw(v) if torch.is_tensor(v) else copy.deepcopy(v) for k, v in st.items()})
    return snap


def assert_unchanged(ps, opt, snap):
    now = snapshot(ps, opt)
    assert len(now) == len(snap)
    for i, (a, b) in enumerate(zip(now, snap)):
        if torch.is_tensor(a):
            assert torch.equal(a, b), f"param {i} changed"
        else:
            assert a.keys() == b.keys(), f"state keys of param {i - len(ps)} changed: {b.keys()} -> {a.keys()}"
            for k in a:
                same = torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k]
                assert same, f"state {k!r} of param {i - len(ps)} changed"
