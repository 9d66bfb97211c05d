"""Choosing the penalty strength λ: a warm-started path over a grid of λ, scored by k-fold cross-validation.

The classic recipe (glmnet's), carried over to any model a fusedreg optimizer trains:

1. λ_max is where every penalized weight is zero. A weight at zero stays there under the proximal step while
   |gradient| <= λ (L1), |gradient| <= λ·l1_ratio (elastic net), or ||group gradient||_2 <= λ·sqrt(|g|) (group
   lasso, whose penalty is λ·Σ_g sqrt(|g|)·||w_g||). `grid_lambda_max` takes that bound from the loss gradient
   over all the training data at the given weights (fusedreg.lambda_max, by contrast, reports per tensor what
   one batch's gradients allow).
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

Where the parts live: this module holds the grid, the cross-validation loop, the choice (`LambdaPath`) and
GridEdgeWarning; fusedreg.path one model's path (λ_max and its calibration, the training at each λ, the walk:
`walk_path`); fusedreg.folds the checks of X and y (DataError) and the folds. Their public names are importable
from here too (fusedreg.select.walk_path, fusedreg.select.kfold, ...).
"""
import math
import warnings
from dataclasses import dataclass, field

import torch

from .folds import DataError, TASKS, check_data, infer_task, kfold, splits  # noqa: F401  (also fusedreg.select's)
from .path import (  # noqa: F401  (the path's API stays importable from here: fusedreg.select.walk_path, ...)
    DIRECTIONS, PENALTY_NAMES, calibrate_lambda_max, default_loss, fit_full_batch, grid_lambda_max, half_mse,
    linear_layer, lipschitz, output_layer, path_direction, path_order, path_steps, path_units, penalty_keys,
    refit_lambdas, start_model, train_epochs, walk_path, zero_fraction)
from .penalties import param_groups as _default_param_groups

RULES = ("best", "1se")
SCORES = ("accuracy", "neg_loss", "mse")
LOWER_IS_BETTER = ("mse",)


class GridEdgeWarning(UserWarning):
    """The chosen λ is the first or last value of the grid: the best λ may lie outside it."""


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


def geometric_grid(lambda_max, n_lambdas, lambda_min_ratio):
    """n_lambdas values from lambda_max down to lambda_max*lambda_min_ratio, evenly spaced in log."""
    if n_lambdas == 1:
        return [float(lambda_max)]
    lo, hi = math.log(lambda_max * lambda_min_ratio), math.log(lambda_max)
    grid = [math.exp(hi + (lo - hi) * i / (n_lambdas - 1)) for i in range(n_lambdas)]
    grid[0] = float(lambda_max)  # exactly, not exp(log(λ_max)) one ulp off
    return grid


def default_score(task):
    return "mse" if task == "regression" else "accuracy"


@torch.no_grad()
def evaluate(model, X, y, *, score, loss_fn=None):
    """A validation score: accuracy, minus the mean loss (loss_fn), the mean squared error, or a callable
    (model, X, y)."""
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
                       λ_max*lambda_min_ratio (see `grid_lambda_max`; "l2" and callables without l1 need lambdas).
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
    score = score or default_score(task)
    lambdas = _check_args(X, y, task=task, rule=rule, score=score, penalty=penalty, epochs=epochs,
                          batch_size=batch_size, lambdas=lambdas, n_lambdas=n_lambdas,
                          lambda_min_ratio=lambda_min_ratio)
    if init_bias is None:
        init_bias = loss_fn is None
    pairs = splits(y, folds if cv is None else cv, seed)
    torch.manual_seed(seed)
    probe = model_fn()
    direction = path_direction(probe, direction)
    if calibrate is None:
        calibrate = linear_layer(probe) is None
    path_kw = dict(penalty=penalty, l1_ratio=l1_ratio, group_dim=group_dim,
                   param_groups=param_groups or _default_param_groups, optimizer=optimizer, lr=lr,
                   optimizer_kwargs=optimizer_kwargs, epochs=epochs, epochs_first=epochs_first, batch_size=batch_size,
                   loss_fn=loss_fn or default_loss(task), seed=seed, task=task, init_bias=init_bias, tol=tol,
                   direction=direction, warm_start=warm_start)
    units = dict(epochs=epochs, epochs_first=epochs_first, batch_size=batch_size, optimizer=optimizer, lr=lr)
    bar, own_bar = _progress_bar(progress, probe, pairs, n_rows=len(X),
                                 n_lambdas=n_lambdas if lambdas is None else len(lambdas),
                                 calibrated=lambdas is None and calibrate, warm_start=warm_start, units=units)
    try:
        if lambdas is None:
            lmax = _grid_top(model_fn, X, y, calibrate=calibrate, progress=bar, path_kw=path_kw)
            grid = geometric_grid(lmax, n_lambdas, lambda_min_ratio)
        else:
            grid, lmax = lambdas, lambdas[0]
        cv_scores = _cv_scores(model_fn, X, y, pairs=pairs, lambdas=grid, score=score, progress=bar, path_kw=path_kw)
    finally:
        if own_bar:
            bar.close()
    result = _choose(grid, cv_scores, lambda_max=lmax, rule=rule, score=score, grid_given=lambdas is not None,
                     path_kw=path_kw)
    if result.edge:
        warnings.warn(result.edge_message(), GridEdgeWarning, stacklevel=2)
    if refit:
        result.model = walk_path(model_fn, X, y, result.refit_lambdas, **path_kw)
    return result


def _check_args(X, y, *, task, rule, score, penalty, epochs, batch_size, lambdas, n_lambdas, lambda_min_ratio):
    """select_lambda's checks of its data and arguments (DataError / ValueError naming the problem). Returns
    lambdas as a list of floats, or None when the grid is to start at λ_max."""
    check_data(X, y, task)
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")
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
    if lambdas is None:
        if not 0 < lambda_min_ratio < 1:
            raise ValueError(f"lambda_min_ratio must be in (0, 1), got {lambda_min_ratio}")
        if n_lambdas < 1:
            raise ValueError(f"n_lambdas must be >= 1, got {n_lambdas}")
        if penalty == "l2":
            raise ValueError("L2 never zeroes a weight, so there is no λ_max; pass lambdas explicitly")
        return None
    lambdas = [float(v) for v in lambdas]
    if not lambdas or any(not (v >= 0 and math.isfinite(v)) for v in lambdas):
        raise ValueError(f"lambdas must be a non-empty list of finite values >= 0, got {lambdas}")
    if any(a < b for a, b in zip(lambdas, lambdas[1:])):
        raise ValueError("lambdas must be sorted from large to small (grid order; `direction` sets which "
                         "way the path walks them)")
    return lambdas


def _progress_bar(progress, probe, pairs, *, n_rows, n_lambdas, calibrated, warm_start, units):
    """(bar, whether it was made here): `progress` as passed (None for False), or for True a tqdm bar whose
    total counts every step of the folds' paths and the first λ_max calibration trial."""
    if progress is not True:
        return (None if progress is False else progress), False
    from tqdm.auto import tqdm
    total = sum(path_units(probe, len(tr), n_lambdas, warm_start=warm_start, **units) for tr, _ in pairs)
    if calibrated:
        total += path_units(probe, n_rows, 1, **units)
    return tqdm(total=total, desc=f"{len(pairs)}-fold CV path", unit="step"), True


def _grid_top(model_fn, X, y, *, calibrate, progress, path_kw):
    """λ_max for a grid that starts there: calibrated by training at it (`calibrate_lambda_max`), or the
    gradient bound at the path's starting weights (`grid_lambda_max`)."""
    if calibrate:
        kw = {key: v for key, v in path_kw.items() if key not in ("epochs", "epochs_first")}
        first = path_kw["epochs_first"] or 2 * (path_kw["epochs"] or 10)
        return calibrate_lambda_max(model_fn, X, y, epochs=first, progress=progress, **kw)[0]
    torch.manual_seed(path_kw["seed"])
    model = start_model(model_fn().to(X.device), y, path_kw["task"], init_bias=path_kw["init_bias"])
    return grid_lambda_max(model, X, y, path_kw["penalty"], l1_ratio=path_kw["l1_ratio"],
                           group_dim=path_kw["group_dim"], loss_fn=path_kw["loss_fn"],
                           param_groups=path_kw["param_groups"])


def _cv_scores(model_fn, X, y, *, pairs, lambdas, score, progress, path_kw):
    """One model per fold walks the grid on the fold's training rows: ([λ][fold] validation scores, exact-zero
    fractions of all parameters, of the penalized ones)."""
    n, k = len(lambdas), len(pairs)
    scores = [[0.0] * k for _ in range(n)]
    zeros = [[0.0] * k for _ in range(n)]
    pzeros = [[0.0] * k for _ in range(n)]
    device = X.device
    for f, (tr, val) in enumerate(pairs):
        tr, val = tr.to(device), val.to(device)
        Xt, yt, Xv, yv = X[tr], y[tr], X[val], y[val]
        if path_kw["task"] == "classification" and len(torch.unique(yt)) < 2:
            raise DataError(f"fold {f}'s training rows hold one class only; use fewer folds or more data")

        def record(i, lam, model, penalized, f=f, Xv=Xv, yv=yv):
            scores[i][f] = evaluate(model, Xv, yv, score=score, loss_fn=path_kw["loss_fn"])
            zeros[i][f] = zero_fraction(model.parameters())
            pzeros[i][f] = zero_fraction(penalized)

        walk_path(model_fn, Xt, yt, lambdas, on_lambda=record, progress=progress, **path_kw)
    return scores, zeros, pzeros


def _choose(lambdas, cv_scores, *, lambda_max, rule, score, grid_given, path_kw):
    """The LambdaPath of the folds' scores: mean and std per λ, the best and the 1-SE choice, and where on the
    grid the chosen λ sits when at an end (`LambdaPath.edge`)."""
    scores, zeros, pzeros = cv_scores
    n, k = len(lambdas), len(scores[0])
    sign = -1.0 if score in LOWER_IS_BETTER else 1.0
    mean = [sum(s) / k for s in scores]
    std = [math.sqrt(sum((v - m) ** 2 for v in s) / (k - 1)) for s, m in zip(scores, mean)]
    best = max(range(n), key=lambda i: (sign * mean[i], lambdas[i]))  # ties: the larger (sparser) λ
    bar_1se = sign * mean[best] - std[best] / math.sqrt(k)
    one_se = min(i for i in range(n) if sign * mean[i] >= bar_1se)  # grid is large -> small: first is the largest
    result = LambdaPath(lambdas=lambdas, scores=scores, mean=mean, std=std,
                        sparsity=[sum(z) / k for z in zeros], penalized_sparsity=[sum(z) / k for z in pzeros],
                        lambda_max=lambda_max, best_index=best, index_1se=one_se, rule=rule,
                        score_name=score if isinstance(score, str) else getattr(score, "__name__", "score"),
                        folds=k, greater_is_better=sign > 0, task=path_kw["task"], direction=path_kw["direction"],
                        warm_start=path_kw["warm_start"], grid_given=grid_given)
    if n > 1 and result.index == n - 1:
        result.edge = "smallest"
    elif n > 1 and result.index == 0:
        # Walking up, a network reaches λ_max last, from trained weights: nearly but not always all zero there.
        at_max = result.penalized_sparsity[0] >= 1.0 or not grid_given
        result.edge = "lambda_max" if at_max else "largest"
    return result
