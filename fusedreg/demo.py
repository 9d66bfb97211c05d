"""The jobs behind `python -m fusedreg demo` and `python -m fusedreg sweep`, on data that ships with scikit-learn.

Data: scikit-learn's handwritten digits (1,797 images of 8x8 pixels, 10 classes; bundled with the package, no
download), standardized with the training split's statistics, split 75/25 stratified by the seed. Model: an MLP
64 -> hidden -> 10 with ReLU, trained by fusedreg.Adam on mini-batches.

demo   trains the same model from the same initial weights five times: no penalty, L2 (Adam's coupled weight
       decay), L1 (proximal, exact zeros), elastic net, and group lasso on the first layer's columns (one group
       per input pixel). It prints test accuracy, the exact-zero fraction, the input pixels and hidden neurons
       pruned, and the optimizer step time for each fusedreg backend next to torch.optim measured in the same
       run; it also walks a λ path for L1 and group lasso and draws everything into one PNG.
sweep  chooses λ by k-fold cross-validation along a warm-started path (fusedreg.select.select_lambda) on the
       training split, refits at the chosen λ, scores the refit model on the test split, and draws the path.

The two need the demo extras: pip install "fusedreg[demo]" (scikit-learn, matplotlib, tqdm).
"""
import contextlib
import copy
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from . import backends
from . import select as sel
from .optim import Adam
from .penalties import sparsity

PENALTY_LABELS = {"none": "none", "l2": "L2", "l1": "L1", "elastic_net": "elastic net",
                  "group_l1": "group lasso (layer-1 inputs)"}
# Backends timed per device, in the order the table shows them.
TIMED = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "torch")}


# ----------------------------------------------------------------------------------------------------- data, model

@dataclass
class Digits:
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: torch.Tensor
    y_test: torch.Tensor
    constant: list  # pixels constant over the training split (all zero after standardization)

    @property
    def n_features(self):
        return self.X_train.shape[1]


def load_digits(seed=0, device="cpu", test_size=0.25):
    """scikit-learn's digits as float32 tensors on `device`: a stratified split, standardized on the train part."""
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    X, y = sk_load(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    mean, std = Xtr.mean(0), Xtr.std(0)
    constant = [int(i) for i in (std == 0).nonzero()[0]]
    std[std == 0] = 1.0

    def t(a, dtype):
        return torch.tensor(a, dtype=dtype, device=device)

    return Digits(t((Xtr - mean) / std, torch.float32), t(ytr, torch.long), t((Xte - mean) / std, torch.float32),
                  t(yte, torch.long), constant)


def mlp(n_in=64, hidden=64, n_out=10):
    return torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out))


def first_layer_groups(model, **keys):
    """Param groups with the penalty keys on the first layer's weight only; every other param unpenalized."""
    first = model[0].weight
    return [dict(params=[first], **keys), dict(params=[p for p in model.parameters() if p is not first])]


def weight_groups(model, **keys):
    """fusedreg.param_groups: the penalty on the weight matrices, biases unpenalized."""
    from . import param_groups
    return param_groups(model, **keys)


def groups_for(kind):
    return first_layer_groups if kind == "group_l1" else weight_groups


def pruned(model):
    """(input features pruned, hidden neurons pruned). An input is pruned when its column of the first weight is
    all zero. A hidden neuron is pruned when its outgoing column of the second weight is all zero (it never
    reaches the output) or its incoming row is all zero (its output is the constant relu(bias), which folds
    into the next layer's bias)."""
    w1, w2 = model[0].weight, model[2].weight
    inputs = int((w1 == 0).all(0).sum())
    hidden = int(((w1 == 0).all(1) | (w2 == 0).all(0)).sum())
    return inputs, hidden


def make_progress(total, desc, enabled):
    """A tqdm bar on stderr (shown on terminals; enabled=False hides it), or None when tqdm is missing."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="step", file=sys.stderr, disable=None if enabled else True,
                dynamic_ncols=True)


@contextlib.contextmanager
def cpu_threads(n):
    """torch's intra-op threads set to n for the block, restored after. The demo's model is tiny: one thread
    is fastest, and a thread pool on a busy machine turns microsecond ops into milliseconds of waiting."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------- step-time timing

def _adam_l1_prox(opt, params, lam):
    """Adam's proximal L1 step written with torch ops after torch.optim.Adam.step(): soft-threshold each weight
    by lr*lam/(sqrt(v_hat) + eps), the same math the fused kernels do inside the step."""
    group = opt.param_groups[0]
    lr, beta2, eps = group["lr"], group["betas"][1], group["eps"]
    with torch.no_grad():
        for p in params:
            st = opt.state[p]
            bc2 = math.sqrt(1 - beta2 ** float(st["step"]))
            thr = (lr * lam) / (st["exp_avg_sq"].sqrt() / bc2 + eps)
            p.copy_(p.sign() * (p.abs() - thr).clamp_min_(0))


def _adam_group_prox(opt, params, lam, dim):
    """Group lasso after torch.optim.Adam.step(), with torch ops: fusedreg.reference.group_prox in Adam's
    per-element metric (sqrt(v_hat) + eps), the same math fusedreg applies inside its fused step."""
    from .reference import group_prox
    group = opt.param_groups[0]
    lr, beta2, eps = group["lr"], group["betas"][1], group["eps"]
    with torch.no_grad():
        for p in params:
            st = opt.state[p]
            bc2 = math.sqrt(1 - beta2 ** float(st["step"]))
            p.copy_(group_prox(p, lr, lam, dim, denom=st["exp_avg_sq"].sqrt() / bc2 + eps))


def torch_optim_equivalent(kind, lam, l1_ratio, model, lr):
    """torch.optim.Adam plus the penalty done the way one writes it today: (optimizer, after_step())."""
    groups = groups_for(kind)(model, **penalty_keys(kind, lam, l1_ratio))
    plain, wd, l1, group = [], 0.0, 0.0, None
    for g in groups:
        wd = g.get("weight_decay", 0.0) or wd
        l1 = g.get("l1", 0.0) or l1
        if g.get("group_l1"):
            group = (g["params"], g["group_l1"], g.get("group_dim", 1))
        plain.append(dict(params=g["params"], weight_decay=g.get("weight_decay", 0.0)))
    opt = torch.optim.Adam(plain, lr=lr)
    penalized = [p for g in groups if g.get("l1") for p in g["params"]]

    def after():
        if l1:
            _adam_l1_prox(opt, penalized, l1)
        if group:
            _adam_group_prox(opt, *group)

    return opt, after


def time_steps(candidates, X, y, steps, device, warmup=5):
    """Median wall time in microseconds of optimizer.step() (+ after()) for each (model, optimizer, after)
    candidate, with fixed gradients. The candidates take turns step by step, so a busy moment on the machine
    hits them all alike."""
    for model, _, _ in candidates:
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(X), y).backward()
    times = [[] for _ in candidates]
    for i in range(warmup + steps):
        for k, (_, opt, after) in enumerate(candidates):
            _sync(device)
            t0 = time.perf_counter()
            opt.step()
            if after is not None:
                after()
            _sync(device)
            if i >= warmup:
                times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e6 for t in times]


def time_backends(model, kind, lam, l1_ratio, lr, X, y, steps, device):
    """{backend: median µs or why it was not timed} for the fusedreg backends of `device`, and the median µs
    of torch.optim.Adam with the same penalty in torch ops, each on its own copy of `model`."""
    available, explain = backends.available(), backends.explain()
    keys = penalty_keys(kind, lam, l1_ratio)
    names, candidates = [], []
    for b in TIMED[torch.device(device).type]:
        if b in available:
            m = copy.deepcopy(model)
            names.append(b)
            candidates.append((m, Adam(groups_for(kind)(m, **keys), lr=lr, backend=b), None))
    m = copy.deepcopy(model)
    candidates.append((m, *torch_optim_equivalent(kind, lam, l1_ratio, m, lr)))
    times = time_steps(candidates, X, y, steps, device)
    step_us = {b: explain[b] for b in TIMED[torch.device(device).type] if b not in available}
    step_us.update(zip(names, times))
    return step_us, times[-1]


def penalty_keys(kind, lam, l1_ratio=0.5):
    if kind == "none":
        return {}
    return sel.penalty_keys(kind, lam, l1_ratio=l1_ratio, group_dim=1)


# ------------------------------------------------------------------------------------------------------- demo

@dataclass
class DemoRow:
    kind: str
    lam: float
    accuracy: float
    zeros: float            # exact-zero fraction over all parameters (fusedreg.sparsity(model).overall)
    inputs_pruned: int
    hidden_pruned: int
    step_us: dict           # backend -> median µs, or the reason it was not timed
    torch_us: float         # torch.optim.Adam (+ the penalty in torch ops)

    @property
    def label(self):
        return PENALTY_LABELS[self.kind]


@dataclass
class DemoResult:
    rows: list
    paths: dict             # kind -> dict(lambdas, accuracy, zeros, inputs_kept)
    models: dict = field(repr=False)
    png: str = ""
    table: str = ""
    seconds: float = 0.0


def demo_table(rows, data, hidden, device, timed, steps):
    head = (f"{'penalty':30} {'lambda':>8} {'test acc':>8} {'zeros':>7} {'inputs pruned':>13} "
            f"{'hidden pruned':>13}   " + " ".join(f"{b + ' us':>9}" for b in timed) + f" {'torch.optim us':>14}")
    lines = [head, "-" * len(head)]
    reasons = {}
    for r in rows:
        cells = []
        for b in timed:
            v = r.step_us[b]
            if isinstance(v, str):
                reasons[b] = v
                cells.append(f"{'n/a':>9}")
            else:
                cells.append(f"{v:9.1f}")
        lam = "-" if r.kind == "none" else f"{r.lam:.0e}"
        lines.append(f"{r.label:30} {lam:>8} {r.accuracy:8.1%} {r.zeros:7.1%} "
                     f"{f'{r.inputs_pruned}/{data.n_features}':>13} {f'{r.hidden_pruned}/{hidden}':>13}   "
                     + " ".join(cells) + f" {r.torch_us:14.1f}")
    notes = [
        f"zeros: exact-zero fraction of all parameters (biases included). inputs pruned: pixels whose first-layer "
        f"column is exactly zero ({len(data.constant)} of the {data.n_features} pixels are constant in the "
        f"training split, so any L1-type penalty removes them).",
        "hidden pruned: neurons whose incoming row or outgoing column is exactly zero.",
        f"lambda: L2 = Adam's coupled weight decay; L1 = λ·Σ|w|; elastic net = α with l1 = α·l1_ratio and weight "
        f"decay = α·(1 - l1_ratio); group lasso = λ·Σ_j sqrt({hidden})·||W1[:, j]||. Biases are never penalized.",
        f"step times: median of {steps} optimizer.step() calls on this {device} model with fixed gradients, "
        f"measured in this run. torch.optim = torch.optim.Adam.step() followed by the same penalty written in torch "
        f"ops (the L1 soft-threshold uses Adam's per-element step, as fusedreg does). A model this small "
        f"({sum(p.numel() for p in mlp(data.n_features, hidden).parameters()):,} parameters) is overhead-bound: "
        f"the times measure per-call cost, not memory bandwidth.",
    ]
    for b, why in reasons.items():
        notes.append(f"{b}: not timed, {why}")
    return "\n".join(lines + [""] + notes)


def run_demo(*, threads=1, **kw):
    """Train the five penalties, time the steps, walk the λ paths, draw the PNG; returns a DemoResult.
    quick=True is the test-suite mode: 3 epochs, a 4-point path, 20 timed steps. threads: torch's CPU threads
    for the run (0 leaves torch's setting alone)."""
    with cpu_threads(threads):
        return _run_demo(threads=threads, **kw)


def _run_demo(*, epochs=30, device="cpu", out="fusedreg_demo.png", seed=0, hidden=64, batch_size=64, lr=1e-2,
              l2=1e-2, l1=2e-3, elastic_net=4e-3, l1_ratio=0.5, group_lasso=7e-3, backend="auto",
              path_lambdas=8, path_epochs=None, timing_steps=200, progress=True, quick=False, print_fn=print,
              threads=1):
    t_start = time.perf_counter()
    if quick:
        epochs, path_lambdas, timing_steps = min(epochs, 3), min(path_lambdas, 4), min(timing_steps, 20)
    path_epochs = path_epochs or max(1, epochs // 6)

    data = load_digits(seed, device)
    n_in = data.n_features
    configs = [("none", 0.0), ("l2", l2), ("l1", l1), ("elastic_net", elastic_net), ("group_l1", group_lasso)]
    steps_per_epoch = math.ceil(len(data.X_train) / batch_size)
    path_total = 2 * (sel.path_steps(len(data.X_train), path_lambdas, epochs=path_epochs, batch_size=batch_size)
                      + sel.path_steps(len(data.X_train), 1, epochs=path_epochs, batch_size=batch_size))
    bar = make_progress(len(configs) * epochs * steps_per_epoch + path_total, "fusedreg demo", progress)
    print_fn(f"fusedreg demo: MLP {n_in}-{hidden}-10 on scikit-learn digits ({len(data.X_train)} train / "
             f"{len(data.X_test)} test images of 8x8 pixels), fusedreg.Adam lr={lr:g}, {epochs} epochs, "
             f"batch {batch_size}, device {device} ({torch.get_num_threads()} CPU thread(s)), backend {backend} -> "
             f"{backends.resolve(backend, torch.device(device))}")

    def fresh():
        torch.manual_seed(seed)
        return mlp(n_in, hidden).to(device)

    rows, models = [], {}
    timed = TIMED[torch.device(device).type]
    Xb, yb = data.X_train[:batch_size], data.y_train[:batch_size]
    try:
        for kind, lam in configs:
            if bar is not None:
                bar.set_description(f"training: {PENALTY_LABELS[kind]}")
            model = fresh()
            keys = penalty_keys(kind, lam, l1_ratio)
            opt = Adam(groups_for(kind)(model, **keys), lr=lr, backend=backend)
            sel.train_epochs(model, opt, data.X_train, data.y_train, epochs=epochs, batch_size=batch_size,
                             loss_fn=torch.nn.functional.cross_entropy,
                             generator=torch.Generator().manual_seed(seed), progress=bar)
            models[kind] = model
            acc = sel.evaluate(model, data.X_test, data.y_test, "accuracy", None)
            inputs, hid = pruned(model)
            step_us, torch_us = time_backends(model, kind, lam, l1_ratio, lr, Xb, yb, timing_steps, device)
            rows.append(DemoRow(kind, lam, acc, float(sparsity(model).overall), inputs, hid, step_us, torch_us))

        paths = {}
        for kind in ("l1", "group_l1"):
            if bar is not None:
                bar.set_description(f"lambda path: {PENALTY_LABELS[kind]}")
            path_kw = dict(param_groups=groups_for(kind), lr=lr, optimizer_kwargs=dict(backend=backend),
                           batch_size=batch_size, seed=seed, progress=bar)
            lmax, _ = sel.calibrate_lambda_max(mlp_factory(n_in, hidden), data.X_train, data.y_train, kind,
                                               epochs=2 * path_epochs, **path_kw)
            lambdas = sel.geometric_grid(lmax, path_lambdas, 1e-3)
            rec = dict(lambdas=lambdas, accuracy=[], zeros=[], inputs_kept=[])

            def on_lambda(i, lam, model, penalized, rec=rec):
                rec["accuracy"].append(sel.evaluate(model, data.X_test, data.y_test, "accuracy", None))
                rec["zeros"].append(sel.zero_fraction(penalized))
                rec["inputs_kept"].append(n_in - pruned(model)[0])

            sel.walk_path(mlp_factory(n_in, hidden), data.X_train, data.y_train, lambdas, penalty=kind,
                          epochs=path_epochs, on_lambda=on_lambda, **path_kw)
            paths[kind] = rec
    finally:
        if bar is not None:
            bar.close()

    table = demo_table(rows, data, hidden, device, timed, timing_steps)
    png = os.path.abspath(out)
    plot_demo(png, rows, models, paths, data, hidden)
    result = DemoResult(rows, paths, models, png, table, time.perf_counter() - t_start)
    print_fn(table)
    print_fn(f"\nwrote {png}")
    print_fn(f"done in {result.seconds:.1f} s")
    return result


def mlp_factory(n_in, hidden):
    return lambda: mlp(n_in, hidden)


# ---------------------------------------------------------------------------------------------------- plotting

def _figure(width, height):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def _pixel_map(ax, model, title):
    """The first layer's column norms as the 8x8 image: which input pixels the model still reads."""
    norms = torch.linalg.vector_norm(model[0].weight.detach().float().cpu(), dim=0)
    side = int(round(math.sqrt(norms.numel())))
    img = norms.reshape(side, side).numpy()
    ax.imshow(img, cmap="viridis", interpolation="nearest")
    for k in (norms == 0).nonzero().flatten().tolist():
        ax.text(k % side, k // side, "x", ha="center", va="center", color="red", fontsize=8)
    kept = int((norms != 0).sum())
    ax.set_title(f"{title}\n{kept}/{norms.numel()} pixels used", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def plot_demo(path, rows, models, paths, data, hidden):
    fig = _figure(18, 11)
    grid = fig.add_gridspec(3, len(rows))
    weights = {r.kind: torch.cat([p.detach().float().cpu().flatten() for p in models[r.kind].parameters()
                                  if p.dim() >= 2]) for r in rows}
    lim = max(float(w.abs().max()) for w in weights.values())
    bins = torch.linspace(-lim, lim, 81).numpy()
    for j, r in enumerate(rows):
        w = weights[r.kind]
        ax = fig.add_subplot(grid[0, j])
        ax.hist(w[w != 0].numpy(), bins=bins, color="C0")
        nz = int((w == 0).sum())
        if nz:
            ax.bar([0], [nz], width=(bins[1] - bins[0]) * 1.5, color="C3", label=f"exact zeros: {nz / w.numel():.0%}")
            ax.legend(fontsize=8, loc="upper right")
        ax.set_yscale("log")
        lam = "" if r.kind == "none" else f", λ={r.lam:g}"
        ax.set_title(f"{r.label}{lam}\ntest acc {r.accuracy:.1%}", fontsize=9)
        ax.set_xlabel("weight value (both layers)", fontsize=8)
        if j == 0:
            ax.set_ylabel("count (log)")
        ax = fig.add_subplot(grid[1, j])
        _pixel_map(ax, models[r.kind], r.label)
        if j == 0:
            ax.set_ylabel("||W1[:, pixel]||  (x: pruned)")
    names = {"l1": "L1", "group_l1": "group lasso"}
    ax_acc = fig.add_subplot(grid[2, :2])
    ax_zero = fig.add_subplot(grid[2, 2:4])
    ax_in = fig.add_subplot(grid[2, 4:])
    for kind, rec in paths.items():
        ax_acc.plot(rec["lambdas"], rec["accuracy"], "o-", label=names[kind])
        ax_zero.plot(rec["lambdas"], rec["zeros"], "o-", label=names[kind])
        ax_in.plot(rec["lambdas"], rec["inputs_kept"], "o-", label=names[kind])
    for ax, ylabel in ((ax_acc, "test accuracy"), (ax_zero, "exact-zero fraction (penalized weights)"),
                       (ax_in, "input pixels used")):
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("λ (warm-started path, large to small)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"fusedreg demo: MLP {data.n_features}-{hidden}-10 on scikit-learn digits")
    fig.savefig(path, dpi=80)


def plot_sweep(path, res, model, kind, data):
    fig = _figure(15, 4.5)
    axes = fig.subplots(1, 3, width_ratios=[2, 2, 1])
    lam = res.lambdas
    axes[0].errorbar(lam, res.mean, yerr=res.std, fmt="o-", capsize=3, label=f"{res.folds}-fold CV mean ± std")
    axes[1].plot(lam, res.penalized_sparsity, "o-", label="penalized weights")
    axes[1].plot(lam, res.sparsity, "s--", label="all parameters")
    for ax in axes[:2]:
        ax.axvline(res.best_lambda, color="C2", ls="--", label=f"best λ={res.best_lambda:.3g}")
        ax.axvline(res.lambda_1se, color="C3", ls=":", label=f"1-SE λ={res.lambda_1se:.3g}")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("λ (warm-started path, large to small)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel(f"validation {res.score_name}")
    axes[1].set_ylabel("exact-zero fraction")
    _pixel_map(axes[2], model, f"refit at λ={res.lambda_:.3g}")
    fig.suptitle(f"fusedreg sweep: {PENALTY_LABELS[kind]} on scikit-learn digits, chosen by rule {res.rule!r}")
    fig.savefig(path, dpi=80)


# ------------------------------------------------------------------------------------------------------ sweep

@dataclass
class SweepResult:
    path: object            # fusedreg.select.LambdaPath
    test_accuracy: float
    inputs_pruned: int
    hidden_pruned: int
    png: str = ""
    seconds: float = 0.0


def run_sweep(*, threads=1, **kw):
    """Choose λ by cross-validation on the digits training split, refit, score on the test split, draw the path.
    quick=True is the test-suite mode: 3 folds, 4 λ values, 1 epoch per λ. threads: as for run_demo."""
    with cpu_threads(threads):
        return _run_sweep(threads=threads, **kw)


def _run_sweep(*, penalty="l1", folds=5, n_lambdas=10, lambda_min_ratio=1e-3, lambdas=None, rule="best",
               l1_ratio=0.5, epochs=5, device="cpu", out="fusedreg_sweep.png", seed=0, hidden=64, batch_size=64,
               lr=1e-2, backend="auto", progress=True, quick=False, print_fn=print, threads=1):
    t_start = time.perf_counter()
    if quick:
        folds, epochs = min(folds, 3), 1
        n_lambdas = min(n_lambdas, 4)
        if lambdas is not None:
            lambdas = lambdas[:4]
    data = load_digits(seed, device)
    n_in = data.n_features
    n_path = len(lambdas) if lambdas is not None else n_lambdas
    total = sum(sel.path_steps(len(data.X_train) - len(v), n_path, epochs=epochs, batch_size=batch_size)
                for v in sel.kfold(data.y_train, folds, seed))
    total += sel.path_steps(len(data.X_train), n_path, epochs=epochs, batch_size=batch_size)  # refit, at most
    if lambdas is None:  # the first λ_max calibration trial
        total += sel.path_steps(len(data.X_train), 1, epochs=epochs, batch_size=batch_size)
    print_fn(f"fusedreg sweep: {PENALTY_LABELS[penalty]} on MLP {n_in}-{hidden}-10, scikit-learn digits "
             f"({len(data.X_train)} train images for {folds}-fold CV, {len(data.X_test)} held-out test images), "
             f"fusedreg.Adam lr={lr:g}, {epochs} epochs per λ ({2 * epochs} for the first), device {device} "
             f"({torch.get_num_threads()} CPU thread(s))")
    bar = make_progress(total, "fusedreg sweep", progress)
    try:
        res = sel.select_lambda(mlp_factory(n_in, hidden), data.X_train, data.y_train, penalty=penalty,
                                lambdas=lambdas, n_lambdas=n_lambdas, lambda_min_ratio=lambda_min_ratio,
                                folds=folds, rule=rule, l1_ratio=l1_ratio, param_groups=groups_for(penalty),
                                lr=lr, optimizer_kwargs=dict(backend=backend), epochs=epochs,
                                batch_size=batch_size, seed=seed, refit=False, progress=bar)
        if bar is not None:
            bar.set_description("refit at the chosen λ")
            n_train = len(data.X_train)  # the total counted a refit down the whole grid
            bar.total -= (sel.path_steps(n_train, n_path, epochs=epochs, batch_size=batch_size)
                          - sel.path_steps(n_train, res.index + 1, epochs=epochs, batch_size=batch_size))
            bar.refresh()
        model = sel.walk_path(mlp_factory(n_in, hidden), data.X_train, data.y_train, res.lambdas[:res.index + 1],
                              penalty=penalty, l1_ratio=l1_ratio, param_groups=groups_for(penalty), lr=lr,
                              optimizer_kwargs=dict(backend=backend), epochs=epochs, batch_size=batch_size,
                              seed=seed, progress=bar)
        res.model = model
    finally:
        if bar is not None:
            bar.close()
    acc = sel.evaluate(model, data.X_test, data.y_test, "accuracy", None)
    inputs, hid = pruned(model)
    png = os.path.abspath(out)
    plot_sweep(png, res, model, penalty, data)
    result = SweepResult(res, acc, inputs, hid, png, time.perf_counter() - t_start)
    grid = "given" if lambdas is not None else f"λ_max={res.lambda_max:.3g} down to {lambda_min_ratio:g}·λ_max"
    print_fn(f"λ grid: {len(res.lambdas)} values, {grid}; rule {rule!r} "
             + ("(best mean validation accuracy)" if rule == "best" else
                "(largest λ within one standard error of the best mean)"))
    print_fn(res.table())
    print_fn(f"\nchosen λ = {res.lambda_:.4g} (best {res.best_lambda:.4g}, 1-SE {res.lambda_1se:.4g})")
    print_fn(f"refit on all {len(data.X_train)} training images down the path to λ = {res.lambda_:.4g}: "
             f"test accuracy {acc:.1%}, exact zeros {sel.zero_fraction(model.parameters()):.1%}, "
             f"inputs pruned {inputs}/{n_in}, hidden pruned {hid}/{hidden}")
    print_fn(f"\nwrote {png}")
    print_fn(f"done in {result.seconds:.1f} s")
    return result
