"""The penalty family around the optimizers: elastic-net keywords, the penalty's value, a sparsity table, and
param groups that keep biases and normalization weights unpenalized.

The optimizers' convention, which `penalty` evaluates (groups: rows or columns of params with dim >= 2):
    l1 * sum|w|  +  1/2 * (weight_decay + l2) * sum w^2  +  group_l1 * sum_g sqrt(|g|) * ||w_g||  +  l0 * #{w != 0}
"""
import fnmatch
import math
from dataclasses import dataclass

import torch
from torch import nn

from . import _ops
from . import functional as F
from . import reference

__all__ = ["elastic_net", "penalty", "sparsity", "Sparsity", "SparsityRow", "param_groups", "last_layer",
           "PENALTY_KEYS", "lambda_max", "LambdaMaxReport"]

# Group keys that add to the objective (or constrain it); param_groups zeroes them in the unpenalized group.
# The group keys that penalize: weight decay and the penalties of the ops (fusedreg._ops.PENALTY), with the value
# that turns each off (param_groups gives the unpenalized group those).
# l1's switches (the optimizers' l1_mode) are no penalty of their own.
_L1_SWITCHES = ("l1_subgradient", "l1_decoupled")
_OFF = dict(weight_decay=0.0, **{a.name: a.default for a in _ops.PENALTY
                                 if a.type in ("float", "bool") and a.name not in _L1_SWITCHES})
PENALTY_KEYS = tuple(_OFF)


def elastic_net(alpha, l1_ratio=0.5, *, group=False, tasks=None):
    """Optimizer keywords for scikit-learn's elastic net alpha*l1_ratio*||w||_1 + alpha*(1 - l1_ratio)/2*||w||^2.

    Returns dict(l1=alpha*l1_ratio, weight_decay=alpha*(1 - l1_ratio)). With SGD, Adam or Adagrad (coupled
    weight decay, g += wd*w) on the loss 0.5*mean((Xw + c - y)^2) this is `sklearn.linear_model.ElasticNet(alpha,
    l1_ratio)`. AdamW's weight_decay is decoupled (w *= 1 - lr*wd, not scaled by Adam's denominator), so with AdamW
    the L2 part is not sklearn's term and the solution differs.

    group=True is `MultiTaskElasticNet(alpha, l1_ratio)` for an nn.Linear with `tasks` outputs, on the loss
    0.5*((X@W.T + c - Y)**2).sum(1).mean(): sklearn's alpha*l1_ratio*Σ_j ||W[:, j]||_2 over input features is
    fusedreg's group_l1*sqrt(tasks)*||W[:, j]|| with group_dim=1, so it returns dict(group_l1=alpha*l1_ratio /
    sqrt(tasks), group_dim=1, weight_decay=alpha*(1 - l1_ratio)). l1_ratio=1 is MultiTaskLasso.
    """
    alpha, l1_ratio = float(alpha), float(l1_ratio)
    if math.isnan(alpha) or alpha < 0 or math.isinf(alpha):
        raise ValueError(f"Invalid alpha {alpha} (must be finite and >= 0)")
    if not 0.0 <= l1_ratio <= 1.0:
        raise ValueError(f"Invalid l1_ratio {l1_ratio} (must be in [0, 1])")
    if not group:
        if tasks is not None:
            raise ValueError("tasks is the group size of group=True; without group it means nothing")
        return dict(l1=alpha * l1_ratio, weight_decay=alpha * (1.0 - l1_ratio))
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise ValueError(f"group=True needs tasks, the number of outputs (the group size), as an int >= 1; "
                         f"got {tasks!r}")
    return dict(group_l1=alpha * l1_ratio / math.sqrt(tasks), group_dim=1, weight_decay=alpha * (1.0 - l1_ratio))


def _named(obj):
    """[(name, tensor)] from a module, an optimizer, a tensor, a {name: tensor} dict, or an iterable of tensors,
    (name, tensor) pairs or param-group dicts. Unnamed tensors are called p0, p1, ... in order."""
    if isinstance(obj, nn.Module):
        return list(obj.named_parameters())
    if isinstance(obj, torch.optim.Optimizer):
        obj = obj.param_groups
    if torch.is_tensor(obj):
        obj = [obj]
    if isinstance(obj, dict):
        obj = list(obj.items())
    out = []
    for item in obj:
        if isinstance(item, dict):  # a param group
            ps = item["params"]
            out += [(None, p) for p in ([ps] if torch.is_tensor(ps) else ps)]
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            out.append(item)
        elif torch.is_tensor(item):
            out.append((None, item))
        else:
            raise TypeError(f"expected tensors, (name, tensor) pairs or param groups, got {type(item).__name__}")
    return [(f"p{i}" if n is None else n, t) for i, (n, t) in enumerate(out)]


def _tensor_penalty(w, l1, half_l2, group_l1, group_dim, l0):
    """Sum of the penalty over one tensor, computed and accumulated in fp64 (a logging value should not carry
    fp32 rounding): one elementwise pass and one reduction, plus the group norms (one more reduction) when
    group_l1 != 0 and dim >= 2."""
    acc = torch.zeros((), dtype=torch.float64, device=w.device)
    if w.numel() == 0:
        return acc
    x = w.detach().to(torch.complex128 if w.is_complex() else torch.float64)
    if l1 != 0 or half_l2 != 0:
        m = x.abs()  # the modulus for a complex param, whose l1 is λ·|z|
        if l1 != 0 and half_l2 != 0:
            integrand = m * l1 + m * m * half_l2
        else:
            integrand = m * l1 if l1 != 0 else m * m * half_l2
        acc = acc + integrand.sum(dtype=torch.float64)
    if l0 != 0:
        acc = acc + l0 * torch.count_nonzero(x).to(torch.float64)
    if group_l1 != 0 and x.dim() >= 2:
        norms = torch.linalg.vector_norm(x, dim=reference.group_dims(x.dim(), group_dim))
        acc = acc + (group_l1 * math.sqrt(reference.group_size(x.shape, group_dim))) * norms.sum()
    return acc


def _ftrl(group):
    """An Ftrl group's penalty in penalty()'s terms: FTRL's l2 is the penalty l2·Σw² (TensorFlow's
    l2_regularization_strength) and l2_shrinkage adds 2·l2_shrinkage·w to the gradient, l2_shrinkage·Σw²."""
    return dict(l1=group["l1"], weight_decay=0, group_l1=group["group_l1"], group_dim=group["group_dim"],
                l0=group["l0"], l2=2 * (group["l2"] + group["l2_shrinkage"]))


@torch.no_grad()
def penalty(params_or_model, *, l1=None, weight_decay=None, group_l1=None, group_dim=None, l2=None, l0=None):
    """The value of the penalty the optimizers apply (for logging; not differentiable):

        l1*sum|w| + 1/2*(weight_decay + l2)*sum w^2 + group_l1*sum_g sqrt(|g|)*||w_g|| + l0*#{w != 0}

    Returns a 0-dim tensor on the first tensor's device, in the params' dtype (the widest of them: float32 for a
    float32 model, so `loss + penalty(model, l1=...)` stays float32; the real dtype for complex params). It is
    summed in float64 and cast once, and reading it is the caller's choice (`.item()` syncs a GPU).

    What it covers:
      a module     its params as `param_groups(module, **keywords)` places them: biases and normalization
                   weights carry no penalty, and group_l1 leaves the output layer's rows out (see param_groups).
      an optimizer with no keywords: each param group's own l1, weight_decay, group_l1, group_dim (and
                   Adagrad's l2, l0), so `loss + fusedreg.penalty(opt)` is the objective being minimized (for AdamW
                   the decoupled decay is reported as 1/2*wd*||w||^2, which is only what it approximates; for
                   Ftrl, whose l2 is TensorFlow's, l2*||w||^2, and l2_shrinkage*||w||^2). With keywords: every
                   param of the optimizer, with those.
      tensors      (an iterable of tensors, (name, tensor) pairs or param groups) every one of them.
    Groups are the rows (group_dim=0, p[i]) or columns (group_dim=1, p[:, j]) of tensors with dim >= 2; 1-D
    tensors add no group term. Per tensor: one fp64 elementwise pass and one reduction.
    """
    given = dict(l1=l1, weight_decay=weight_decay, group_l1=group_l1, group_dim=group_dim, l2=l2, l0=l0)
    if isinstance(params_or_model, torch.optim.Optimizer) and all(v is None for v in given.values()):
        settings = [(g["params"], {k: g.get(k, 0) for k in given} if "lr_power" not in g else _ftrl(g))
                    for g in params_or_model.param_groups]
    elif isinstance(params_or_model, nn.Module):
        keys = {k: v for k, v in given.items() if v is not None}
        settings = [(g["params"], {k: g.get(k, 0) for k in given}) for g in param_groups(params_or_model, **keys)]
    else:
        settings = [([t for _, t in _named(params_or_model)], {k: (0 if v is None else v) for k, v in given.items()})]
    total, device, dtype = None, None, None
    for tensors, s in settings:
        F.check_args(**s)
        for t in tensors:
            part = _tensor_penalty(t, float(s["l1"]), 0.5 * (float(s["weight_decay"]) + float(s["l2"])),
                                   float(s["group_l1"]), s["group_dim"], float(s["l0"]))
            real = t.real.dtype if t.is_complex() else t.dtype
            if total is None:
                total, device, dtype = part, t.device, real
            else:
                total, dtype = total + part.to(device), torch.promote_types(dtype, real)
    if total is None:
        return torch.zeros(())
    return total.to(dtype if dtype.is_floating_point else torch.get_default_dtype())


@dataclass(frozen=True)
class SparsityRow:
    """One tensor's exact zeros. zero_rows/zero_cols (all-zero p[i] = pruned output neurons, all-zero p[:, j] =
    pruned input features) and n_rows/n_cols are None for tensors with dim < 2."""
    name: str
    shape: tuple
    numel: int
    zeros: int
    fraction: float
    zero_rows: "int | None"
    n_rows: "int | None"
    zero_cols: "int | None"
    n_cols: "int | None"


class _Rows:
    """A table of per-tensor rows (each with a .name): len, iteration, and indexing by position or by name."""

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, key):
        if isinstance(key, str):
            for r in self.rows:
                if r.name == key:
                    return r
            raise KeyError(key)
        return self.rows[key]


class Sparsity(_Rows):
    """Exact-zero counts per tensor (`rows`) and overall (`overall`, `zeros`, `numel`); prints as a table."""

    def __init__(self, rows):
        self.rows = list(rows)
        self.numel = sum(r.numel for r in self.rows)
        self.zeros = sum(r.zeros for r in self.rows)
        self.overall = self.zeros / self.numel if self.numel else 0.0


    def as_dict(self):
        return {r.name: r for r in self.rows}

    def __str__(self):
        def frac(n, d):
            return "-" if n is None else f"{n}/{d}"
        head = ("tensor", "shape", "numel", "zeros", "zero %", "zero rows", "zero cols")
        body = [(r.name, "x".join(map(str, r.shape)) or "()", str(r.numel), str(r.zeros), f"{100 * r.fraction:.2f}",
                 frac(r.zero_rows, r.n_rows), frac(r.zero_cols, r.n_cols)) for r in self.rows]
        foot = ("total", "", str(self.numel), str(self.zeros), f"{100 * self.overall:.2f}", "", "")
        table = [head] + body + [foot]
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]

        def fmt(row):
            cells = (c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
            return "  ".join(cells).rstrip()
        rule = "-" * max(len(fmt(r)) for r in table)
        return "\n".join([fmt(head), rule] + [fmt(r) for r in body] + [rule, fmt(foot)])

    __repr__ = __str__


def _all_zero_slices(x, dim):
    return int((~(x != 0).any(dim=reference.group_dims(x.dim(), dim))).sum()) if x.shape[dim] else 0


@torch.no_grad()
def sparsity(model_or_params):
    """Exact-zero fraction per tensor and overall, and all-zero rows/columns per matrix (see Sparsity).

    Accepts a module (named_parameters), an optimizer, a {name: tensor} dict, or an iterable of tensors (named
    p0, p1, ...) or (name, tensor) pairs. For dim > 2 a row is p[i] and a column p[:, j]."""
    rows = []
    for name, t in _named(model_or_params):
        x = t.detach()
        n = x.numel()
        zeros = n - int(torch.count_nonzero(x)) if n else 0
        if x.dim() >= 2:
            zr, nr = _all_zero_slices(x, 0), x.shape[0]
            zc, nc = _all_zero_slices(x, 1), x.shape[1]
        else:
            zr = nr = zc = nc = None
        rows.append(SparsityRow(name, tuple(x.shape), n, zeros, zeros / n if n else 0.0, zr, nr, zc, nc))
    return Sparsity(rows)


_NORM_TYPES = tuple(t for t in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                getattr(nn, "RMSNorm", None), nn.LocalResponseNorm) if t is not None)
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)
_GLOB = frozenset("*?[")


def last_layer(model):
    """The module that produces `model`'s output, as param_groups' "output" rule reads it: the last module, in
    registration order, that owns a parameter of dim >= 2 (for a Sequential or a model whose head is defined
    last: the head), or None when the model has fewer than two such modules (a single layer has no hidden
    layer to keep apart from it)."""
    owners = [m for m in model.modules() if any(p.dim() >= 2 for p in m.parameters(recurse=False))]
    return owners[-1] if len(owners) >= 2 else None


def _matches(rule, full_name, leaf, param, module, output):
    """Whether one rule of param_groups (no_penalty, no_group, exclude, include) matches a parameter."""
    if isinstance(rule, str):
        if rule == "norm":
            return isinstance(module, _NORM_TYPES)
        if rule == "embedding":
            return isinstance(module, _EMBEDDING_TYPES)
        if rule == "1d":
            return param.dim() < 2
        if rule == "output":
            return module is output
        if _GLOB & set(rule):
            return fnmatch.fnmatchcase(full_name, rule)
        return (leaf == rule or full_name == rule or full_name.endswith("." + rule)
                or full_name.startswith(rule + "."))  # the last: every param of the module named `rule`
    if isinstance(rule, type) and issubclass(rule, nn.Module):
        return isinstance(module, rule)
    if callable(rule):
        return bool(rule(full_name, param))
    raise TypeError(f"param_groups rules are str, nn.Module instances or types, or callables (name, param) -> bool, "
                    f"got {rule!r}")


def _rules(rules):
    """A rule list as a tuple; a module instance becomes the callable that tests its params' ids, collected once
    (not once per parameter of the model)."""
    if rules is None:
        return ()
    if isinstance(rules, (str, type, nn.Module)) or callable(rules):
        rules = (rules,)
    return tuple(_owns(r) if isinstance(r, nn.Module) else r for r in rules)


def _owns(module):
    ids = frozenset(id(p) for p in module.parameters())
    return lambda full_name, param: id(param) in ids


def param_groups(model, *, no_penalty=("bias", "norm"), no_group=("output",), exclude=(), include=(), **options):
    """Param groups for a fusedreg (or torch) optimizer: [penalized, penalized without group lasso,
    unpenalized], empty ones left out.

    The penalized group gets every keyword given (l1=..., weight_decay=..., group_l1=..., group_dim=..., lr=...).
    The group without group lasso gets them too, with group_l1 = 0; it holds the params `no_group` matches, and
    is only made when group_l1 is given. The unpenalized group gets the non-penalty keywords (lr, group_dim, ...)
    and every penalty (PENALTY_KEYS) off (l2 only when l2 is given), always, so AdamW's default decay does not
    reach it.

    Which params go where, by rules (each a str, an nn.Module type or instance, or a callable):
      no_penalty  (default "bias", "norm") no penalty at all: biases and normalization layers' weights.
      no_group    (default "output") no group lasso: the output layer, whose rows are the model's outputs (the
                  classes); only where groups are rows (group_dim=0): its columns (group_dim=1) are the last
                  hidden layer's neurons, which group lasso may prune.
      exclude     more no_penalty rules, added to the defaults (exclude="encoder" leaves a submodule alone).
      include     params every penalty reaches, whatever the rules above say (include="head" puts the output
                  layer under group lasso; include="bias" penalizes the biases too).
    A rule matches a parameter when it is:
      "bias"       (any other str) the param's name, the end of its full name after a "." (`fc.bias`), or the
                   name of a module holding it (`"encoder"` matches `encoder.0.weight`)
      "a.*.weight" a str with *, ? or [...]: a glob (fnmatch) over the full name
      "norm"       it belongs to a normalization layer (BatchNorm*, InstanceNorm*, LayerNorm, GroupNorm, RMSNorm)
      "embedding"  it belongs to nn.Embedding / nn.EmbeddingBag (not in the defaults: embedding rows are often
                   worth penalizing, e.g. group lasso over tokens)
      "1d"         it has dim < 2 (every bias and scale vector)
      "output"     it belongs to the output layer (`last_layer`: the last module, in registration order, with a
                   weight of dim >= 2; none when the model has one such layer only)
      a type       it belongs to a module of that nn.Module subclass; a module: it is one of that module's params
      a callable   rule(full_name, param) is true
    A shared (tied) param is listed once, and a rule matches it when it matches under any of its names.
    """
    no_penalty, no_group = _rules(no_penalty) + _rules(exclude), _rules(no_group)
    include = _rules(include)
    group_rows = "group_l1" in options and options.get("group_dim", 0) == 0
    output = last_layer(model)
    params, hits = {}, {}  # id -> param in first-seen order; id -> the rule lists that matched it
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for leaf, p in module.named_parameters(recurse=False):
            params.setdefault(id(p), p)
            full = f"{mod_name}.{leaf}" if mod_name else leaf
            seen = hits.setdefault(id(p), set())
            for kind, rules in (("include", include), ("free", no_penalty), ("no_group", no_group)):
                if kind not in seen and any(_matches(r, full, leaf, p, module, output) for r in rules):
                    seen.add(kind)
    where = {i: ("penalized" if "include" in s else "free" if "free" in s
                 else "no_group" if "no_group" in s and group_rows else "penalized") for i, s in hits.items()}
    zero = {k: v for k, v in _OFF.items() if k != "l2" or "l2" in options}  # l2 is Adagrad's key only
    rest = {k: v for k, v in options.items() if k not in PENALTY_KEYS}
    settings = dict(penalized=options, no_group=dict(options, group_l1=0.0), free=dict(rest, **zero))
    groups = [dict(params=[p for i, p in params.items() if where[i] == kind], **settings[kind])
              for kind in ("penalized", "no_group", "free")]
    return [g for g in groups if g["params"]]


@dataclass(frozen=True)
class LambdaMaxRow:
    """One tensor's gradient scale. l1_max: the L1 strength above which a weight of this tensor at zero stays
    zero (max |g|; for the Adam family too, where the prox threshold is lr·λ/denom against a step lr·m/denom).
    median: half of the tensor's weights would stay at zero above it. group_max: the same bound for group lasso
    (max over groups of ||g_group|| / sqrt(group size)), None for 1-D tensors. penalized: whether the optimizer
    (or param_groups' defaults, for a module) puts a penalty on it; only those count in `overall`."""
    name: str
    shape: tuple
    l1_max: float
    median: float
    group_max: "float | None"
    penalized: bool = True


class LambdaMaxReport(_Rows):
    """Per-tensor λ_max from one batch's gradients (`lambda_max`); prints as a table. With `l1` (or an
    optimizer) given, each row also shows l1 / l1_max: at >= 1 every weight of that tensor that reaches zero
    stays there, and one well above 1 zeroes the tensor within a few steps.

    `decoupled` ({tensor name: bound}): the tensors an Adam-family or Adagrad optimizer steps with
    l1_mode="decoupled", whose l1 / λ_max is against that bound instead: the threshold is lr·l1 against a step of
    lr times the normalized direction m̂/(√v̂ + eps) (Adagrad: g/(√sum + eps)), so a weight at zero stays there
    when l1 >= |direction|, which at the first step is |g|/(√(acc + g²) + eps) (acc: Adagrad's initial
    accumulator, else 0): about 1 for every tensor whatever its gradients' size (the reason for the mode), below
    1 only where |g| is near eps."""

    def __init__(self, rows, l1=None, group_dim=0, decoupled=None):
        self.rows, self.l1, self.group_dim = list(rows), l1, group_dim
        self.decoupled = dict(decoupled or {})

    @property
    def overall(self):
        """The largest l1_max over the penalized tensors: an l1 at least this large keeps every penalized weight
        at zero once it is there."""
        return max((r.l1_max for r in self.rows if r.penalized), default=0.0)

    def __str__(self):
        head = ["tensor", "shape", "λ_max (l1)", "median |g|", f"λ_max (group, dim {self.group_dim})"]
        l1 = self.l1 or {}
        if l1 or not all(r.penalized for r in self.rows):
            head.append("l1 / λ_max")
        body = []
        for r in self.rows:
            row = [r.name, "x".join(map(str, r.shape)) or "()", f"{r.l1_max:.3g}", f"{r.median:.3g}",
                   "-" if r.group_max is None else f"{r.group_max:.3g}"]
            if len(head) > 5:
                lam = l1.get(r.name, 0.0)
                bound = self.decoupled.get(r.name, r.l1_max)
                ratio = lam / bound if bound > 0 else math.inf if lam > 0 else 0.0
                row.append("not penalized" if not r.penalized else "-" if not lam else
                           f"{ratio:.3g}" + ("  (zeroes it)" if ratio >= 1 else "") +
                           (f"  (decoupled: λ_max {bound:.3g})" if r.name in self.decoupled else ""))
            body.append(row)
        table = [head] + body
        widths = [max(len(row[i]) for row in table) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
                 for row in table]
        lines.insert(1, "-" * max(len(x) for x in lines))
        if any(r.penalized for r in self.rows):
            over = "" if all(r.penalized for r in self.rows) else ", over the penalized tensors"
            lines.append(f"overall λ_max (l1) = {self.overall:.3g}{over}: an l1 at or above a tensor's λ_max zeroes "
                         "that tensor; pick l1 well below it")
        else:
            lines.append("no tensor here is penalized")
        return "\n".join(lines)

    __repr__ = __str__


def _penalized_ids(model_or_params, optimizer):
    """ids of the params a penalty reaches: the optimizer's groups with some penalty on; else, for a module,
    what param_groups' defaults penalize; else (plain tensors) all of them."""
    if optimizer is not None:
        return {id(p) for g in optimizer.param_groups for p in g["params"]
                if any(g.get(k, v) != v for k, v in _OFF.items())}
    if isinstance(model_or_params, nn.Module):
        groups = param_groups(model_or_params, l1=1.0)
        return {id(p) for g in groups if g["l1"] for p in g["params"]}
    return None


def lambda_max(model_or_params, loss=None, *, optimizer=None, l1=None, group_dim=0):
    """Per-tensor λ_max from one batch's gradients, as a table (LambdaMaxReport): how large an l1 (or group_l1)
    each tensor can take before the proximal step holds all of it at zero. Use it before choosing l1 for a
    network: e.g. a small GPT-2's query/key gradients are ~1e-5, so l1=1e-4 zeroes them in a few steps.

    loss: a scalar loss on one batch, not yet backpropagated (its graph is kept, the params' .grad untouched);
    None reads the .grad already there. Tensors without a gradient are left out. optimizer: a fusedreg
    optimizer whose groups' l1 values are compared against each tensor's λ_max (or pass l1=value for all); in its
    l1_mode="decoupled" groups (Adam, AdamW, Adagrad) against the bound of that mode, about 1 whatever the
    gradients' size (LambdaMaxReport).
    Only penalized tensors count in the overall λ_max: with an optimizer, those in a group with some penalty on;
    for a module without one, those `param_groups(model)` penalizes (not biases or normalization weights).
    The others are listed as "not penalized".
    """
    named = _named(model_or_params)
    params = [(n, p) for n, p in named if p.requires_grad or loss is None]
    if loss is not None:
        grads = torch.autograd.grad(loss, [p for _, p in params], retain_graph=True, allow_unused=True)
    else:
        grads = [p.grad for _, p in params]
    reached = _penalized_ids(model_or_params, optimizer)
    rows = []
    for (name, p), g in zip(params, grads):
        if g is None:
            continue
        a = g.detach().abs().double().flatten()
        group = None
        if g.dim() >= 2:
            norms = torch.linalg.vector_norm(g.detach().double(), dim=reference.group_dims(g.dim(), group_dim))
            group = float(norms.max()) / math.sqrt(reference.group_size(g.shape, group_dim))
        rows.append(LambdaMaxRow(name, tuple(g.shape), float(a.max()) if a.numel() else 0.0,
                                 float(a.median()) if a.numel() else 0.0, group,
                                 reached is None or id(p) in reached))
    lams, decoupled = None, {}
    if optimizer is not None:
        ids = {id(p): n for n, p in named}
        lams = {ids[id(p)]: float(gr.get("l1", 0.0)) for gr in optimizer.param_groups for p in gr["params"]
                if id(p) in ids}
        grad_of = {n: g for (n, _), g in zip(params, grads) if g is not None}
        for gr in optimizer.param_groups:
            # SGD's decoupled l1 is its prox (the bound above); Ftrl refuses the mode.
            if gr.get("l1_mode") != "decoupled" or "eps" not in gr:
                continue
            acc = float(gr.get("initial_accumulator_value", 0.0)) if "lr_decay" in gr else 0.0
            for p in gr["params"]:
                g = grad_of.get(ids.get(id(p)))
                if g is not None:
                    a = g.detach().abs().double().flatten()
                    step = a / ((acc + a * a).sqrt() + float(gr["eps"]))  # the first step's direction
                    decoupled[ids[id(p)]] = float(step.max()) if a.numel() else 0.0
    elif l1 is not None:
        lams = {r.name: float(l1) for r in rows if r.penalized}
    return LambdaMaxReport(rows, lams, group_dim, decoupled)
