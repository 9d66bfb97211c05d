"""Choosing the penalty strength λ: a warm-started path over a grid of λ, scored by k-fold cross-validation.

The classic recipe (glmnet's), carried over to any model a fusedreg optimizer trains:

1. λ_max is where every penalized weight is zero. A weight at zero stays there under the proximal step while
   |gradient| <= λ (L1), |gradient| <= λ·l1_ratio (elastic net), or ||group gradient||_2 <= λ·sqrt(|g|) (group
   lasso, whose penalty is λ·Σ_g sqrt(|g|)·||w_g||). `lambda_max` takes that bound from the loss gradient over
   all the training data at the given weights.
   - A linear model (nn.Linear) starts the path at its λ_max solution: weight zero, bias at the best constant
     (the target mean for regression, the log class frequencies for classification). There the bound is exact:
     for ½·MSE it is scikit-learn's alpha_max = max|Xᵀ(y − ȳ)|/n, so no calibration runs.
   - A network is trained from random initial weights and its gradients grow as it trains, so the bound at the
     initial weights can fall short: `calibrate_lambda_max` doubles it until training at it really ends with
     every penalized weight zero (up to rounding: a weight within a few ulps of the step size counts as zero).
2. The grid is geometric: n_lambdas values from λ_max down to λ_max·lambda_min_ratio.
3. On each fold (k-fold, stratified by class for classification; or the folds you pass as `cv`) one model walks
   the grid, each λ starting from the previous λ's weights and optimizer state (warm start); the first λ walked
   trains epochs_first epochs from the initial weights, every other one `epochs`. Which way (direction="auto"):
   - A linear model walks down, from λ_max to small λ: glmnet's and scikit-learn's LassoCV path. Its loss is
     convex, so each λ's solution does not depend on where it started, and the path starts at the exact λ_max
     solution (weight zero), where the next λ's is close.
   - Any other model walks up, from the smallest λ to λ_max. A network is not convex: where its path ends up
     depends on where it starts. Walking down starts it dead: at λ_max every penalized weight is zero, a zero
     layer passes no gradient to the layers before it, and a hidden neuron whose incoming and outgoing weights
     are zero gets no gradient to come back, so a network warm-started down from there keeps most neurons
     pruned at every smaller λ (the digits MLP 64-64-10 with the sweep's defaults: 54 of 64 hidden neurons
     pruned at the smallest λ and test accuracy 95.6%, where that λ trained alone from the initial weights
     prunes none and scores 97.6%). Walking up starts at the smallest λ from the initial weights, so the path
     starts from a trained, nearly dense network, and each larger λ only has to prune it: the prox zeroes
     weights from any state, and nothing needs reviving. λ_max (calibrated from the initial weights) comes
     last, reached from a trained network: nearly every penalized weight is zero there, not always all.
     Measured on the digits (sweep defaults: L1, 5-fold CV, 10 λ, 5 epochs per λ and 10 for the first; three
     seeds of the split and initial weights), against the best test accuracy of the same grid with every λ
     trained alone from the initial weights for 10 epochs: walking down chose models 2.9, 1.3 and 5.6 points
     below it; walking up 0.2 above, 0.7 above and 0.2 below; training every λ alone (warm_start=False) 0.4
     below, level and 0.2 below, for 1.8 times the steps (10 epochs per λ instead of 5) and 1.7 times the time
     (seed 0, one CPU thread, select_lambda with its refit: 3.4-3.9 s up, 5.7-6.7 s alone, 4.4-4.8 s down
     with its restarts). Group lasso on the inputs (seed 0): down 1.3 below, up 0.4 below, alone 0.9 below.
     So a network walks up, with warm starts.
   direction="down" keeps the old downward path for a network too: after a λ that zeroed every penalized weight
   the next λ starts again from the initial weights. warm_start=False trains every λ alone from the initial
   weights with the first λ's budget.
4. The chosen λ has the best mean validation score (rule="best", the default). With rule="1se" it is the
   largest λ whose mean score is within one standard error (std / sqrt(k)) of the best mean: the sparsest model
   the data cannot tell apart from the best one. A choice at either end of the grid warns (GridEdgeWarning).

Defaults by task (inferred from y: floating point -> regression, integers -> classification):
  regression      loss ½·mean squared error (summed over outputs for a 2-D y: scikit-learn's Lasso, ElasticNet,
                  MultiTaskLasso objective), score "mse"; the output bias starts at the training mean of y.
  classification  loss mean cross-entropy (LogisticRegression with C = 1/(λ·n)), score "accuracy"; the output
                  bias starts at the log class frequencies.
Training defaults by model:
  nn.Linear       full-batch proximal gradient (fusedreg.SGD, lr = 1/L from the data's largest singular value,
                  with Nesterov/FISTA extrapolation and adaptive restart), each λ run to convergence (the largest
                  step below tol=1e-6 of the largest weight) or max 5,000 steps: the path is the lasso path.
  anything else   fusedreg.Adam, lr 1e-2, mini-batches of 128, 10 epochs per λ (20 for the first).

`select_lambda` returns a `LambdaPath`: the grid, per-fold / mean / std scores, the mean exact-zero fraction
per λ, both choices, how the path was walked (direction, warm_start), and with refit=True a model trained on all
the data along the same path to the chosen λ: from λ_max down to it, or from the smallest λ up to it
(`LambdaPath.refit_lambdas`).
"""
import copy
import math
import warnings
from dataclasses import dataclass, field

import torch

from .optim import SGD, Adam
from .penalties import elastic_net, param_groups as _default_param_groups

PENALTY_NAMES = ("l1", "elastic_net", "group_l1", "l2")
RULES = ("best", "1se")
SCORES = ("accuracy", "neg_loss", "mse")
TASKS = ("classification", "regression")
LOWER_IS_BETTER = ("mse",)


class DataError(ValueError):
    """X or y cannot be used as given (NaN or inf, one class only, fewer rows than folds, ...); the message says
    which and where."""


class GridEdgeWarning(UserWarning):
    """The chosen λ is the first or last value of the grid: the best λ may lie outside it."""


def half_mse(out, y):
    """½·mean over rows of the squared error summed over outputs: scikit-learn's Lasso / ElasticNet objective
    for a 1-D y and MultiTaskLasso / MultiTaskElasticNet's for a 2-D y."""
    d = out.reshape(y.shape) - y
    return 0.5 * d.pow(2).reshape(len(y), -1).sum(1).mean()


@dataclass
class LambdaPath:
    """What `select_lambda` found. Every per-λ list is in grid order: largest λ first. `mean` and `std` hold the
    score as it is named (accuracy, mse, ...); `greater_is_better` says which way is better."""
    lambdas: list
    scores: list            # [n_lambdas][folds] validation scores
    mean: list
    std: list
    sparsity: list          # mean exact-zero fraction of the model's parameters (all of them, biases included)
    penalized_sparsity: list  # mean exact-zero fraction of the penalized parameters only
    lambda_max: float
    best_index: int
    index_1se: int
    rule: str
    score_name: str
    folds: int
    model: object = field(default=None, repr=False)  # refit on all the data at the chosen λ (refit=True)
    greater_is_better: bool = True
    task: str = "classification"
    edge: str = ""          # "", "largest" or "smallest": where on the grid the chosen λ sits, when at an end
    direction: str = "down"  # how each fold walked the grid: "down" (large to small λ) or "up" (small to large)
    warm_start: bool = True  # False: every λ trained alone from the initial weights
    grid_given: bool = False  # True: the caller passed lambdas; False: the grid came from λ_max and lambda_min_ratio

    @property
    def index(self):
        """Grid index of the chosen λ (by `rule`)."""
        return self.best_index if self.rule == "best" else self.index_1se

    @property
    def lambda_(self):
        """The chosen λ."""
        return self.lambdas[self.index]

    @property
    def refit_lambdas(self):
        """The grid values (in grid order) a refit walks to reach the chosen λ the way the folds did: pass them
        to `walk_path` with direction=self.direction and warm_start=self.warm_start."""
        return refit_lambdas(self.lambdas, self.index, self.direction, self.warm_start)

    def describe_path(self):
        """How the models along the path were trained, in a few words."""
        if not self.warm_start:
            return "every λ trained alone from the initial weights"
        if self.direction == "up":
            return "warm-started from the smallest λ up"
        return "warm-started from the largest λ down"

    @property
    def best_lambda(self):
        return self.lambdas[self.best_index]

    @property
    def lambda_1se(self):
        return self.lambdas[self.index_1se]

    def table(self):
        """The path as a printable table, one row per λ; the chosen row is marked."""
        lines = [f"{'':2}{'lambda':>10}  {self.score_name + ' (mean ± std)':>24}  {'zeros (all)':>11}  "
                 f"{'zeros (penalized)':>17}"]
        big = max(abs(m) for m in self.mean) >= 100  # e.g. an MSE in y's units: 4 decimals would be noise
        for i, lam in enumerate(self.lambdas):
            mark = ("* " if i == self.index else "  ")
            note = []
            if i == self.best_index:
                note.append("best")
            if i == self.index_1se:
                note.append("1-SE")
            m, s = ((f"{self.mean[i]:14.1f}", f"{self.std[i]:7.1f}") if big else
                    (f"{self.mean[i]:14.4f}", f"{self.std[i]:7.4f}"))
            lines.append(f"{mark}{lam:10.3g}  {m} ± {s}  {self.sparsity[i]:11.1%}  "
                         f"{self.penalized_sparsity[i]:17.1%}  {', '.join(note)}")
        return "\n".join(lines)

    def edge_message(self):
        """Why the choice may lie outside the grid, or "" when it is inside."""
        if self.edge == "smallest":
            start = (" It is where the upward path starts, from the initial weights: extending the grid moves the "
                     "start there." if self.direction == "up" and self.warm_start else "")
            how = ("add smaller values to the lambdas you passed (--lambdas)" if self.grid_given else
                   "a smaller lambda_min_ratio (--lambda-min-ratio)")
            return (f"the chosen λ = {self.lambda_:.4g} is the smallest on the grid: a smaller λ may score better. "
                    f"Extend the grid down: {how}." + start)
        if self.edge == "largest":
            return (f"the chosen λ = {self.lambda_:.4g} is the largest of the lambdas you passed: a larger λ may "
                    "score as well. Add larger values (--lambdas), or omit lambdas to let the grid start at λ_max.")
        if self.edge == "lambda_max":
            where = ("where every penalized weight is zero" if self.penalized_sparsity[0] >= 1.0 else
                     f"the top of the grid ({self.penalized_sparsity[0]:.1%} of the penalized weights zero there; "
                     "trained from the initial weights, every one is)")
            return (f"the chosen λ = {self.lambda_:.4g} is at λ_max, {where}: no less penalized model scored "
                    "better on the validation folds. Check that the features carry signal, or that the model "
                    "trains (lr, epochs).")
        return ""

    def __str__(self):
        return (f"{self.table()}\nchosen lambda = {self.lambda_:.4g} (rule {self.rule!r}, {self.folds}-fold CV, "
                f"mean {self.score_name} {self.mean[self.index]:.4g})")


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


def geometric_grid(lambda_max, n_lambdas, lambda_min_ratio):
    """n_lambdas values from lambda_max down to lambda_max*lambda_min_ratio, evenly spaced in log."""
    if n_lambdas == 1:
        return [float(lambda_max)]
    lo, hi = math.log(lambda_max * lambda_min_ratio), math.log(lambda_max)
    grid = [math.exp(hi + (lo - hi) * i / (n_lambdas - 1)) for i in range(n_lambdas)]
    grid[0] = float(lambda_max)  # exactly, not exp(log(λ_max)) one ulp off
    return grid


# ---------------------------------------------------------------------------------------------- data checks

def infer_task(y):
    """"regression" for a floating-point y, "classification" for integer labels."""
    return "regression" if torch.is_tensor(y) and y.is_floating_point() else "classification"


def _first_bad(t):
    bad = ~torch.isfinite(t)
    count = int(bad.sum())
    return count, (bad.nonzero()[0].tolist() if count else [])


def check_data(X, y, task):
    """DataError naming the problem when X or y cannot be used: NaN/inf, mismatched rows, labels that are not
    integers, a classification target with one class only."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if not torch.is_tensor(X) or not torch.is_tensor(y):
        raise TypeError(f"X and y must be torch tensors, got {type(X).__name__} and {type(y).__name__}")
    if len(X) != len(y):
        raise DataError(f"X has {len(X)} rows but y has {len(y)}")
    for name, t in (("X", X), ("y", y)):
        if t.is_floating_point() or t.is_complex():
            count, where = _first_bad(t)
            if count:
                at = f"row {where[0]}" + (f", column {where[1]}" if len(where) > 1 else "")
                raise DataError(f"{name} has {count} NaN or inf value{'s' if count > 1 else ''} (first at {at}); "
                                "drop or impute them before choosing λ")
    if task == "classification":
        if y.is_floating_point() or y.dim() != 1:
            raise DataError(f"classification needs y as a 1-D tensor of integer class labels, got dtype {y.dtype} "
                            f"and shape {tuple(y.shape)} (pass task='regression' for a numeric target)")
        if len(y) and int(y.min()) < 0:
            raise DataError(f"class labels must be >= 0, got {int(y.min())}")
        classes = torch.unique(y)
        if len(classes) < 2:
            label = f" (label {int(classes[0])})" if len(classes) else ""
            raise DataError(f"y has one class only{label}: there is nothing to classify")
    elif not y.is_floating_point():
        raise DataError(f"regression needs a floating-point y, got dtype {y.dtype}")


def kfold(y, folds, seed=0):
    """k disjoint index tensors covering range(len(y)); stratified by class when y holds integer labels."""
    n = len(y)
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be a whole number >= 2, got {folds!r}")
    if folds > n:
        raise DataError(f"{n} rows cannot make {folds} folds (each fold needs at least one validation row); "
                        "use fewer folds")
    gen = torch.Generator().manual_seed(seed)
    y = y.detach().cpu()
    buckets = [[] for _ in range(folds)]
    if not y.is_floating_point() and y.dim() == 1:
        # Deal each class's shuffled indices round-robin, continuing where the last class stopped.
        start = 0
        for c in torch.unique(y):
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)].tolist()
            for j, i in enumerate(idx):
                buckets[(start + j) % folds].append(i)
            start += len(idx)
    else:
        for j, i in enumerate(torch.randperm(n, generator=gen).tolist()):
            buckets[j % folds].append(i)
    return [torch.tensor(sorted(b), dtype=torch.long) for b in buckets]


def splits(y, cv=5, seed=0, X=None):
    """[(train indices, validation indices)] from cv: a number of folds (`kfold`), a scikit-learn splitter
    (anything with .split(X, y)), or an iterable of (train, validation) index pairs."""
    n = len(y)
    if isinstance(cv, int) and not isinstance(cv, bool):
        out = []
        for val in kfold(y, cv, seed):
            mask = torch.ones(n, dtype=torch.bool)
            mask[val] = False
            out.append((torch.nonzero(mask).flatten(), val))
        return out
    if isinstance(cv, (str, bytes, float)):
        raise ValueError(f"cv must be a number of folds, a scikit-learn splitter or (train, validation) index "
                         f"pairs, got {cv!r}")
    if hasattr(cv, "split"):
        import numpy as np
        ys = y.detach().cpu().numpy()
        pairs = list(cv.split(np.zeros((n, 1)) if X is None else X.detach().cpu().numpy(), ys))
    else:
        try:
            pairs = list(cv)
        except TypeError:
            raise ValueError(f"cv must be a number of folds, a scikit-learn splitter or (train, validation) index "
                             f"pairs, got {type(cv).__name__}") from None
    out = []
    for k, pair in enumerate(pairs):
        try:
            tr, va = pair
        except (TypeError, ValueError):
            raise ValueError(f"cv fold {k} is not a (train, validation) pair of index arrays") from None
        tr, va = (torch.as_tensor(a, dtype=torch.long).flatten() for a in (tr, va))
        for name, idx in (("train", tr), ("validation", va)):
            if len(idx) == 0:
                raise DataError(f"cv fold {k} has no {name} rows")
            if int(idx.min()) < 0 or int(idx.max()) >= n:
                raise DataError(f"cv fold {k}: a {name} index is outside 0..{n - 1}")
        out.append((tr, va))
    if len(out) < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, cv gave {len(out)}")
    return out


# -------------------------------------------------------------------------------------------- model and data

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


def default_score(task):
    return "mse" if task == "regression" else "accuracy"


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


def _group_norms(g, dim):
    if g.dim() < 2:
        return g.abs().flatten()
    # group_dim=1: one group per column (input feature of a Linear weight); 0: one per row (output neuron).
    return torch.linalg.vector_norm(g.flatten(1) if dim == 0 else g.transpose(0, 1).flatten(1), dim=1)


def lambda_max(model, X, y, penalty="l1", *, l1_ratio=0.5, group_dim=0, loss_fn=None, param_groups=None):
    """The smallest λ at which a proximal step keeps every penalized weight of `model` at zero, taken from the
    loss gradient at the current weights over all of (X, y). Exact for a linear model at zero weight with the
    bias at its best constant (`start_model`); see the module docstring for a network. Does not change the model."""
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
    """λ_max that really zeroes the network: start from `lambda_max` at the path's starting weights and double
    it until `epochs` epochs of training from those weights at that λ leave every penalized weight zero (up to
    rounding, see `_rounding_tol`). For a linear model the first value already does; for a network the loss
    gradient grows as the weights train, so the bound taken at the initial weights can fall short.
    path_kw: as for `walk_path`. Returns (λ_max, number of trial trainings)."""
    task = path_kw.get("task") or infer_task(y)
    loss_fn = path_kw.get("loss_fn") or default_loss(task)
    seed = path_kw.get("seed", 0)
    torch.manual_seed(seed)
    model = model_fn().to(X.device)
    start_model(model, y, task, init_bias=path_kw.get("init_bias", True))
    lam = lambda_max(model, X, y, penalty, l1_ratio=path_kw.get("l1_ratio", 0.5),
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


def _set_penalty(optimizer, groups):
    for group, new in zip(optimizer.param_groups, groups):
        for k, v in new.items():
            if k != "params":
                group[k] = v


DIRECTIONS = ("auto", "down", "up")


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
    cfg = _training(model, X, task, lambdas, penalty, l1_ratio, optimizer, lr, epochs, epochs_first, batch_size,
                    tol)
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
            restart = opt is not None and bool(penalized) and all(not bool(p.any()) for p in penalized)
            # A zero linear model is a solution, not a dead one; going up, a dead network stays dead at any
            # larger λ, so only the downward path restarts.
            restart = restart and linear_layer(model) is None and direction == "down"
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


def _training(model, X, task, lambdas, penalty, l1_ratio, optimizer, lr, epochs, epochs_first, batch_size, tol):
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


@torch.no_grad()
def evaluate(model, X, y, score, loss_fn):
    """A validation score: accuracy, minus the mean loss, the mean squared error, or a callable (model, X, y)."""
    model.eval()
    if callable(score):
        return float(score(model, X, y))
    out = model(X)
    if score == "accuracy":
        return float((out.argmax(1) == y).float().mean())
    if score == "mse":
        return float((out.reshape(y.shape) - y).pow(2).mean())
    return -float(loss_fn(out, y))


def select_lambda(model_fn, X, y, *, penalty="l1", lambdas=None, n_lambdas=10, lambda_min_ratio=1e-3,
                  folds=5, cv=None, rule="best", l1_ratio=0.5, group_dim=0, param_groups=None, optimizer=None,
                  lr=None, optimizer_kwargs=None, epochs=None, epochs_first=None, batch_size=None, loss_fn=None,
                  score=None, task=None, seed=0, calibrate=None, refit=True, progress=False, init_bias=None,
                  tol=None, direction="auto", warm_start=True):
    """Choose λ for `penalty` by k-fold cross-validation along a warm-started path over a grid of λ: from large
    to small λ for a linear model, from small to large for a network (see the module docstring).

    model_fn()         builds a fresh model (called under torch.manual_seed(seed), so every fold starts alike).
    X, y               all the training data as tensors on the device to train on. NaN/inf, one class only or
                       fewer rows than folds raise DataError (a ValueError) naming the problem.
    task               "regression" or "classification"; default: regression for a floating-point y.
    penalty            "l1", "elastic_net" (with l1_ratio), "group_l1" (with group_dim), "l2", or a callable
                       lam -> optimizer group keys (e.g. lambda lam: dict(l1=lam, group_l1=lam)).
    lambdas            an explicit grid (sorted large to small); else n_lambdas values from λ_max down to
                       λ_max*lambda_min_ratio (see `lambda_max`; "l2" and callables without l1 need lambdas).
    direction          the way each fold walks the grid with warm starts: "down" (from the largest λ), "up"
                       (from the smallest λ), or "auto" (default): down for a linear model, whose path starts at
                       its exact λ_max solution (scikit-learn's LassoCV path), up for anything else, so a
                       network starts trained and dense and never from the dead all-zero network of λ_max.
    warm_start         True (default): each λ starts from the previous λ's weights and optimizer state.
                       False: each λ trains alone from the initial weights for epochs_first epochs (no path;
                       costs about epochs_first/epochs times more for a network).
    folds, cv          folds: k for k-fold CV (stratified for classification). cv, when given, replaces it: a
                       number of folds, a scikit-learn splitter (e.g. KFold(5, shuffle=True, random_state=0)), or
                       an iterable of (train indices, validation indices) pairs.
    calibrate          None (default): calibrate λ_max for a network, not for a linear model (where it is
                       exact). True: `calibrate_lambda_max`, which doubles the gradient bound until training at
                       it ends with every penalized weight zero. False: the gradient bound as is.
    rule               "best": the best mean validation score (default); "1se": the largest λ within one
                       standard error of it.
    group_dim          0 (default, as the optimizers): groups are rows (output neurons); 1: columns (inputs).
    param_groups       (model, **penalty_keys) -> param groups; default fusedreg.param_groups (weights
                       penalized, biases and norms not). Pass your own to penalize only some layers.
    optimizer, lr, epochs, epochs_first, batch_size, tol
                       None picks the model's default: an nn.Linear trains full-batch to convergence (fusedreg.SGD
                       at lr 1/L with FISTA extrapolation; at most `epochs` = 5,000 steps per λ, until the largest
                       step is below tol = 1e-6 of the largest weight); any other model trains fusedreg.Adam at
                       lr 1e-2 on batches of 128 for epochs = 10 per λ (epochs_first = 20 for the first). Giving
                       optimizer, lr or batch_size selects mini-batch training.
    loss_fn, score     default by task: ½·MSE and "mse" (regression), cross-entropy and "accuracy"
                       (classification). score may be "neg_loss" or a callable (model, X, y) -> float, higher
                       better.
    init_bias          the output bias starts at the training mean of y / the log class frequencies (default
                       True with the default loss, see `start_model`).
    refit              also train one model on all of (X, y) along the same path to the chosen λ (result.
                       refit_lambdas, walked in the folds' direction) -> result.model.
    progress           show a tqdm bar (needs tqdm), or pass a tqdm-like object with update().
    """
    task = task or infer_task(y)
    check_data(X, y, task)
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")
    score = score or default_score(task)
    if not callable(score) and score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {SCORES} or pass a callable")
    if score == "accuracy" and task == "regression":
        raise ValueError("score 'accuracy' needs class labels; a regression is scored by 'mse' or 'neg_loss'")
    if not callable(penalty) and penalty not in PENALTY_NAMES:
        raise ValueError(f"unknown penalty {penalty!r}; choose one of {PENALTY_NAMES} or pass a callable")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if init_bias is None:
        init_bias = loss_fn is None
    loss_fn = loss_fn or default_loss(task)
    param_groups = param_groups or _default_param_groups
    path_kw = dict(penalty=penalty, l1_ratio=l1_ratio, group_dim=group_dim, param_groups=param_groups,
                   optimizer=optimizer, lr=lr, optimizer_kwargs=optimizer_kwargs, epochs=epochs,
                   epochs_first=epochs_first, batch_size=batch_size, loss_fn=loss_fn, seed=seed, task=task,
                   init_bias=init_bias, tol=tol)

    if lambdas is None:
        if not 0 < lambda_min_ratio < 1:
            raise ValueError(f"lambda_min_ratio must be in (0, 1), got {lambda_min_ratio}")
        if n_lambdas < 1:
            raise ValueError(f"n_lambdas must be >= 1, got {n_lambdas}")
        if penalty == "l2":
            raise ValueError("L2 never zeroes a weight, so there is no λ_max; pass lambdas explicitly")
        n = n_lambdas
    else:
        lambdas = [float(v) for v in lambdas]
        if not lambdas or any(not (v >= 0 and math.isfinite(v)) for v in lambdas):
            raise ValueError(f"lambdas must be a non-empty list of finite values >= 0, got {lambdas}")
        if any(a < b for a, b in zip(lambdas, lambdas[1:])):
            raise ValueError("lambdas must be sorted from large to small (grid order; `direction` sets which "
                             "way the path walks them)")
        n = len(lambdas)
    from_lambda_max = lambdas is None  # the grid's first value is λ_max
    pairs = splits(y, folds if cv is None else cv, seed)
    k = len(pairs)
    torch.manual_seed(seed)
    probe = model_fn()
    linear = linear_layer(probe) is not None
    direction = path_direction(probe, direction)
    path_kw.update(direction=direction, warm_start=warm_start)
    if calibrate is None:
        calibrate = not linear

    bar, own_bar = (None if progress is False else progress), False
    if progress is True:
        from tqdm.auto import tqdm
        units = dict(epochs=epochs, epochs_first=epochs_first, batch_size=batch_size, optimizer=optimizer, lr=lr)
        total = sum(path_units(probe, len(tr), n, warm_start=warm_start, **units) for tr, _ in pairs)
        if lambdas is None and calibrate:
            total += path_units(probe, len(X), 1, **units)
        bar, own_bar = tqdm(total=total, desc=f"{k}-fold CV path", unit="step"), True
    scores = [[0.0] * k for _ in range(n)]
    zeros = [[0.0] * k for _ in range(n)]
    pzeros = [[0.0] * k for _ in range(n)]
    device = X.device
    try:
        if lambdas is None:
            if calibrate:
                kw = {key: v for key, v in path_kw.items() if key not in ("epochs", "epochs_first")}
                first = epochs_first or 2 * (epochs or 10)
                lmax, _ = calibrate_lambda_max(model_fn, X, y, epochs=first, progress=bar, **kw)
            else:
                torch.manual_seed(seed)
                model = start_model(model_fn().to(device), y, task, init_bias=init_bias)
                lmax = lambda_max(model, X, y, penalty, l1_ratio=l1_ratio, group_dim=group_dim, loss_fn=loss_fn,
                                  param_groups=param_groups)
            lambdas = geometric_grid(lmax, n_lambdas, lambda_min_ratio)
        else:
            lmax = lambdas[0]
        for f, (tr, val) in enumerate(pairs):
            tr, val = tr.to(device), val.to(device)
            Xt, yt, Xv, yv = X[tr], y[tr], X[val], y[val]
            if task == "classification" and len(torch.unique(yt)) < 2:
                raise DataError(f"fold {f}'s training rows hold one class only; use fewer folds or more data")

            def record(i, lam, model, penalized, f=f, Xv=Xv, yv=yv):
                scores[i][f] = evaluate(model, Xv, yv, score, loss_fn)
                zeros[i][f] = zero_fraction(model.parameters())
                pzeros[i][f] = zero_fraction(penalized)

            walk_path(model_fn, Xt, yt, lambdas, on_lambda=record, progress=bar, **path_kw)
    finally:
        if own_bar:
            bar.close()

    sign = -1.0 if score in LOWER_IS_BETTER else 1.0
    mean = [sum(s) / k for s in scores]
    std = [math.sqrt(sum((v - m) ** 2 for v in s) / (k - 1)) for s, m in zip(scores, mean)]
    best = max(range(n), key=lambda i: (sign * mean[i], lambdas[i]))  # ties: the larger (sparser) λ
    bar_1se = sign * mean[best] - std[best] / math.sqrt(k)
    one_se = min(i for i in range(n) if sign * mean[i] >= bar_1se)  # grid is large -> small: first is the largest
    result = LambdaPath(lambdas=lambdas, scores=scores, mean=mean, std=std,
                        sparsity=[sum(z) / k for z in zeros], penalized_sparsity=[sum(z) / k for z in pzeros],
                        lambda_max=lmax, best_index=best, index_1se=one_se, rule=rule,
                        score_name=score if isinstance(score, str) else getattr(score, "__name__", "score"),
                        folds=k, greater_is_better=sign > 0, task=task, direction=direction, warm_start=warm_start,
                        grid_given=not from_lambda_max)
    if n > 1 and result.index == n - 1:
        result.edge = "smallest"
    elif n > 1 and result.index == 0:
        # Walking up, a network reaches λ_max last, from trained weights: nearly but not always all zero there.
        at_max = result.penalized_sparsity[0] >= 1.0 or from_lambda_max
        result.edge = "lambda_max" if at_max else "largest"
    if result.edge:
        warnings.warn(result.edge_message(), GridEdgeWarning, stacklevel=2)
    if refit:
        result.model = walk_path(model_fn, X, y, result.refit_lambdas, **path_kw)
    return result
