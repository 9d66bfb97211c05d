"""`python -m fusedreg sweep`: choose λ by k-fold cross-validation (fusedreg.select.select_lambda) on the digits
or on your own table, refit along the same path to the chosen λ, score the refit, draw the path, and write the
result as JSON (--json) and the refit model (--save-model).

run_sweep runs these steps, each a function below: the settings (`SweepPlan`: --quick and the model's
defaults applied), the data (fusedreg.data), the header, the CV path and the refit under one progress bar
(`_choose_and_refit`), the refit's numbers, the figure (fusedreg.plots), the printed path and refit, and the
files (`sweep_json`, `save_sweep_model`).
"""
import json
import os
import time
import warnings
from dataclasses import dataclass, field, replace

import torch

from . import console, plots
from .data import load_data, load_digits
from .folds import DataError, splits
from .models import PENALTY_LABELS, first_weight, model_fn, pruned, sweep_groups
from .path import path_units, penalty_keys, walk_path, zero_fraction
from .select import GridEdgeWarning, default_score, evaluate, select_lambda


@dataclass(kw_only=True)
class SweepPlan:
    """The sweep's settings once --quick and the model's defaults are applied (`_plan`)."""
    model: str              # "linear" (nn.Linear, full-batch to convergence) or "mlp"
    penalty: str            # "l1", "elastic_net" or "group_l1"
    folds: int
    n_lambdas: int
    lambda_min_ratio: float
    lambdas: "list | None"  # an explicit grid (large to small), else n_lambdas values from λ_max
    rule: str
    l1_ratio: float
    epochs: "int | None"    # the MLP's epochs per λ; None for a linear model
    batch_size: "int | None"
    lr: "float | None"
    hidden: int
    seed: int
    device: str
    backend: str

    @property
    def n_path(self):
        """The number of λ values on the grid."""
        return len(self.lambdas) if self.lambdas is not None else self.n_lambdas

    @property
    def calibrate(self):
        """Whether λ_max is calibrated by training (a network on a grid from λ_max; a linear model's is exact)."""
        return self.lambdas is None and self.model != "linear"

    @property
    def units(self):
        """The training settings that set what a path reports to the progress bar (`path_units`)."""
        return dict(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr)

    @property
    def groups(self):
        return sweep_groups(self.penalty, self.model)

    def train_kw(self, task):
        """select_lambda's and walk_path's training arguments."""
        return dict(lr=self.lr, batch_size=self.batch_size, epochs=self.epochs,
                    optimizer_kwargs=dict(backend=self.backend), param_groups=self.groups, group_dim=1,
                    l1_ratio=self.l1_ratio, penalty=self.penalty, seed=self.seed, task=task)


@dataclass(kw_only=True)
class SweepResult:
    path: object            # fusedreg.select.LambdaPath; path.model is the refit model
    data: object = field(repr=False, default=None)   # the Dataset
    scores: dict = field(default_factory=dict)       # the refit's scores: train, test (if held out), cv
    inputs_pruned: int = 0
    hidden_pruned: int = 0
    png: str = ""
    json: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def test_accuracy(self):
        return self.scores.get("test")


def run_sweep(*, threads=1, **kw):
    """Choose λ by cross-validation, refit, score, draw the path; on the digits training split by default, or
    on FILE (data=..., target=...). quick=True is the test-suite mode: at most 3 folds and 4 λ values, 1 epoch
    per λ for the MLP. threads: as for fusedreg.demo.run_demo."""
    with console.cpu_threads(threads):
        return _run_sweep(**kw)


def _run_sweep(*, data=None, target=None, task=None, model=None, test_fraction=0.0, json_path=None,
               save_model=None, penalty="l1", folds=5, n_lambdas=10, lambda_min_ratio=1e-3, lambdas=None,
               rule="best", l1_ratio=0.5, epochs=None, device="cpu", out="out/fusedreg_sweep.png", seed=0,
               hidden=64, batch_size=None, lr=None, backend="auto", progress=True, quick=False, print_fn=print):
    t_start = time.perf_counter()
    plan = _plan(quick=quick, model=model or ("mlp" if data is None else "linear"), penalty=penalty, folds=folds,
                 n_lambdas=n_lambdas, lambda_min_ratio=lambda_min_ratio, lambdas=lambdas, rule=rule,
                 l1_ratio=l1_ratio, epochs=epochs, batch_size=batch_size, lr=lr, hidden=hidden, seed=seed,
                 device=device, backend=backend)
    ds = _load(plan, data=data, target=target, task=task, test_fraction=test_fraction)
    make = model_fn(plan.model, n_in=ds.n_features, hidden=plan.hidden, n_out=ds.n_outputs, dtype=ds.X_train.dtype)
    probe = make()
    total = _progress_total(plan, ds, probe)
    _print_header(plan, ds, print_fn)
    bar = console.make_progress(total, "fusedreg sweep", progress)
    res, caught = _choose_and_refit(plan, ds, make=make, probe=probe, bar=bar)
    fit = res.model
    score = default_score(ds.task)
    factor = ds.y_scale ** 2 if score == "mse" else 1.0
    scores = dict(train=_score(fit, ds.X_train, ds.y_train, score=score, y_scale=ds.y_scale),
                  test=_score(fit, ds.X_test, ds.y_test, score=score, y_scale=ds.y_scale),
                  cv=res.mean[res.index] * factor)
    result = SweepResult(path=res, data=ds, scores=scores, inputs_pruned=int((first_weight(fit) == 0).all(0).sum()),
                         hidden_pruned=pruned(fit)[1] if plan.model == "mlp" else 0, png=os.path.abspath(out))
    os.makedirs(os.path.dirname(result.png), exist_ok=True)
    console.status("drawing the figure ...", progress)
    plots.plot_sweep(result.png, res, model=fit, kind=plan.penalty, data=ds, scale=factor)
    _print_path(plan, ds, res, factor=factor, caught=caught, print_fn=print_fn)
    penalized = _penalized_weights(plan, fit)
    _print_refit(plan, result, penalized, print_fn)
    result.json = sweep_json(plan, result, penalized=penalized, factor=factor,
                             warnings_=[str(w.message) for w in caught])
    _write_files(plan, result, json_path=json_path, save_model=save_model, print_fn=print_fn)
    print_fn(f"wrote {result.png}")
    result.seconds = time.perf_counter() - t_start
    print_fn(f"done in {result.seconds:.1f} s")
    return result


def _plan(*, quick, model, folds, n_lambdas, epochs, batch_size, lr, **settings):
    """The SweepPlan: quick caps the folds and the grid (explicit lambdas are kept whole: quick never drops a
    value the user listed) and gives the MLP 1 epoch per λ; the MLP's defaults fill what is not given."""
    if quick:
        folds, n_lambdas = min(folds, 3), min(n_lambdas, 4)
        if model == "mlp":  # a linear model still trains every λ to convergence
            epochs = 1
    if model == "mlp":
        epochs, batch_size, lr = epochs or 5, batch_size or 64, lr or 1e-2
    return SweepPlan(model=model, folds=folds, n_lambdas=n_lambdas, epochs=epochs, batch_size=batch_size, lr=lr,
                     **settings)


def _load(plan, *, data, target, task, test_fraction):
    """The Dataset: the digits (float64 for a linear model), or FILE; DataError when it cannot make the folds."""
    if data is None:
        ds = load_digits(plan.seed, plan.device)
        if task == "regression":
            raise DataError("the digits are a classification task; pass --data FILE for a regression")
        if plan.model == "linear":
            ds.X_train, ds.X_test = ds.X_train.double(), ds.X_test.double()
    else:
        ds = load_data(data, target, task, model=plan.model, test_fraction=test_fraction, seed=plan.seed,
                       device=plan.device)
    if len(ds.X_train) < plan.folds:
        raise DataError(f"{len(ds.X_train)} training rows cannot make {plan.folds} folds; use --folds "
                        f"{max(2, len(ds.X_train))} or fewer")
    return ds


def _progress_total(plan, ds, probe):
    """Every unit the progress bar will count: each fold's path, the refit (at most the whole grid) and the
    first λ_max calibration trial (retries are not counted, so the total never grows)."""
    n_train = len(ds.X_train)
    total = sum(path_units(probe, len(tr), plan.n_path, **plan.units)
                for tr, _ in splits(ds.y_train, plan.folds, plan.seed))
    total += path_units(probe, n_train, plan.n_path, **plan.units)
    if plan.calibrate:
        total += path_units(probe, n_train, 1, epochs=2 * plan.epochs, epochs_first=2 * plan.epochs,
                            batch_size=plan.batch_size, lr=plan.lr)
    return total


def _print_header(plan, ds, print_fn):
    """What runs: the penalty, model, data, loss and training, then how the task was chosen and what the
    standardization floored."""
    n_in, n_out = ds.n_features, ds.n_outputs
    shape = f"linear {n_in} -> {n_out}" if plan.model == "linear" else f"MLP {n_in}-{plan.hidden}-{n_out}"
    if plan.model == "linear":
        how = ("full-batch proximal gradient (fusedreg.SGD, lr = 1/L, FISTA), each λ to convergence, warm-started "
               "from λ_max down")
    else:
        how = (f"fusedreg.Adam lr={plan.lr:g}, batch {plan.batch_size}, {console.plural(plan.epochs, 'epoch')} "
               f"per λ ({2 * plan.epochs} for the first), warm-started from the smallest λ up")
    loss = "½·MSE (scikit-learn's Lasso objective)" if ds.task == "regression" else "mean cross-entropy"
    test_note = f", {len(ds.X_test)} held-out test rows" if ds.X_test is not None else ""
    print_fn(console.wrap(f"fusedreg sweep: {PENALTY_LABELS[plan.penalty]} on {shape}, {ds.source} "
                          f"({len(ds.X_train)} rows for {plan.folds}-fold CV{test_note}), loss {loss}; {how}; "
                          f"device {plan.device} ({console.plural(torch.get_num_threads(), 'CPU thread')})"))
    if ds.task_note:
        print_fn(ds.task_note)
    if ds.near_constant:
        print_fn(f"standardized {console.plural(n_in, 'feature')}; "
                 f"{console.plural(len(ds.near_constant), 'near-constant feature')} (one value in >= 99% of rows) "
                 "had the scale floored at 0.1·range")


def _choose_and_refit(plan, ds, *, make, probe, bar):
    """select_lambda on the training rows, then the refit along the same path to the chosen λ, under one bar
    (closed after). Returns (the LambdaPath with .model the refit, the GridEdgeWarnings caught)."""
    train_kw = plan.train_kw(ds.task)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GridEdgeWarning)
        try:
            res = select_lambda(make, ds.X_train, ds.y_train, lambdas=plan.lambdas, n_lambdas=plan.n_lambdas,
                                lambda_min_ratio=plan.lambda_min_ratio, folds=plan.folds, rule=plan.rule,
                                refit=False, progress=bar, calibrate=plan.calibrate, **train_kw)
            if bar is not None:
                bar.set_description("refit at the chosen λ")
                n_train = len(ds.X_train)  # the total counted a refit down the whole grid
                bar.total -= (path_units(probe, n_train, plan.n_path, **plan.units)
                              - path_units(probe, n_train, len(res.refit_lambdas), **plan.units))
                bar.refresh()
            # The refit walks the part of the grid the folds walked before the chosen λ: from λ_max down for a
            # linear model, from the smallest λ up for the MLP.
            res.model = walk_path(make, ds.X_train, ds.y_train, res.refit_lambdas, progress=bar,
                                  direction=res.direction, warm_start=res.warm_start, **train_kw)
        finally:
            if bar is not None:
                bar.close()
    return res, caught


def _score(model, X, y, *, score, y_scale):
    """The refit's score on (X, y), an MSE in y's units; None without rows (no test set)."""
    if X is None:
        return None
    v = evaluate(model, X, y, score=score)
    return v * y_scale ** 2 if score == "mse" else v


def _penalized_weights(plan, fit):
    """The refit's parameters the penalty reaches."""
    groups = plan.groups(fit, **penalty_keys(plan.penalty, 1.0, l1_ratio=plan.l1_ratio, group_dim=1))
    return [p for g in groups if any(g.get(k) for k in ("l1", "group_l1", "weight_decay")) for p in g["params"]]


def _print_path(plan, ds, res, *, factor, caught, print_fn):
    """The grid, the CV table (scores in y's units), the warnings, and the chosen λ."""
    grid = ("given" if plan.lambdas is not None else
            f"λ_max={res.lambda_max:.4g} down to {plan.lambda_min_ratio:g}·λ_max")
    print_fn(f"λ grid: {len(res.lambdas)} values, {grid}; rule {plan.rule!r} "
             + (f"(best mean validation {res.score_name})" if plan.rule == "best" else
                "(largest λ within one standard error of the best mean)"))
    if plan.lambdas is None and plan.model == "linear" and ds.task == "regression":
        print_fn("  λ_max = max|Xᵀ(y − ȳ)|/n: scikit-learn's alpha_max; λ means Lasso's alpha")
    print_fn(res.table() if factor == 1.0 else _scaled_table(res, factor))
    for w in caught:
        print_fn(console.wrap(f"warning: {w.message}"))
    print_fn(f"\nchosen λ = {res.lambda_:.4g} (best {res.best_lambda:.4g}, 1-SE {res.lambda_1se:.4g})")


def _print_refit(plan, result, penalized, print_fn):
    """The refit's scores, exact zeros and pruned features (and hidden neurons)."""
    res, ds, scores, fit = result.path, result.data, result.scores, result.path.model
    metric = res.score_name
    shown = (lambda v: f"{v:.1%}") if metric == "accuracy" else (lambda v: f"{v:.4g}")
    parts = [f"CV {metric} {shown(scores['cv'])}", f"train {metric} {shown(scores['train'])}"]
    if scores["test"] is not None:
        parts.append(f"test {metric} {shown(scores['test'])}")
    pruned_text = (f"features pruned {result.inputs_pruned}/{ds.n_features}"
                   + (f", hidden pruned {result.hidden_pruned}/{plan.hidden}" if plan.model == "mlp" else ""))
    print_fn(f"refit on all {len(ds.X_train)} training rows along the path ({res.describe_path()}) to "
             f"λ = {res.lambda_:.4g}:\n"
             f"  {', '.join(parts)}\n"
             f"  exact zeros {zero_fraction(fit.parameters()):.1%} of all parameters "
             f"({zero_fraction(penalized):.1%} of penalized weights), {pruned_text}")


def _write_files(plan, result, *, json_path, save_model, print_fn):
    """--json and --save-model."""
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(result.json, f, indent=1)
        print_fn(f"wrote {os.path.abspath(json_path)}")
    if save_model:
        res = result.path
        save_sweep_model(save_model, res.model, result.data, model=plan.model, hidden=plan.hidden, lam=res.lambda_,
                         penalty=plan.penalty)
        print_fn(f"wrote {os.path.abspath(save_model)} (state_dict + standardization; README: 'Predict with a "
                 "saved model')")


def _scaled_table(res, factor):
    return replace(res, mean=[m * factor for m in res.mean], std=[s * factor for s in res.std]).table()


def sweep_json(plan, result, *, penalized, factor, warnings_):
    """The whole result as a JSON-ready dict (README: `--json PATH`); scores in y's units (factor)."""
    res, ds, scores, fit = result.path, result.data, result.scores, result.path.model
    used = (first_weight(fit) != 0).any(0).tolist()
    return {
        "data": ds.source, "target": ds.target, "task": ds.task, "model": plan.model,
        "hidden": plan.hidden if plan.model == "mlp" else None, "penalty": plan.penalty,
        "l1_ratio": plan.l1_ratio if plan.penalty == "elastic_net" else None,
        "n_rows": len(ds.X_train), "n_features": ds.n_features, "folds": res.folds,
        "metric": res.score_name, "greater_is_better": res.greater_is_better,
        "lambda_max": res.lambda_max,
        "lambdas": res.lambdas,
        "cv_mean": [m * factor for m in res.mean], "cv_std": [s * factor for s in res.std],
        "zero_fraction": res.sparsity, "penalized_zero_fraction": res.penalized_sparsity,
        "rule": res.rule, "chosen_lambda": res.lambda_, "chosen_index": res.index,
        "best_lambda": res.best_lambda, "lambda_1se": res.lambda_1se,
        "warnings": warnings_,
        "refit": {
            "lambda": res.lambda_, "train_score": scores["train"], "test_score": scores["test"],
            "cv_score": scores["cv"], "metric": res.score_name,
            "zero_fraction": zero_fraction(fit.parameters()),
            "penalized_zero_fraction": zero_fraction(penalized),
            "features_used": [n for n, u in zip(ds.features, used) if u],
            "features_pruned": [n for n, u in zip(ds.features, used) if not u],
        },
        "standardization": {"features": ds.features, "mean": ds.mean, "scale": ds.scale,
                            "near_constant": [ds.features[j] for j in ds.near_constant],
                            "y_mean": ds.y_mean, "y_scale": ds.y_scale},
        "classes": ds.classes,
    }


def save_sweep_model(path, fit, ds, *, model, hidden, lam, penalty):
    """The refit model's state_dict with everything needed to predict (plain tensors, lists and strings, so
    torch.load's default weights_only=True reads it)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    dtype = first_weight(fit).dtype
    torch.save({
        "state_dict": {k: v.detach().cpu() for k, v in fit.state_dict().items()},
        "model": model, "n_features": ds.n_features, "hidden": hidden, "n_outputs": ds.n_outputs,
        "features": list(ds.features), "target": ds.target, "task": ds.task,
        "mean": torch.tensor(ds.mean, dtype=dtype), "scale": torch.tensor(ds.scale, dtype=dtype),
        "classes": list(ds.classes), "y_mean": float(ds.y_mean), "y_scale": float(ds.y_scale),
        "lambda": float(lam), "penalty": penalty,
    }, path)
