"""`python -m fusedreg demo`: one MLP trained with fusedreg.Adam under five penalties, scored, and its optimizer
step timed against torch.optim.

Data: scikit-learn's handwritten digits (fusedreg.data.load_digits: 1,797 images of 8x8 pixels, 10 classes;
bundled with scikit-learn, no download), standardized with the training split's statistics, split 75/25
stratified by the seed. Model: an MLP 64 -> hidden -> 10 with ReLU (fusedreg.models), trained on mini-batches.

The demo trains the same model from the same initial weights five times: no penalty, L2 (Adam's coupled weight
decay), L1 (proximal, exact zeros), elastic net, and group lasso on the first layer's columns (one group per
input pixel). Its table (`demo_table`) gives test accuracy, the exact-zero fraction, the input pixels and hidden
neurons pruned, and the optimizer step time for each fusedreg backend next to torch.optim measured in the same
run (the timing harness: `time_backends`, `time_steps`, and `torch_optim_equivalent`, torch.optim.Adam with the
same penalty written in torch ops). It also walks a λ path for L1 and group lasso, and draws everything into one
PNG (fusedreg.plots.plot_demo).

Needs the demo extras: pip install "fusedreg[demo]" (scikit-learn, matplotlib, tqdm).
"""
import copy
import math
import os
import statistics
import time
from dataclasses import dataclass, field

import torch

from . import backends, console, plots
from .data import load_digits
from .models import PENALTY_LABELS, groups_for, mlp, mlp_factory, penalty_keys, pruned
from .optim import Adam
from .path import calibrate_lambda_max, path_steps, train_epochs, walk_path, zero_fraction
from .select import evaluate, geometric_grid

# Backends timed per device, in the order the table shows them.
TIMED = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "torch")}


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


def torch_optim_equivalent(kind, lam, *, l1_ratio, model, lr):
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


def time_steps(candidates, X, y, *, steps, device, warmup=5, progress=None):
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
        if progress is not None:
            progress.update(1)
    return [statistics.median(t) * 1e6 for t in times]


def time_backends(model, kind, *, lam, l1_ratio, lr, X, y, steps, device, progress=None):
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
    candidates.append((m, *torch_optim_equivalent(kind, lam, l1_ratio=l1_ratio, model=m, lr=lr)))
    times = time_steps(candidates, X, y, steps=steps, device=device, progress=progress)
    step_us = {b: explain[b] for b in TIMED[torch.device(device).type] if b not in available}
    step_us.update(zip(names, times))
    return step_us, times[-1]


# ------------------------------------------------------------------------------------------------------- demo

@dataclass(kw_only=True)
class DemoRow:
    kind: str
    lam: float
    accuracy: float
    zeros: float            # exact-zero fraction of the weight matrices (what the penalties act on)
    inputs_pruned: int
    hidden_pruned: int
    step_us: dict           # backend -> median µs, or the reason it was not timed
    torch_us: float         # torch.optim.Adam (+ the penalty in torch ops)

    @property
    def label(self):
        return PENALTY_LABELS[self.kind]


@dataclass(kw_only=True)
class DemoResult:
    rows: list
    paths: dict             # kind -> dict(lambdas, accuracy, zeros, inputs_kept)
    models: dict = field(repr=False)
    png: str = ""
    table: str = ""
    seconds: float = 0.0


def _us(v):
    """A step time with the digits a 2x run-to-run spread leaves meaningful."""
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def demo_table(rows, data, *, hidden, device, timed, steps, width=110):
    """The printed table, one row per penalty, and the notes under it that say what each column measures."""
    import textwrap
    head = (f"{'penalty':30} {'lambda':>8} {'test acc':>8} {'zero weights':>12} {'inputs pruned':>13} "
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
                cells.append(f"{_us(v):>9}")
        lam = "-" if r.kind == "none" else f"{r.lam:.0e}"
        lines.append(f"{r.label:30} {lam:>8} {r.accuracy:8.1%} {r.zeros:12.1%} "
                     f"{f'{r.inputs_pruned}/{data.n_features}':>13} {f'{r.hidden_pruned}/{hidden}':>13}   "
                     + " ".join(cells) + f" {_us(r.torch_us):>14}")
    n_params = sum(p.numel() for p in mlp(data.n_features, hidden).parameters())
    notes = [
        "zero weights: exact-zero fraction of the two weight matrices (biases are never penalized and not "
        "counted; the figure's legend shows the same number).",
        f"inputs pruned: pixels whose first-layer column is exactly zero ({len(data.constant)} of the "
        f"{data.n_features} pixels are constant in the training split, so any L1-type penalty removes them). "
        "hidden pruned: neurons whose incoming row or outgoing column is exactly zero.",
        f"lambda: L2 = Adam's coupled weight decay; L1 = λ·Σ|w|; elastic net = α with l1 = α·l1_ratio and weight "
        f"decay = α·(1 - l1_ratio); group lasso = λ·Σ_j sqrt({hidden})·||W1[:, j]||.",
        "step times (µs): median of " + f"{steps} optimizer.step() calls on this {device} model with fixed "
        "gradients, measured in this run. Columns: " + ", ".join(
            f"{b} = fusedreg.Adam with backend='{b}'" + (" (the pure-PyTorch reference, the test oracle)"
                                                          if b == "torch" else "") for b in timed)
        + "; torch.optim = torch.optim.Adam.step() plus the same penalty written in torch ops. Compare columns "
        "within one run: on a shared machine the times move up to 2x between runs.",
        f"A model this small ({n_params:,} parameters) is overhead-bound: the times measure per-call cost, not "
        "memory bandwidth.",
    ]
    for b, why in reasons.items():
        notes.append(f"{b}: not timed, {why}")
    wrapped = [textwrap.fill(n, width, subsequent_indent="  ", break_on_hyphens=False) for n in notes]
    return "\n".join(lines + [""] + wrapped)


def run_demo(*, threads=1, **kw):
    """Train the five penalties, time the steps, walk the λ paths, draw the PNG; returns a DemoResult.
    quick=True is the test-suite mode: 3 epochs, a 4-point path, 20 timed steps. threads: torch's CPU threads
    for the run (0 leaves torch's setting alone)."""
    with console.cpu_threads(threads):
        return _run_demo(**kw)


def _run_demo(*, epochs=30, device="cpu", out="out/fusedreg_demo.png", seed=0, hidden=64, batch_size=64, lr=1e-2,
              l2=1e-2, l1=2e-3, elastic_net=4e-3, l1_ratio=0.5, group_lasso=7e-3, backend="auto",
              path_lambdas=8, path_epochs=None, timing_steps=200, progress=True, quick=False, print_fn=print):
    t_start = time.perf_counter()
    if quick:
        epochs, path_lambdas, timing_steps = min(epochs, 3), min(path_lambdas, 4), min(timing_steps, 20)
    path_epochs = path_epochs or max(1, epochs // 6)

    data = load_digits(seed, device)
    configs = [("none", 0.0), ("l2", l2), ("l1", l1), ("elastic_net", elastic_net), ("group_l1", group_lasso)]
    steps_per_epoch = math.ceil(len(data.X_train) / batch_size)
    # Every unit the bar counts is known here: restarts and calibration retries are not counted (see
    # fusedreg.path._Capped), so the total never grows and the percentage never goes back.
    path_total = 2 * (path_steps(len(data.X_train), path_lambdas, epochs=path_epochs, batch_size=batch_size)
                      + path_steps(len(data.X_train), 1, epochs=path_epochs, batch_size=batch_size))
    timing_total = len(configs) * (timing_steps + 5)  # time_steps' warm-up is 5
    print_fn(console.wrap(f"fusedreg demo: MLP {data.n_features}-{hidden}-10 on scikit-learn digits "
                          f"({len(data.X_train)} train / {len(data.X_test)} test images of 8x8 pixels), "
                          f"fusedreg.Adam lr={lr:g}, {console.plural(epochs, 'epoch')}, batch {batch_size}, "
                          f"device {device} ({console.plural(torch.get_num_threads(), 'CPU thread')}), backend "
                          f"{backend} -> {backends.resolve(backend, torch.device(device))}"), flush=True)
    bar = console.make_progress(len(configs) * epochs * steps_per_epoch + path_total + timing_total,
                                "fusedreg demo", progress)
    try:
        rows, models = _penalty_rows(data, configs=configs, hidden=hidden, epochs=epochs, batch_size=batch_size,
                                     lr=lr, l1_ratio=l1_ratio, backend=backend, seed=seed, device=device,
                                     timing_steps=timing_steps, bar=bar)
        paths = _lambda_paths(data, hidden=hidden, lr=lr, backend=backend, batch_size=batch_size, seed=seed,
                              path_lambdas=path_lambdas, path_epochs=path_epochs, bar=bar)
    finally:
        if bar is not None:
            bar.close()

    table = demo_table(rows, data, hidden=hidden, device=device, timed=TIMED[torch.device(device).type],
                       steps=timing_steps)
    png = os.path.abspath(out)
    os.makedirs(os.path.dirname(png), exist_ok=True)
    console.status("drawing the figure ...", progress)
    plots.plot_demo(png, rows=rows, models=models, paths=paths, data=data, hidden=hidden, epochs=epochs)
    result = DemoResult(rows=rows, paths=paths, models=models, png=png, table=table,
                        seconds=time.perf_counter() - t_start)
    print_fn(table)
    print_fn(f"\nwrote {png}")
    print_fn(f"done in {result.seconds:.1f} s")
    return result


def _penalty_rows(data, *, configs, hidden, epochs, batch_size, lr, l1_ratio, backend, seed, device, timing_steps,
                  bar):
    """The table's models: for each (penalty, λ) in configs the MLP trained alone from the same initial weights,
    scored on the test split, counted for zeros and pruning, and its optimizer step timed per backend.
    Returns (DemoRows, {penalty: model})."""
    rows, models = [], {}
    Xb, yb = data.X_train[:batch_size], data.y_train[:batch_size]
    for kind, lam in configs:
        if bar is not None:
            bar.set_description(f"training: {PENALTY_LABELS[kind]}")
        torch.manual_seed(seed)
        model = mlp(data.n_features, hidden).to(device)
        keys = penalty_keys(kind, lam, l1_ratio)
        opt = Adam(groups_for(kind)(model, **keys), lr=lr, backend=backend)
        train_epochs(model, opt, data.X_train, data.y_train, epochs=epochs, batch_size=batch_size,
                     loss_fn=torch.nn.functional.cross_entropy, generator=torch.Generator().manual_seed(seed),
                     progress=bar)
        models[kind] = model
        acc = evaluate(model, data.X_test, data.y_test, score="accuracy")
        inputs, hid = pruned(model)
        if bar is not None:
            bar.set_description(f"timing steps: {PENALTY_LABELS[kind]}")
        step_us, torch_us = time_backends(model, kind, lam=lam, l1_ratio=l1_ratio, lr=lr, X=Xb, y=yb,
                                          steps=timing_steps, device=device, progress=bar)
        weights = [p for p in model.parameters() if p.dim() >= 2]
        rows.append(DemoRow(kind=kind, lam=lam, accuracy=acc, zeros=zero_fraction(weights), inputs_pruned=inputs,
                            hidden_pruned=hid, step_us=step_us, torch_us=torch_us))
    return rows, models


def _lambda_paths(data, *, hidden, lr, backend, batch_size, seed, path_lambdas, path_epochs, bar):
    """The figure's λ paths for L1 and group lasso: one model per penalty walks a grid from its calibrated
    λ_max down to 1e-3·λ_max, from the smallest λ up (select's default for a network, see fusedreg.select), a
    separate run from the table's, which trains each penalty alone for `epochs`. Returns {penalty: record}:
    test accuracy, zeros and input pixels kept per λ (grid order), how the path was walked."""
    n_in = data.n_features
    paths = {}
    for kind in ("l1", "group_l1"):
        if bar is not None:
            bar.set_description(f"lambda path: {PENALTY_LABELS[kind]}")
        path_kw = dict(param_groups=groups_for(kind), lr=lr, optimizer_kwargs=dict(backend=backend),
                       batch_size=batch_size, seed=seed, progress=bar, group_dim=1)
        lmax, _ = calibrate_lambda_max(mlp_factory(n_in, hidden), data.X_train, data.y_train, kind,
                                       epochs=2 * path_epochs, **path_kw)
        lambdas = geometric_grid(lmax, path_lambdas, 1e-3)
        n = len(lambdas)
        rec = dict(lambdas=lambdas, accuracy=[None] * n, zeros=[None] * n, inputs_kept=[None] * n,
                   direction="up", epochs=path_epochs, epochs_first=2 * path_epochs)

        def on_lambda(i, lam, model, penalized, rec=rec):  # i: the grid index (the walk goes up the grid)
            rec["accuracy"][i] = evaluate(model, data.X_test, data.y_test, score="accuracy")
            rec["zeros"][i] = zero_fraction(penalized)
            rec["inputs_kept"][i] = n_in - pruned(model)[0]

        walk_path(mlp_factory(n_in, hidden), data.X_train, data.y_train, lambdas, penalty=kind,
                  epochs=path_epochs, on_lambda=on_lambda, direction="up", **path_kw)
        paths[kind] = rec
    return paths
