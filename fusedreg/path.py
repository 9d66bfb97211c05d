"""One model along a λ grid: the penalty at each λ, where the path starts, how each λ is trained, and which way
the grid is walked. `fusedreg.select` (choosing λ by cross-validation) runs one such path per fold; its
docstring says why a linear model walks down from λ_max and a network walks up, with the measurements.

- `penalty_keys`: the optimizer group keys of a penalty at one λ; `param_groups` (default fusedreg.param_groups)
  puts them on the weights to penalize.
- `start_model`: the path's starting point (the output bias at the best constant; a linear model's weight at
  zero, its λ_max solution). `default_loss` by task: ½·MSE (`half_mse`, scikit-learn's Lasso objective) or
  cross-entropy.
- `grid_lambda_max`: the λ at which the whole-data loss gradient keeps every penalized weight of the model at
  zero, the top of select's grid (fusedreg.lambda_max is another thing: a per-tensor report from one batch's
  gradients); `calibrate_lambda_max` doubles it until training at it really zeroes a network.
- `walk_path`: trains one model along the grid with warm starts, down (large to small λ) or up, calling back
  after each λ. Each λ trains full-batch to convergence for an nn.Linear (`fit_full_batch`: proximal gradient
  at lr = 1/L, `lipschitz`, with FISTA extrapolation) or for some epochs of mini-batches otherwise
  (`train_epochs`); `_training` fills in those defaults.
- `path_units` / `path_steps`: what a path reports to a progress bar, so a bar's total is known up front.
"""
import copy
import math

import torch

from .folds import DataError, infer_task
from .optim import SGD, Adam
from .penalties import elastic_net, param_groups as _default_param_groups

PENALTY_NAMES = ("l1", "elastic_net", "group_l1", "l2")
DIRECTIONS = ("auto", "down", "up")


def half_mse(out, y):
    """½·mean over rows of the squared error summed over outputs: scikit-learn's Lasso / ElasticNet objective
    for a 1-D y and MultiTaskLasso / MultiTaskElasticNet's for a 2-D y."""
    d = out.reshape(y.shape) - y
    return 0.5 * d.pow(2).reshape(len(y), -1).sum(1).mean()


def penalty_keys(penalty, lam, *, l1_ratio=0.5, group_dim=0):
    """The optimizer group keys for `penalty` at strength `lam` (penalty: a name in PENALTY_NAMES or a
    callable lam -> dict)."""
    if callable(penalty):
        return dict(penalty(lam))
    if penalty == "l1":
        return dict(l1=lam)
    if penalty == "l2":
        return dict(weight_decay=lam)
    if penalty == "elastic_net":
        return dict(elastic_net(lam, l1_ratio))
    if penalty == "group_l1":
        return dict(group_l1=lam, group_dim=group_dim)
    raise ValueError(f"unknown penalty {penalty!r}; choose one of {PENALTY_NAMES} or pass a callable")


# -------------------------------------------------------------------------------------- the path's start

def linear_layer(model):
    """The nn.Linear of a linear model (an nn.Linear, or a Sequential of one Linear with Flatten/Identity), else
    None. For such a model the loss is convex in the weights, so λ_max at zero weights is exact."""
    if isinstance(model, torch.nn.Linear):
        return model
    if isinstance(model, torch.nn.Sequential):
        mods = list(model)
        lin = [m for m in mods if isinstance(m, torch.nn.Linear)]
        if len(lin) == 1 and all(isinstance(m, (torch.nn.Linear, torch.nn.Flatten, torch.nn.Identity)) for m in mods):
            return lin[0]
    return None


def output_layer(model):
    """The last nn.Linear of `model` when it is the model's output (an nn.Linear, or a Sequential ending in
    one), else None."""
    if isinstance(model, torch.nn.Linear):
        return model
    if isinstance(model, torch.nn.Sequential) and len(model) and isinstance(model[-1], torch.nn.Linear):
        return model[-1]
    return None


@torch.no_grad()
def start_model(model, y, task, *, init_bias=True):
    """Put `model` at the start of a path. init_bias: the output bias at the best constant prediction for y
    (regression: its mean; classification: the log class frequencies, centered), so the unpenalized intercept
    is right from the first step. A linear model also gets a zero weight: its λ_max solution."""
    out = output_layer(model)
    if init_bias and out is not None and out.bias is not None:
        b = out.bias
        if task == "regression":
            mean = y.to(b.dtype).reshape(len(y), -1).mean(0)
            if mean.numel() in (1, b.numel()):
                b.copy_(mean.expand(b.shape))
        elif int(y.max()) < b.numel():
            counts = torch.bincount(y.flatten().cpu(), minlength=b.numel()).to(b.dtype)
            logp = torch.log(counts.clamp_min(0.5) / len(y))  # an absent class gets half a row
            b.copy_((logp - logp.mean()).to(b.device))
    lin = linear_layer(model)
    if lin is not None:
        lin.weight.zero_()
    return model


def default_loss(task):
    return half_mse if task == "regression" else torch.nn.functional.cross_entropy


def lipschitz(X, task):
    """A Lipschitz constant of the default loss's gradient for a linear model with an intercept:
    ||[X, 1]||_2² / n for ½·MSE; half of it for cross-entropy (the softmax Hessian is at most ½·I)."""
    A = torch.cat([X.reshape(len(X), -1).double(), torch.ones(len(X), 1, dtype=torch.float64, device=X.device)], 1)
    L = float(torch.linalg.matrix_norm(A, 2)) ** 2 / len(X)
    return L if task == "regression" else 0.5 * L


# ------------------------------------------------------------------------------------------------- training

def train_epochs(model, optimizer, X, y, *, epochs, batch_size, loss_fn, generator, progress=None):
    """Mini-batch training for `epochs` epochs (batches drawn with `generator`, a CPU torch.Generator)."""
    model.train()
    n = len(X)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(X.device)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(X[idx]), y[idx]).backward()
            optimizer.step()
            if progress is not None:
                progress.update(1)


def fit_full_batch(model, optimizer, X, y, *, steps, loss_fn, tol=1e-6, accelerate=True):
    """Full-batch proximal gradient until the largest change of a step is at most tol times the largest
    parameter, or `steps` steps; returns the steps taken. accelerate: FISTA's extrapolation before each step
    (the prox step then runs from the extrapolated point) with gradient-based adaptive restart (O'Donoghue &
    Candès), which keeps it monotone in practice; use it with fusedreg.SGD without momentum only."""
    model.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    with torch.no_grad():
        prev = [p.detach().clone() for p in params]
    t = 1.0
    for k in range(steps):
        with torch.no_grad():
            start = [p.detach().clone() for p in params]  # w_k
            if accelerate and k:
                t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
                torch._foreach_add_(params, torch._foreach_sub(start, prev), alpha=(t - 1) / t_next)
                t = t_next
                point = [p.detach().clone() for p in params]  # where the gradient is taken
            else:
                point = start
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(X), y).backward()
        optimizer.step()
        with torch.no_grad():
            moved = torch._foreach_sub(params, point)
            # One host sync per step: the largest move, the largest parameter, and the restart test
            # Σ (point - w_new)·(w_new - w_k) > 0 (the step turned against the momentum).
            stats = torch.stack([torch.stack(torch._foreach_norm(moved, float("inf"))).max(),
                                 torch.stack(torch._foreach_norm(params, float("inf"))).max(),
                                 -sum((m * (p - w)).sum() for m, p, w in zip(moved, params, start))]).tolist()
            if stats[2] > 0:
                t = 1.0
            prev = start
        if stats[0] <= tol * stats[1]:
            return k + 1
    return steps


class _Capped:
    """Forwards at most `n` progress updates, so work a bar's total did not count (a restart, a calibration
    retry) never makes the total grow or the bar pass 100%."""

    def __init__(self, bar, n):
        self.bar, self.left = bar, n

    def update(self, k=1):
        k = min(k, self.left)
        if k > 0 and self.bar is not None:
            self.bar.update(k)
            self.left -= k


def zero_fraction(params):
    params = list(params)
    total = sum(p.numel() for p in params)
    return sum(int((p == 0).sum()) for p in params) / max(total, 1)


def _penalized(groups, keys):
    """The params of the groups where one of the penalty keys is nonzero."""
    return [p for g in groups if any(g.get(k, 0) for k in keys if k != "group_dim") for p in g["params"]]


# ---------------------------------------------------------------------------------- λ_max: the top of the grid

def _group_norms(g, dim):
    if g.dim() < 2:
        return g.abs().flatten()
    # group_dim=1: one group per column (input feature of a Linear weight); 0: one per row (output neuron).
    return torch.linalg.vector_norm(g.flatten(1) if dim == 0 else g.transpose(0, 1).flatten(1), dim=1)


def grid_lambda_max(model, X, y, penalty="l1", *, l1_ratio=0.5, group_dim=0, loss_fn=None, param_groups=None):
    """The smallest λ at which a proximal step keeps every penalized weight of `model` at zero, taken from the
    loss gradient at the current weights over all of (X, y): the first value of select_lambda's grid. Exact for
    a linear model at zero weight with the bias at its best constant (`start_model`); for a network see
    fusedreg.select's docstring (step 1) and `calibrate_lambda_max`. Does not change the model.
    Not fusedreg.lambda_max, which reports per tensor the l1 that holds it at zero under one batch's gradients."""
    loss_fn = loss_fn or default_loss(infer_task(y))
    param_groups = param_groups or _default_param_groups
    keys = penalty_keys(penalty, 1.0, l1_ratio=l1_ratio, group_dim=group_dim)
    params = _penalized(param_groups(model, **keys), keys)
    if not params:
        raise ValueError("no parameter is penalized: the param_groups builder put the penalty on no group")
    for name, t in (("X", X), ("y", y)):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise DataError(f"{name} has NaN or inf values; drop or impute them before computing λ_max")
    grads = torch.autograd.grad(loss_fn(model(X), y), params, allow_unused=True)
    bound = 0.0
    for g in grads:
        if g is None:
            continue
        if "group_l1" in keys:
            if g.dim() < 2:  # the group penalty adds nothing for 1-D tensors
                continue
            # The penalty is group_l1 * sqrt(|g|) * ||w_g|| (fusedreg.penalty's convention).
            gd = keys.get("group_dim", group_dim)
            size = g.numel() // g.shape[gd]
            bound = max(bound, float(_group_norms(g, gd).max()) / math.sqrt(size))
        else:
            bound = max(bound, float(g.abs().max()))
    if not math.isfinite(bound):
        raise ValueError("the loss gradient is NaN or inf at the initial weights: check the model and the loss")
    # Only the L1 part thresholds: elastic net's l1 = λ·l1_ratio, so the bound grows by 1/l1_ratio (glmnet's).
    share = float(keys.get("group_l1", 0) if "group_l1" in keys else keys.get("l1", 0))
    if share <= 0:
        raise ValueError("the penalty has no L1 part, so no λ zeroes the weights; pass lambdas explicitly")
    if bound <= 0:
        raise ValueError("the loss gradient is zero at the initial weights (y may be constant, or the model "
                         "ignores its input); pass lambdas explicitly")
    return bound / share


def _all_zero(params, tol):
    return all(float(p.detach().abs().max()) <= tol for p in params if p.numel())


def _rounding_tol(params, lr, lam):
    """What counts as zero after a trial at the boundary λ: a few ulps of the largest quantity a step moves a
    weight by (lr·λ for SGD, lr for Adam, the initial weights). At exactly λ_max a full-batch step computes
    |w - lr·g| - lr·λ with |g| = λ and can leave 1e-15 instead of 0."""
    eps = max((torch.finfo(p.dtype).eps for p in params if p.is_floating_point()), default=2.2e-16)
    return 64 * eps * max(lr * lam, lr, 1.0)


def calibrate_lambda_max(model_fn, X, y, penalty="l1", *, epochs=20, max_doublings=10, **path_kw):
    """λ_max that really zeroes the network: start from `grid_lambda_max` at the path's starting weights and
    double it until `epochs` epochs of training from those weights at that λ leave every penalized weight zero
    (up to rounding, see `_rounding_tol`). For a linear model the first value already does; for a network the loss
    gradient grows as the weights train, so the bound taken at the initial weights can fall short.
    path_kw: as for `walk_path`. Returns (λ_max, number of trial trainings)."""
    task = path_kw.get("task") or infer_task(y)
    loss_fn = path_kw.get("loss_fn") or default_loss(task)
    seed = path_kw.get("seed", 0)
    torch.manual_seed(seed)
    model = model_fn().to(X.device)
    start_model(model, y, task, init_bias=path_kw.get("init_bias", True))
    lam = grid_lambda_max(model, X, y, penalty, l1_ratio=path_kw.get("l1_ratio", 0.5),
                          group_dim=path_kw.get("group_dim", 0), loss_fn=loss_fn,
                          param_groups=path_kw.get("param_groups"))
    dead = [False]
    lr = path_kw.get("lr") or 1e-2

    def check(i, lam, model, penalized):
        dead[0] = _all_zero(penalized, _rounding_tol(penalized, lr, lam))

    kw = {k: v for k, v in path_kw.items() if k not in ("epochs", "epochs_first", "on_lambda", "progress")}
    bar = path_kw.get("progress")
    for tries in range(1, max_doublings + 2):
        # Callers count the first trial in their bar; retries are not counted, so the total never grows.
        walk_path(model_fn, X, y, [lam], penalty=penalty, epochs=epochs, epochs_first=epochs, on_lambda=check,
                  progress=bar if tries == 1 else None, **kw)
        if dead[0] or tries > max_doublings:
            return lam, tries
        lam *= 2.0


# ------------------------------------------------------------------------------------------------- the walk

def _set_penalty(optimizer, groups):
    for group, new in zip(optimizer.param_groups, groups):
        for k, v in new.items():
            if k != "params":
                group[k] = v


def path_direction(model, direction="auto"):
    """The way a path walks the grid: "down" (large to small λ) or "up" (small to large). "auto" picks "down"
    for a linear model (the convex lasso path, warm-started from its λ_max solution) and "up" for anything else
    (a network starts trained and nearly dense at the smallest λ: see the module docstring)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; choose one of {DIRECTIONS}")
    if direction == "auto":
        return "down" if linear_layer(model) is not None else "up"
    return direction


def path_order(n, direction):
    """The grid indices (grid order: largest λ first) in the order a path walks them."""
    return list(range(n)) if direction == "down" else list(range(n - 1, -1, -1))


def refit_lambdas(lambdas, index, direction, warm_start=True):
    """The part of the grid (in grid order) a refit walks to reach lambdas[index] the way the path did: from
    the largest λ down to it, from the smallest up to it, or that λ alone without warm starts."""
    if not warm_start:
        return lambdas[index:index + 1]
    return lambdas[:index + 1] if direction == "down" else lambdas[index:]


def walk_path(model_fn, X, y, lambdas, *, penalty="l1", l1_ratio=0.5, group_dim=0, param_groups=None,
              optimizer=None, lr=None, optimizer_kwargs=None, epochs=None, epochs_first=None, batch_size=None,
              loss_fn=None, seed=0, on_lambda=None, progress=None, task=None, init_bias=True, tol=None,
              direction="auto", warm_start=True):
    """Train one model along `lambdas` (given in grid order, large to small), the way `select_lambda` does on
    each fold; call on_lambda(i, lam, model, penalized_params) after each λ, with i the index of lam in
    `lambdas` (callbacks see the λ in walking order: fill results by i). Returns the model at the last λ
    walked: lambdas[-1] going down, lambdas[0] going up.

    direction   "down": lambdas in the order given, each λ warm-started from the previous one's weights and
                optimizer state; a network whose penalized weights all reached zero starts the next λ again
                from the initial weights. "up": the same, walking from the last (smallest) λ to the first;
                needs lambdas sorted large to small. "auto" (default): "down" for a linear model, "up" for
                anything else (`path_direction`).
    warm_start  False: every λ starts from the initial weights with a fresh optimizer and the first λ's
                budget (epochs_first), as if trained alone; direction then only sets the order.
    Other arguments as in `select_lambda` (None picks its defaults); progress: None or an object with
    update(n), updated per step, or per λ for a full-batch linear fit (see `path_units`)."""
    task = task or infer_task(y)
    torch.manual_seed(seed)
    model = model_fn().to(X.device)
    direction = path_direction(model, direction)
    lambdas = list(lambdas)
    if direction == "up" and any(a < b for a, b in zip(lambdas, lambdas[1:])):
        raise ValueError("lambdas must be sorted from large to small (grid order); direction='up' walks them "
                         "from the last to the first")
    start_model(model, y, task, init_bias=init_bias)
    cfg = _training(model, X, task=task, lambdas=lambdas, penalty=penalty, l1_ratio=l1_ratio, optimizer=optimizer,
                    lr=lr, epochs=epochs, epochs_first=epochs_first, batch_size=batch_size, tol=tol)
    optimizer_kwargs = dict(optimizer_kwargs or {})
    loss_fn = loss_fn or default_loss(task)
    param_groups = param_groups or _default_param_groups
    init = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(X) / cfg["batch_size"])
    opt = None
    for step, i in enumerate(path_order(len(lambdas), direction)):
        lam = lambdas[i]
        keys = penalty_keys(penalty, lam, l1_ratio=l1_ratio, group_dim=group_dim)
        groups = param_groups(model, **keys)
        penalized = _penalized(groups, keys)
        if not warm_start:
            restart = step > 0
            if restart:  # every λ as if trained alone: the same weights, optimizer and batches as the first
                gen = torch.Generator().manual_seed(seed)
        else:
            # A zero linear model is a solution, not a dead one; going up, a dead network stays dead at any
            # larger λ, so only the downward path restarts (and only it reads the weights back to test).
            restart = (direction == "down" and opt is not None and linear_layer(model) is None and bool(penalized)
                       and all(not bool(p.any()) for p in penalized))
        if restart:  # a dead network (down), or the next λ trained alone: start again from the initial weights
            model.load_state_dict(init)
            opt = None
        if opt is None:
            opt = cfg["optimizer"](groups, lr=cfg["lr"], **optimizer_kwargs)
        else:
            _set_penalty(opt, groups)
        if cfg["full_batch"]:
            fit_full_batch(model, opt, X, y, steps=cfg["epochs"], loss_fn=loss_fn, tol=cfg["tol"],
                           accelerate=cfg["accelerate"])
            if progress is not None:
                progress.update(1)
        else:
            first = step == 0 or restart
            counted = steps_per_epoch * (cfg["epochs_first"] if step == 0 or not warm_start else cfg["epochs"])
            train_epochs(model, opt, X, y, epochs=cfg["epochs_first"] if first else cfg["epochs"],
                         batch_size=cfg["batch_size"], loss_fn=loss_fn, generator=gen,
                         progress=None if progress is None else _Capped(progress, counted))
        if on_lambda is not None:
            on_lambda(i, lam, model, penalized)
    return model


def _training(model, X, *, task, lambdas, penalty, l1_ratio, optimizer, lr, epochs, epochs_first, batch_size, tol):
    """The training settings, with the defaults for the model filled in (see the module docstring)."""
    full = linear_layer(model) is not None and optimizer is None and batch_size is None and lr is None
    if full:
        decay = (lambdas[0] * (1 - l1_ratio) if penalty == "elastic_net" else lambdas[0] if penalty == "l2"
                 else 0.0) if lambdas else 0.0
        return dict(full_batch=True, optimizer=SGD, lr=1.0 / (lipschitz(X, task) + decay), batch_size=len(X),
                    epochs=epochs or 5000, epochs_first=epochs or 5000, tol=1e-6 if tol is None else tol,
                    accelerate=True)
    epochs = epochs or 10
    return dict(full_batch=False, optimizer=optimizer or Adam, lr=lr or 1e-2, batch_size=batch_size or 128,
                epochs=epochs, epochs_first=epochs_first or 2 * epochs, tol=tol, accelerate=False)


def path_units(model, n_samples, n_lambdas, *, epochs=None, epochs_first=None, batch_size=None, optimizer=None,
               lr=None, warm_start=True):
    """What one `walk_path` reports to its progress bar: steps for mini-batch training, or one unit per λ for
    the full-batch linear fit (whose steps per λ depend on convergence). The same either way the path walks."""
    if linear_layer(model) is not None and optimizer is None and batch_size is None and lr is None:
        return n_lambdas
    epochs = epochs or 10
    return path_steps(n_samples, n_lambdas, epochs=epochs, epochs_first=epochs_first, batch_size=batch_size or 128,
                      warm_start=warm_start)


def path_steps(n_samples, n_lambdas, *, epochs, epochs_first=None, batch_size, warm_start=True):
    """Optimizer steps one mini-batch `walk_path` takes (down or up) when no restart happens (for progress
    bars): epochs_first for the first λ walked and epochs for each other, or epochs_first for every λ without
    warm starts."""
    first = epochs_first or 2 * epochs
    per_rest = first if not warm_start else epochs
    return math.ceil(n_samples / batch_size) * (first + (n_lambdas - 1) * per_rest)
