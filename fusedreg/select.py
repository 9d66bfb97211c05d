"""Choosing the penalty strength λ: a warm-started path from λ_max down, scored by k-fold cross-validation.

The classic recipe (glmnet's), carried over to any model a fusedreg optimizer trains:

1. λ_max is where every penalized weight is zero. A weight at zero stays there under the proximal step while
   |gradient| <= λ (L1), |gradient| <= λ·l1_ratio (elastic net), or ||group gradient||_2 <= λ·sqrt(|g|) (group
   lasso, whose penalty is λ·Σ_g sqrt(|g|)·||w_g||). `lambda_max` takes that bound from the loss gradient over
   all the training data at the given weights; at zero weights of a linear model it is glmnet's exact λ_max.
   A network is trained from random initial weights and its gradients grow as it trains, so the bound at the
   initial weights can fall short: `select_lambda` (calibrate=True) therefore uses `calibrate_lambda_max`, which
   doubles the bound until training at it really ends with every penalized weight exactly zero.
2. The grid is geometric: n_lambdas values from λ_max down to λ_max·lambda_min_ratio.
3. On each of k folds (stratified by class for integer labels) one model walks the grid from large to small λ.
   Each λ starts from the previous λ's weights and optimizer state (warm start) and trains `epochs` epochs; the
   first λ trains `epochs_first`. Each λ is scored on the held-out fold. A network whose penalized weights are
   all zero cannot come back (every gradient through a zero layer is zero), so after a λ that zeroed them all
   the next λ starts again from the initial weights. For a network the path is path-dependent: neurons pruned
   at a large λ tend to stay pruned at smaller ones, so models down the path are sparser than cold starts at
   the same λ (and cheaper to get).
4. The chosen λ has the best mean validation score (rule="best", the default). With rule="1se" it is the
   largest λ whose mean score is within one standard error (std / sqrt(k)) of the best mean: the sparsest model
   the data cannot tell apart from the best one.

`select_lambda` returns a `LambdaPath`: the grid, per-fold / mean / std scores, the mean exact-zero fraction
per λ, both choices, and with refit=True a model trained on all the data down the same path to the chosen λ.
"""
import copy
import math
from dataclasses import dataclass, field

import torch

from .optim import Adam
from .penalties import elastic_net, param_groups as _default_param_groups

PENALTY_NAMES = ("l1", "elastic_net", "group_l1", "l2")
RULES = ("best", "1se")
SCORES = ("accuracy", "neg_loss")


@dataclass
class LambdaPath:
    """What `select_lambda` found. Every per-λ list is in grid order: largest λ first."""
    lambdas: list
    scores: list            # [n_lambdas][folds] validation scores, higher is better
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

    @property
    def index(self):
        """Grid index of the chosen λ (by `rule`)."""
        return self.best_index if self.rule == "best" else self.index_1se

    @property
    def lambda_(self):
        """The chosen λ."""
        return self.lambdas[self.index]

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
        for i, lam in enumerate(self.lambdas):
            mark = ("* " if i == self.index else "  ")
            note = []
            if i == self.best_index:
                note.append("best")
            if i == self.index_1se:
                note.append("1-SE")
            lines.append(f"{mark}{lam:10.3g}  {self.mean[i]:14.4f} ± {self.std[i]:7.4f}  {self.sparsity[i]:11.1%}  "
                         f"{self.penalized_sparsity[i]:17.1%}  {', '.join(note)}")
        return "\n".join(lines)

    def __str__(self):
        return (f"{self.table()}\nchosen lambda = {self.lambda_:.4g} (rule {self.rule!r}, {self.folds}-fold CV, "
                f"mean {self.score_name} {self.mean[self.index]:.4f})")


def penalty_keys(penalty, lam, *, l1_ratio=0.5, group_dim=1):
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
    return [math.exp(hi + (lo - hi) * i / (n_lambdas - 1)) for i in range(n_lambdas)]


def kfold(y, folds, seed=0):
    """k disjoint index tensors covering range(len(y)); stratified by class when y holds integer labels."""
    n = len(y)
    if not 2 <= folds <= n:
        raise ValueError(f"folds must be between 2 and the number of samples ({n}), got {folds}")
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


@torch.no_grad()
def evaluate(model, X, y, score, loss_fn):
    """A validation score, higher is better: accuracy, minus the mean loss, or a callable (model, X, y)."""
    model.eval()
    if callable(score):
        return float(score(model, X, y))
    out = model(X)
    if score == "accuracy":
        return float((out.argmax(1) == y).float().mean())
    return -float(loss_fn(out, y))


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


def lambda_max(model, X, y, penalty="l1", *, l1_ratio=0.5, group_dim=1, loss_fn=None, param_groups=None):
    """The smallest λ at which a proximal step keeps every penalized weight of `model` at zero, taken from the
    loss gradient at the current weights over all of (X, y). See the module docstring for what it means for a
    network. Does not change the model."""
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    param_groups = param_groups or _default_param_groups
    keys = penalty_keys(penalty, 1.0, l1_ratio=l1_ratio, group_dim=group_dim)
    params = _penalized(param_groups(model, **keys), keys)
    if not params:
        raise ValueError("no parameter is penalized: the param_groups builder put the penalty on no group")
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
    # Only the L1 part thresholds: elastic net's l1 = λ·l1_ratio, so the bound grows by 1/l1_ratio (glmnet's).
    share = float(keys.get("group_l1", 0) if "group_l1" in keys else keys.get("l1", 0))
    if share <= 0:
        raise ValueError("the penalty has no L1 part, so no λ zeroes the weights; pass lambdas explicitly")
    if bound <= 0:
        raise ValueError("the loss gradient is zero at the initial weights; pass lambdas explicitly")
    return bound / share


def calibrate_lambda_max(model_fn, X, y, penalty="l1", *, epochs=20, max_doublings=10, **path_kw):
    """λ_max that really zeroes the network: start from `lambda_max` at model_fn()'s initial weights and double
    it until `epochs` epochs of training from those weights at that λ leave every penalized weight exactly zero.
    For a linear model the first value already does; for a network the loss gradient grows as the weights
    train, so the bound taken at the initial weights can fall short. path_kw: as for `walk_path`.
    Returns (λ_max, number of trial trainings)."""
    loss_fn = path_kw.get("loss_fn") or torch.nn.functional.cross_entropy
    seed = path_kw.get("seed", 0)
    torch.manual_seed(seed)
    lam = lambda_max(model_fn().to(X.device), X, y, penalty, l1_ratio=path_kw.get("l1_ratio", 0.5),
                     group_dim=path_kw.get("group_dim", 1), loss_fn=loss_fn,
                     param_groups=path_kw.get("param_groups"))
    dead = [False]

    def check(i, lam, model, penalized):
        dead[0] = all(not bool(p.any()) for p in penalized)

    kw = {k: v for k, v in path_kw.items() if k not in ("epochs", "epochs_first", "on_lambda")}
    bar = kw.get("progress")
    for tries in range(1, max_doublings + 2):
        if tries > 1 and getattr(bar, "total", None) is not None:  # callers count the first trial only
            bar.total += path_steps(len(X), 1, epochs=epochs, epochs_first=epochs,
                                    batch_size=kw.get("batch_size", 128))
        walk_path(model_fn, X, y, [lam], penalty=penalty, epochs=epochs, epochs_first=epochs, on_lambda=check,
                  **kw)
        if dead[0] or tries > max_doublings:
            return lam, tries
        lam *= 2.0


def _set_penalty(optimizer, groups):
    for group, new in zip(optimizer.param_groups, groups):
        for k, v in new.items():
            if k != "params":
                group[k] = v


def walk_path(model_fn, X, y, lambdas, *, penalty="l1", l1_ratio=0.5, group_dim=1, param_groups=None,
              optimizer=None, lr=1e-2, optimizer_kwargs=None, epochs=10, epochs_first=None, batch_size=128,
              loss_fn=None, seed=0, on_lambda=None, progress=None):
    """Train one model down `lambdas` (large to small) with warm starts, the way `select_lambda` does on each
    fold; call on_lambda(i, lam, model, penalized_params) after each λ. Returns the model at the last λ.
    Arguments as in `select_lambda`; progress: None or an object with update(steps)."""
    optimizer = optimizer or Adam
    optimizer_kwargs = dict(optimizer_kwargs or {})
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    param_groups = param_groups or _default_param_groups
    epochs_first = epochs_first or 2 * epochs
    torch.manual_seed(seed)
    model = model_fn().to(X.device)
    init = copy.deepcopy(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    opt = None
    for i, lam in enumerate(lambdas):
        keys = penalty_keys(penalty, lam, l1_ratio=l1_ratio, group_dim=group_dim)
        groups = param_groups(model, **keys)
        penalized = _penalized(groups, keys)
        restart = opt is not None and bool(penalized) and all(not bool(p.any()) for p in penalized)
        if restart:  # every penalized weight is zero: a dead network, start again from the initial weights
            model.load_state_dict(init)
            opt = None
            if getattr(progress, "total", None) is not None:  # path_steps counted `epochs` for this λ
                progress.total += math.ceil(len(X) / batch_size) * (epochs_first - epochs)
        if opt is None:
            opt = optimizer(groups, lr=lr, **optimizer_kwargs)
        else:
            _set_penalty(opt, groups)
        train_epochs(model, opt, X, y, epochs=epochs_first if i == 0 or restart else epochs,
                     batch_size=batch_size, loss_fn=loss_fn, generator=gen, progress=progress)
        if on_lambda is not None:
            on_lambda(i, lam, model, penalized)
    return model


def path_steps(n_samples, n_lambdas, *, epochs, epochs_first=None, batch_size):
    """Optimizer steps one `walk_path` takes when no restart happens (for progress bars; a restart adds its
    extra steps to a bar's total itself)."""
    return math.ceil(n_samples / batch_size) * ((epochs_first or 2 * epochs) + (n_lambdas - 1) * epochs)


def select_lambda(model_fn, X, y, *, penalty="l1", lambdas=None, n_lambdas=10, lambda_min_ratio=1e-3,
                  folds=5, rule="best", l1_ratio=0.5, group_dim=1, param_groups=None, optimizer=None, lr=1e-2,
                  optimizer_kwargs=None, epochs=10, epochs_first=None, batch_size=128, loss_fn=None,
                  score="accuracy", seed=0, calibrate=True, refit=True, progress=False):
    """Choose λ for `penalty` by k-fold cross-validation along a warm-started path from large to small λ.

    model_fn()         builds a fresh model (called under torch.manual_seed(seed), so every fold starts alike).
    X, y               all the training data as tensors on the device to train on.
    penalty            "l1", "elastic_net" (with l1_ratio), "group_l1" (with group_dim), "l2", or a callable
                       lam -> optimizer group keys (e.g. lambda lam: dict(l1=lam, nonneg=True)).
    lambdas            an explicit grid (sorted large to small); else n_lambdas values from λ_max down to
                       λ_max*lambda_min_ratio (see `lambda_max`; "l2" and callables without l1 need lambdas).
    calibrate          (default True) make λ_max the strength that really zeroes every penalized weight when
                       trained epochs_first epochs on all of (X, y): `calibrate_lambda_max`, which doubles the
                       gradient bound until it does. False: the gradient bound at the initial weights as is.
    rule               "best": the best mean validation score (default); "1se": the largest λ within one
                       standard error of it.
    param_groups       (model, **penalty_keys) -> param groups; default fusedreg.param_groups (weights
                       penalized, biases and norms not). Pass your own to penalize only some layers.
    optimizer          a fusedreg optimizer class (default fusedreg.Adam) built as optimizer(groups, lr=lr,
                       **optimizer_kwargs).
    epochs             epochs per λ after the first (warm start); epochs_first for the first λ (default 2*epochs).
    score              "accuracy" (classification, default), "neg_loss", or a callable (model, X, y) -> float,
                       higher better.
    refit              also train one model on all of (X, y) down the grid to the chosen λ -> result.model.
    progress           show a tqdm bar (needs tqdm), or pass a tqdm-like object with update().
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {RULES}")
    if not callable(score) and score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {SCORES} or pass a callable")
    if not callable(penalty) and penalty not in PENALTY_NAMES:
        raise ValueError(f"unknown penalty {penalty!r}; choose one of {PENALTY_NAMES} or pass a callable")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    param_groups = param_groups or _default_param_groups
    epochs_first = epochs_first or 2 * epochs
    device = X.device
    path_kw = dict(penalty=penalty, l1_ratio=l1_ratio, group_dim=group_dim, param_groups=param_groups,
                   optimizer=optimizer, lr=lr, optimizer_kwargs=optimizer_kwargs, epochs=epochs,
                   epochs_first=epochs_first, batch_size=batch_size, loss_fn=loss_fn, seed=seed)

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
        if not lambdas or any(not v >= 0 for v in lambdas):
            raise ValueError(f"lambdas must be a non-empty list of values >= 0, got {lambdas}")
        if any(a < b for a, b in zip(lambdas, lambdas[1:])):
            raise ValueError("lambdas must be sorted from large to small (the path warm-starts downwards)")
        n = len(lambdas)
    splits = kfold(y, folds, seed)

    bar, own_bar = (None if progress is False else progress), False
    if progress is True:
        from tqdm.auto import tqdm
        total = sum(path_steps(len(X) - len(v), n, epochs=epochs, epochs_first=epochs_first,
                               batch_size=batch_size) for v in splits)
        if lambdas is None and calibrate:
            total += path_steps(len(X), 1, epochs=epochs_first, epochs_first=epochs_first, batch_size=batch_size)
        bar, own_bar = tqdm(total=total, desc=f"{folds}-fold CV path", unit="step"), True
    scores = [[0.0] * folds for _ in range(n)]
    zeros = [[0.0] * folds for _ in range(n)]
    pzeros = [[0.0] * folds for _ in range(n)]
    try:
        if lambdas is None:
            if calibrate:
                kw = {k: v for k, v in path_kw.items() if k not in ("epochs", "epochs_first")}
                lmax, _ = calibrate_lambda_max(model_fn, X, y, epochs=epochs_first, progress=bar, **kw)
            else:
                torch.manual_seed(seed)
                lmax = lambda_max(model_fn().to(device), X, y, penalty, l1_ratio=l1_ratio, group_dim=group_dim,
                                  loss_fn=loss_fn, param_groups=param_groups)
            lambdas = geometric_grid(lmax, n_lambdas, lambda_min_ratio)
        else:
            lmax = lambdas[0]
        for f, val in enumerate(splits):
            mask = torch.ones(len(X), dtype=torch.bool)
            mask[val] = False
            tr = torch.nonzero(mask).flatten().to(device)
            val = val.to(device)
            Xt, yt, Xv, yv = X[tr], y[tr], X[val], y[val]

            def record(i, lam, model, penalized, f=f, Xv=Xv, yv=yv):
                scores[i][f] = evaluate(model, Xv, yv, score, loss_fn)
                zeros[i][f] = zero_fraction(model.parameters())
                pzeros[i][f] = zero_fraction(penalized)

            walk_path(model_fn, Xt, yt, lambdas, on_lambda=record, progress=bar, **path_kw)
    finally:
        if own_bar:
            bar.close()

    mean = [sum(s) / folds for s in scores]
    std = [math.sqrt(sum((v - m) ** 2 for v in s) / (folds - 1)) if folds > 1 else 0.0
           for s, m in zip(scores, mean)]
    best = max(range(n), key=lambda i: (mean[i], lambdas[i]))  # ties: the larger (sparser) λ
    bar_1se = mean[best] - std[best] / math.sqrt(folds)
    one_se = min(i for i in range(n) if mean[i] >= bar_1se)  # grid is large -> small: first is the largest λ
    result = LambdaPath(lambdas=lambdas, scores=scores, mean=mean, std=std,
                        sparsity=[sum(z) / folds for z in zeros], penalized_sparsity=[sum(z) / folds for z in pzeros],
                        lambda_max=lmax, best_index=best, index_1se=one_se, rule=rule,
                        score_name=score if isinstance(score, str) else getattr(score, "__name__", "score"),
                        folds=folds)
    if refit:
        result.model = walk_path(model_fn, X, y, lambdas[:result.index + 1], **path_kw)
    return result
