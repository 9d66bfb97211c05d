"""The jobs behind `python -m fusedreg demo` and `python -m fusedreg sweep`, on data that ships with scikit-learn.

Data: scikit-learn's handwritten digits (1,797 images of 8x8 pixels, 10 classes; bundled with the package, no
download), standardized with the training split's statistics, split 75/25 stratified by the seed. Model: an MLP
64 -> hidden -> 10 with ReLU, trained by fusedreg.Adam on mini-batches.

demo   trains the same model from the same initial weights five times: no penalty, L2 (Adam's coupled weight
       decay), L1 (proximal, exact zeros), elastic net, and group lasso on the first layer's columns (one group
       per input pixel). It prints test accuracy, the exact-zero fraction, the input pixels and hidden neurons
       pruned, and the optimizer step time for each fusedreg backend next to torch.optim measured in the same
       run; it also walks a λ path for L1 and group lasso and draws everything into one PNG.
sweep  chooses λ by k-fold cross-validation along a warm-started path (fusedreg.select.select_lambda; the MLP
       walks the grid from the smallest λ up, a linear model from λ_max down) on the training split, refits
       along the same path to the chosen λ, scores the refit model on the test split, and draws the path.

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
from .path import _penalized

PENALTY_LABELS = {"none": "none", "l2": "L2", "l1": "L1", "elastic_net": "elastic net",
                  "group_l1": "group lasso (layer-1 inputs)"}
# Backends timed per device, in the order the table shows them.
TIMED = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "torch")}


# ----------------------------------------------------------------------------------------------------- data, model

NEAR_CONSTANT = 0.99   # a feature whose most common value fills this share of the rows is near-constant
SCALE_FLOOR = 0.1      # its scale is floored at this fraction of its range


def standardize(X):
    """(mean, scale, near_constant) for the columns of X (a 2-D numpy array): x -> (x - mean) / scale.

    scale is the standard deviation, except for near-constant features: when one value fills >= 99% of the
    rows, scale = max(std, 0.1·(max - min)), the std of a two-valued feature whose rarer value is in 1% of
    the rows. Without the floor a pixel inked in 1 of 1,347 images gets the value 37 there, so a tiny weight
    fits that one image and the pixel looks important. A constant feature gets scale 1 (it is 0 after
    centering, and no penalty keeps a weight on it)."""
    import numpy as np
    mean, std = X.mean(0), X.std(0)
    scale = std.copy()
    near = []
    for j in range(X.shape[1]):
        col = X[:, j]
        lo, hi = col.min(), col.max()
        if hi == lo:
            scale[j] = 1.0
            continue
        top = np.unique(col, return_counts=True)[1].max()
        if top >= NEAR_CONSTANT * len(col):
            near.append(j)
            scale[j] = max(std[j], SCALE_FLOOR * (hi - lo))
    return mean, scale, near


@dataclass
class Dataset:
    """Standardized training (and test) rows as tensors, with what `--save-model` needs to predict."""
    X_train: torch.Tensor
    y_train: torch.Tensor
    X_test: "torch.Tensor | None"
    y_test: "torch.Tensor | None"
    features: list          # feature names, in column order
    target: str
    task: str
    mean: list              # per feature: x_std = (x - mean) / scale
    scale: list
    near_constant: list     # indices of features whose scale was floored (see `standardize`)
    constant: list          # indices of features constant over the training rows
    classes: list = field(default_factory=list)  # classification: label of output k
    y_mean: float = 0.0     # regression: y = output * y_scale + y_mean
    y_scale: float = 1.0
    source: str = "scikit-learn digits"
    image_side: int = 0     # 8 for the digits (pixel maps are drawn), else 0
    task_note: str = ""

    @property
    def n_features(self):
        return self.X_train.shape[1]

    @property
    def n_outputs(self):
        return len(self.classes) if self.task == "classification" else 1


Digits = Dataset


def load_digits(seed=0, device="cpu", test_size=0.25):
    """scikit-learn's digits as float32 tensors on `device`: a stratified split, standardized on the train part."""
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    X, y = sk_load(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=test_size, random_state=seed, stratify=y)
    mean, scale, near = standardize(Xtr)
    constant = [int(j) for j in (Xtr.std(0) == 0).nonzero()[0]]

    def t(a, dtype):
        return torch.tensor(a, dtype=dtype, device=device)

    return Dataset(t((Xtr - mean) / scale, torch.float32), t(ytr, torch.long), t((Xte - mean) / scale, torch.float32),
                   t(yte, torch.long), [f"pixel {j}" for j in range(X.shape[1])], "digit", "classification",
                   mean.tolist(), scale.tolist(), near, constant, list(range(10)), image_side=8)


DATA_LAYOUT = """\
FILE layouts:
  .csv  a header row of column names, then one row per sample; every feature column numeric (empty cells,
        NaN and inf are errors). --target names the target column; for classification it may hold text
        labels. Every other column is a feature.
  .npz  an array X (rows x features) and the target array named by --target (default y), one value per row.
  .npy  one 2-D numeric array; --target is the index of the target column (default: the last one); the other
        columns are the features, named x0, x1, ..."""

MAX_CLASSES = 20  # an integer target with at most this many distinct values is inferred to be class labels
# A numeric target with more distinct values than this is refused as classes even under --task classification:
# it is almost surely a measurement, and a model with one output per value learns nothing useful.
MAX_NUMERIC_CLASSES = 50


def _names(names, limit=12):
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


def read_csv(path):
    """(header, columns as lists of str) from a CSV file with a header row."""
    import csv
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        raise sel.DataError(f"{path} is empty: expected a header row of column names, then data rows")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if not body:
        raise sel.DataError(f"{path} has a header row but no data rows")
    for k, r in enumerate(body):
        if len(r) != len(header):
            raise sel.DataError(f"{path} line {k + 2} has {len(r)} fields but the header has {len(header)}")
    return header, [[r[j].strip() for r in body] for j in range(len(header))]


def _numeric_column(values, name, path):
    import numpy as np
    out = np.empty(len(values))
    for i, v in enumerate(values):
        x = _number(v) if v else None
        if x is None:
            what = "an empty cell" if not v else f"the non-numeric value {v!r}"
            raise sel.DataError(f"column {name!r} of {path} has {what} at line {i + 2}; features must be numbers "
                                "(encode or drop the column)")
        if not np.isfinite(x):
            raise sel.DataError(f"column {name!r} of {path} has {v} at line {i + 2}; drop or impute it")
        out[i] = x
    return out


def read_data(path, target):
    """(X as a float64 numpy array, y as a list or array, feature names, target name) from FILE (see
    DATA_LAYOUT)."""
    import numpy as np
    if not os.path.exists(path):
        raise sel.DataError(f"no such file: {path}")
    if os.path.isdir(path):
        raise sel.DataError(f"{path} is a directory, not a data file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".npz", ".npy"):
        raise sel.DataError(f"{path}: unknown file type {ext!r}; use .csv (with a header row), .npz or .npy")
    if ext == ".csv":
        header, cols = read_csv(path)
        if target is None:
            raise sel.DataError(f"--target is needed with a CSV: name the column to predict ({_names(header)})")
        if target not in header:
            raise sel.DataError(f"no column {target!r} in {path}; its columns are {_names(header)}")
        t = header.index(target)
        names = [h for j, h in enumerate(header) if j != t]
        if not names:
            raise sel.DataError(f"{path} has no feature columns besides the target {target!r}")
        X = np.stack([_numeric_column(cols[j], header[j], path) for j in range(len(header)) if j != t], 1)
        return X, cols[t], names, target
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises several types for a file that is not what its name says
        raise sel.DataError(f"cannot read {path} as {ext or 'a numpy file'}: {e}") from None
    if ext == ".npz":
        target = target or "y"
        if "X" not in data.files or target not in data.files:
            raise sel.DataError(f"{path} must hold arrays 'X' and {target!r}; it holds {_names(data.files)}")
        X, y = data["X"], data[target]
        if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
            raise sel.DataError(f"{path}: X must be 2-D (rows x features) and {target!r} 1-D with as many rows; "
                                f"got shapes {X.shape} and {y.shape}")
        names = [f"x{j}" for j in range(X.shape[1])]
    elif ext == ".npy":
        if data.ndim != 2 or data.shape[1] < 2:
            raise sel.DataError(f"{path} must be a 2-D array with the target and at least one feature column, "
                                f"got shape {data.shape}")
        try:
            col = data.shape[1] - 1 if target is None else int(target)
        except ValueError:
            raise sel.DataError(f"--target for a .npy file is a column index, got {target!r}") from None
        if not -data.shape[1] <= col < data.shape[1]:
            raise sel.DataError(f"--target {col} is outside the {data.shape[1]} columns of {path}")
        col %= data.shape[1]
        X, y = np.delete(data, col, axis=1), data[:, col]
        names, target = [f"x{j}" for j in range(data.shape[1]) if j != col], f"column {col}"
    if X.dtype.kind not in "biuf":
        raise sel.DataError(f"{path}: the features must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise sel.DataError(f"{path}: feature {names[j]!r} has NaN or inf at row {i}; drop or impute it")
    return X, list(y.tolist()), names, target


def target_task(y, target, task):
    """(task, y as numbers or class indices, classes, a line saying how the task was chosen)."""
    import numpy as np
    nums = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else _number(str(v)) if str(v) else None
            for v in y]
    numeric = all(v is not None for v in nums)
    if numeric and not all(np.isfinite(nums)):
        i = next(k for k, v in enumerate(nums) if not np.isfinite(v))
        raise sel.DataError(f"target {target!r} has {y[i]} at row {i}; drop or impute it")
    distinct = sorted(set(nums)) if numeric else sorted(set(map(str, y)))
    if task is None:
        if not numeric:
            task, why = "classification", f"target {target!r} holds text labels"
        elif all(float(v).is_integer() for v in distinct) and len(distinct) <= MAX_CLASSES:
            task, why = "classification", f"target {target!r} holds {len(distinct)} distinct whole numbers"
        else:
            task, why = "regression", f"target {target!r} is numeric with {len(distinct)} distinct values"
        note = f"task: {task} (inferred: {why}; pass --task to override)"
    else:
        note = f"task: {task} (--task)"
    if task == "regression":
        if not numeric:
            i = next(k for k, v in enumerate(nums) if v is None)
            raise sel.DataError(f"target {target!r} is not numeric (row {i}: {y[i]!r}); a regression needs "
                                "numbers (use --task classification for class labels)")
        return task, np.asarray(nums, dtype=np.float64), [], note
    if len(distinct) < 2:
        raise sel.DataError(f"target {target!r} has one class only ({distinct[0]!r}): there is nothing to classify")
    if numeric and not all(float(v).is_integer() for v in distinct):
        v = next(v for v in distinct if not float(v).is_integer())
        raise sel.DataError(f"target {target!r} holds non-integer values ({v:g}, {len(distinct)} distinct): not class "
                            "labels; use --task regression")
    if numeric and len(distinct) > MAX_NUMERIC_CLASSES:
        raise sel.DataError(f"target {target!r} holds {len(distinct)} distinct numbers: as classes that is a "
                            f"{len(distinct)}-class model (at most {MAX_NUMERIC_CLASSES} numeric classes are taken); "
                            "use --task regression")
    if numeric:
        classes = [int(v) if float(v).is_integer() else v for v in distinct]
        index = {v: k for k, v in enumerate(distinct)}
        labels = [index[v] for v in nums]
    else:
        classes = distinct
        index = {v: k for k, v in enumerate(distinct)}
        labels = [index[str(v)] for v in y]
    return task, np.asarray(labels, dtype=np.int64), classes, note


def load_data(path, target=None, task=None, *, model="linear", test_fraction=0.0, seed=0, device="cpu"):
    """A Dataset from FILE: features standardized on the training rows (`standardize`), the target as class
    indices (classification) or centered numbers (regression; also divided by its std for the MLP, which
    trains better on a unit-scale target). test_fraction > 0 holds out that share of the rows as a test set.
    Raises fusedreg.select.DataError with one line saying what is wrong."""
    import numpy as np
    X, y_raw, names, target = read_data(path, target)
    task, y, classes, note = target_task(y_raw, target, task)
    n = len(X)
    idx_test = np.array([], dtype=np.int64)
    if test_fraction:
        n_test = int(round(test_fraction * n))
        if not 1 <= n_test < n - 1:
            raise sel.DataError(f"--test-fraction {test_fraction} of {n} rows leaves no test or no training rows")
        order = np.random.default_rng(seed).permutation(n)
        idx_test = np.sort(order[:n_test])
    train = np.setdiff1d(np.arange(n), idx_test)
    mean, scale, near = standardize(X[train])
    constant = [int(j) for j in (X[train].std(0) == 0).nonzero()[0]]
    dtype = torch.float64 if model == "linear" else torch.float32
    y_mean = y_scale = None
    if task == "regression":
        y_mean = float(y[train].mean())
        y_scale = float(y[train].std()) if model == "mlp" and y[train].std() > 0 else 1.0
        yt = torch.tensor((y - y_mean) / y_scale, dtype=dtype, device=device)
    else:
        yt = torch.tensor(y, dtype=torch.long, device=device)
    Xt = torch.tensor((X - mean) / scale, dtype=dtype, device=device)
    test = torch.tensor(idx_test, dtype=torch.long, device=device)
    tr = torch.tensor(train, dtype=torch.long, device=device)
    return Dataset(Xt[tr], yt[tr], Xt[test] if len(idx_test) else None, yt[test] if len(idx_test) else None, names,
                   target, task, mean.tolist(), scale.tolist(), near, constant, classes,
                   y_mean if y_mean is not None else 0.0, y_scale if y_scale is not None else 1.0,
                   source=path, task_note=note)


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


def make_progress(total, desc, enabled, unit="step"):
    """A tqdm bar on stderr (shown on terminals; enabled=False hides it), or None when tqdm is missing. It
    appears after a second, so its first ETA is not taken from the slow first steps (imports, warm-up)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None if enabled else True,
                dynamic_ncols=True, delay=1.0, smoothing=0.1)


def status(text, enabled):
    """A line on stderr saying what runs next, where a progress bar would be shown."""
    if enabled and sys.stderr.isatty():
        print(text, file=sys.stderr, flush=True)


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


def time_steps(candidates, X, y, steps, device, warmup=5, progress=None):
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


def time_backends(model, kind, lam, l1_ratio, lr, X, y, steps, device, progress=None):
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
    times = time_steps(candidates, X, y, steps, device, progress=progress)
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
    zeros: float            # exact-zero fraction of the weight matrices (what the penalties act on)
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


def _us(v):
    """A step time with the digits a 2x run-to-run spread leaves meaningful."""
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def demo_table(rows, data, hidden, device, timed, steps, width=110):
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
    with cpu_threads(threads):
        return _run_demo(threads=threads, **kw)


def _run_demo(*, epochs=30, device="cpu", out="out/fusedreg_demo.png", seed=0, hidden=64, batch_size=64, lr=1e-2,
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
    # Every unit the bar counts is known here: restarts and calibration retries are not counted (see
    # select._Capped), so the total never grows and the percentage never goes back.
    path_total = 2 * (sel.path_steps(len(data.X_train), path_lambdas, epochs=path_epochs, batch_size=batch_size)
                      + sel.path_steps(len(data.X_train), 1, epochs=path_epochs, batch_size=batch_size))
    timing_total = len(configs) * (timing_steps + 5)  # time_steps' warm-up is 5
    print_fn(wrap(f"fusedreg demo: MLP {n_in}-{hidden}-10 on scikit-learn digits ({len(data.X_train)} train / "
                  f"{len(data.X_test)} test images of 8x8 pixels), fusedreg.Adam lr={lr:g}, "
                  f"{plural(epochs, 'epoch')}, batch {batch_size}, device {device} "
                  f"({plural(torch.get_num_threads(), 'CPU thread')}), backend {backend} -> "
                  f"{backends.resolve(backend, torch.device(device))}"), flush=True)
    bar = make_progress(len(configs) * epochs * steps_per_epoch + path_total + timing_total, "fusedreg demo",
                        progress)

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
            acc = sel.evaluate(model, data.X_test, data.y_test, score="accuracy")
            inputs, hid = pruned(model)
            if bar is not None:
                bar.set_description(f"timing steps: {PENALTY_LABELS[kind]}")
            step_us, torch_us = time_backends(model, kind, lam, l1_ratio, lr, Xb, yb, timing_steps, device,
                                              progress=bar)
            weights = [p for p in model.parameters() if p.dim() >= 2]
            rows.append(DemoRow(kind, lam, acc, sel.zero_fraction(weights), inputs, hid, step_us, torch_us))

        paths = {}
        for kind in ("l1", "group_l1"):
            if bar is not None:
                bar.set_description(f"lambda path: {PENALTY_LABELS[kind]}")
            path_kw = dict(param_groups=groups_for(kind), lr=lr, optimizer_kwargs=dict(backend=backend),
                           batch_size=batch_size, seed=seed, progress=bar, group_dim=1)
            lmax, _ = sel.calibrate_lambda_max(mlp_factory(n_in, hidden), data.X_train, data.y_train, kind,
                                               epochs=2 * path_epochs, **path_kw)
            lambdas = sel.geometric_grid(lmax, path_lambdas, 1e-3)
            # One model walks the grid from the smallest λ up (select's default for a network, see
            # fusedreg.select): a separate run from the table's, which trains each penalty alone for `epochs`.
            n = len(lambdas)
            rec = dict(lambdas=lambdas, accuracy=[None] * n, zeros=[None] * n, inputs_kept=[None] * n,
                       direction="up", epochs=path_epochs, epochs_first=2 * path_epochs)

            def on_lambda(i, lam, model, penalized, rec=rec):  # i: the grid index (the walk goes up the grid)
                rec["accuracy"][i] = sel.evaluate(model, data.X_test, data.y_test, score="accuracy")
                rec["zeros"][i] = sel.zero_fraction(penalized)
                rec["inputs_kept"][i] = n_in - pruned(model)[0]

            sel.walk_path(mlp_factory(n_in, hidden), data.X_train, data.y_train, lambdas, penalty=kind,
                          epochs=path_epochs, on_lambda=on_lambda, direction="up", **path_kw)
            paths[kind] = rec
    finally:
        if bar is not None:
            bar.close()

    table = demo_table(rows, data, hidden, device, timed, timing_steps)
    png = os.path.abspath(out)
    os.makedirs(os.path.dirname(png), exist_ok=True)
    status("drawing the figure ...", progress)
    plot_demo(png, rows, models, paths, data, hidden, epochs=epochs)
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


def _pixel_map(fig, ax, model, title, side=8):
    """The first layer's column norms as the side x side image: which input pixels the model still reads.
    Pruned pixels (column exactly zero) are drawn white with a black-edged red cross."""
    import numpy as np
    norms = torch.linalg.vector_norm(first_weight(model).detach().float().cpu(), dim=0)
    img = np.ma.masked_equal(norms.reshape(side, side).numpy(), 0.0)
    import matplotlib
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(img, cmap=cmap, interpolation="nearest", vmin=0)
    dead = (norms == 0).nonzero().flatten().tolist()
    if dead:
        ax.scatter([k % side for k in dead], [k // side for k in dead], marker="X", s=90, c="red",
                   edgecolors="black", linewidths=0.8, label="pruned")
    fig.colorbar(im, ax=ax, shrink=0.8, label="||W1[:, pixel]||")
    ax.set_title(f"{title}\n{side * side - len(dead)}/{norms.numel()} pixels used (x: pruned)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _feature_bars(ax, model, names, title, top=25):
    """|first-layer column| per feature, the largest `top`; pruned features are counted in the title."""
    norms = torch.linalg.vector_norm(first_weight(model).detach().double().cpu(), dim=0)
    order = norms.argsort(descending=True)[:top].tolist()
    ax.barh(range(len(order)), [float(norms[k]) for k in order], color="C0")
    ax.set_yticks(range(len(order)), [names[k] for k in order], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("||weight column|| (standardized feature)", fontsize=8)
    kept = int((norms != 0).sum())
    ax.set_title(f"{title}\n{kept}/{len(names)} features used", fontsize=9)


def _mark_chosen(ax, lam, label):
    ax.axvline(lam, color="black", ls="-", lw=1.2, alpha=0.6, label=label)


def plot_sweep(path, res, model, kind, data, scale=1.0):
    """CV score and sparsity vs λ, and what the refit model reads. The score axis spans the models with a
    nonzero penalized weight: the all-zero end of the path (accuracy ~ 1/classes) would flatten the region
    where the choice is made; points off the axis are counted in its title. The path panels show the CV folds'
    models; the refit (all training rows, along the same path to the chosen λ) is the star on the sparsity
    panel and the pixel map, the numbers the sweep prints."""
    fig = _figure(15, 4.5)
    axes = fig.subplots(1, 3, width_ratios=[2, 2, 1.2])
    lam = res.lambdas
    mean = [m * scale for m in res.mean]
    std = [s * scale for s in res.std]
    axes[0].errorbar(lam, mean, yerr=std, fmt="o-", capsize=3, label=f"{res.folds}-fold CV mean ± std")
    live = [i for i in range(len(lam)) if res.penalized_sparsity[i] < 1.0] or list(range(len(lam)))
    lo = min(mean[i] - std[i] for i in live)
    hi = max(mean[i] + std[i] for i in live)
    pad = 0.08 * (hi - lo) or 0.01 * abs(hi) or 0.01
    axes[0].set_ylim(lo - pad, hi + pad)
    off = sum(1 for m in mean if not lo - pad <= m <= hi + pad)
    metric = res.score_name
    axes[0].set_title(f"validation {metric}" + (f" ({off} all-zero point{'s' * (off > 1)} off the axis)" if off
                                                 else ""), fontsize=9)
    axes[1].plot(lam, res.penalized_sparsity, "o-", label=f"penalized weights ({res.folds}-fold mean)")
    axes[1].plot(lam, res.sparsity, "s--", label=f"all parameters ({res.folds}-fold mean)")
    model_kind = "linear" if sel.linear_layer(model) is not None else "mlp"
    keys = sel.penalty_keys(kind, 1.0, group_dim=1)
    refit_pen = sel.zero_fraction(_penalized(sweep_groups(kind, model_kind)(model, **keys), keys))
    axes[1].plot([res.lambda_], [refit_pen], "*", ms=14, color="C0", markeredgecolor="black",
                 label=f"refit on all rows: {refit_pen:.1%} penalized zeros")
    direction = getattr(res, "direction", "down")
    how = res.describe_path() if hasattr(res, "describe_path") else "warm-started from the largest λ down"
    for ax in axes[:2]:
        ax.axvline(res.best_lambda, color="C2", ls="--", label=f"best λ={res.best_lambda:.3g}")
        ax.axvline(res.lambda_1se, color="C3", ls=":", label=f"1-SE λ={res.lambda_1se:.3g}")
        _mark_chosen(ax, res.lambda_, f"chosen λ={res.lambda_:.3g} (rule {res.rule})")
        _path_axis(ax, direction)
        ax.set_xlabel(f"λ (path walked left to right: {_walk_words(direction)} λ)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.supxlabel(f"The curves are the CV folds' models, one per fold, {how}; the refit (★, pixel map) is one "
                  "more run on all training rows along the same path to the chosen λ.", fontsize=9)
    axes[0].set_ylabel(f"validation {metric}")
    axes[1].set_ylabel("exact-zero fraction")
    axes[1].set_ylim(-0.03, 1.03)
    if data.image_side:
        _pixel_map(fig, axes[2], model, f"refit at λ={res.lambda_:.3g}", data.image_side)
    else:
        _feature_bars(axes[2], model, data.features, f"refit at λ={res.lambda_:.3g}")
    fig.suptitle(f"fusedreg sweep: {PENALTY_LABELS[kind]} on {data.source}, chosen by rule {res.rule!r}")
    fig.savefig(path, dpi=80)
    return fig


def _path_axis(ax, direction):
    """A log λ axis read the way the path walked it: left to right."""
    ax.set_xscale("log")
    if direction == "down":
        ax.invert_xaxis()


def _walk_words(direction):
    return "small to large" if direction == "up" else "large to small"


def plot_demo(path, rows, models, paths, data, hidden, epochs=None):
    """The demo's PNG: per penalty the weight histogram and the pixel map of the table's model; below, the L1
    and group-lasso λ paths (test accuracy, zeros, pixels used) with each table model drawn as a star at its λ.
    The path and the table's models are different runs (one warm-started model along the grid against one
    model per penalty trained alone from the initial weights for `epochs`), and the figure says so."""
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
            ax.bar([0], [nz], width=(bins[1] - bins[0]) * 1.5, color="C3",
                   label=f"zero weights: {nz / w.numel():.1%}")  # the table's "zero weights", same count
            ax.legend(fontsize=8, loc="upper right")
        ax.set_yscale("log")
        lam = "" if r.kind == "none" else f", λ={r.lam:g}"
        ax.set_title(f"{r.label}{lam}\ntest acc {r.accuracy:.1%}", fontsize=9)
        ax.set_xlabel("weight value (both layers)", fontsize=8)
        if j == 0:
            ax.set_ylabel("count (log)")
        ax = fig.add_subplot(grid[1, j])
        _pixel_map(fig, ax, models[r.kind], r.label)
    names = {"l1": "L1", "group_l1": "group lasso"}
    ax_acc = fig.add_subplot(grid[2, :2])
    ax_zero = fig.add_subplot(grid[2, 2:4])
    ax_in = fig.add_subplot(grid[2, 4:])
    table = {r.kind: r for r in rows}
    direction = next((rec.get("direction", "down") for rec in paths.values()), "down")
    for k, (kind, rec) in enumerate(paths.items()):
        r = table.get(kind)
        if r is not None:  # the table's model at its λ: the same numbers as its row and its pixel map
            keys = penalty_keys(kind, r.lam)
            penalized = _penalized(groups_for(kind)(models[kind], **keys), keys)
            star = dict(accuracy=r.accuracy, zeros=sel.zero_fraction(penalized),
                        inputs_kept=data.n_features - r.inputs_pruned)
        for ax, key in ((ax_acc, "accuracy"), (ax_zero, "zeros"), (ax_in, "inputs_kept")):
            ax.plot(rec["lambdas"], rec[key], "o-", color=f"C{k}", label=f"{names[kind]} path")
            if r is not None:
                ax.axvline(r.lam, color=f"C{k}", ls="--", lw=1, label=f"{names[kind]}: table's λ={r.lam:g}")
                ax.plot([r.lam], [star[key]], "*", ms=15, color=f"C{k}", markeredgecolor="black",
                        label=f"{names[kind]}: table's model")
    for ax, ylabel in ((ax_acc, "test accuracy"), (ax_zero, "exact-zero fraction (penalized weights)"),
                       (ax_in, "input pixels used")):
        _path_axis(ax, direction)
        ax.set_xlabel(f"λ (path walked left to right: {_walk_words(direction)} λ)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    rec = next(iter(paths.values()), {})
    how = ("warm-started from the smallest λ up" if direction == "up" else "warm-started from the largest λ down")
    budget = (f", {plural(rec['epochs'], 'epoch')} per λ ({rec['epochs_first']} at the first)"
              if "epochs" in rec else "")
    alone = f"for {plural(epochs, 'epoch')} " if epochs else ""
    ax_zero.set_title("λ paths: one model per penalty " + how + budget, fontsize=9)
    fig.supxlabel(f"Bottom row: the λ path is a different run from the table's models (★, each trained alone from "
                  f"the initial weights {alone}at its λ), so at the table's λ the two differ.", fontsize=9)
    fig.suptitle(f"fusedreg demo: MLP {data.n_features}-{hidden}-10 on scikit-learn digits")
    fig.savefig(path, dpi=80)
    return fig



# ------------------------------------------------------------------------------------------------------ sweep

def first_weight(model):
    return model.weight if isinstance(model, torch.nn.Linear) else model[0].weight


def wrap(text, width=110):
    import textwrap
    return textwrap.fill(text, width, subsequent_indent="  ", break_on_hyphens=False)


def plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclass
class SweepResult:
    path: object            # fusedreg.select.LambdaPath
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
    per λ for the MLP. threads: as for run_demo."""
    with cpu_threads(threads):
        return _run_sweep(threads=threads, **kw)


def build_model(kind, n_in, hidden, n_out, dtype=torch.float32):
    """The sweep's models: "linear" (nn.Linear) or "mlp" (n_in -> hidden -> n_out, ReLU)."""
    if kind == "linear":
        return torch.nn.Linear(n_in, n_out).to(dtype)
    return mlp(n_in, hidden, n_out).to(dtype)


def _model_fn(kind, n_in, hidden, n_out, dtype):
    return lambda: build_model(kind, n_in, hidden, n_out, dtype)


def sweep_groups(kind, model_kind):
    """Group lasso: one group per input feature (first-layer columns, group_dim=1); other penalties: every
    weight matrix. Biases are never penalized."""
    if kind == "group_l1" and model_kind == "mlp":
        return first_layer_groups
    return weight_groups


def _score_all(model, X, y, data, score):
    if X is None:
        return None
    v = sel.evaluate(model, X, y, score=score)
    return v * data.y_scale ** 2 if score == "mse" else v


def _run_sweep(*, data=None, target=None, task=None, model=None, test_fraction=0.0, json_path=None,
               save_model=None, penalty="l1", folds=5, n_lambdas=10, lambda_min_ratio=1e-3, lambdas=None,
               rule="best", l1_ratio=0.5, epochs=None, device="cpu", out="out/fusedreg_sweep.png", seed=0,
               hidden=64, batch_size=None, lr=None, backend="auto", progress=True, quick=False, print_fn=print,
               threads=1):
    import warnings
    t_start = time.perf_counter()
    model = model or ("mlp" if data is None else "linear")
    if quick:  # explicit --lambdas are kept whole: quick never drops a value the user listed
        folds, n_lambdas = min(folds, 3), min(n_lambdas, 4)
        if model == "mlp":  # a linear model still trains every λ to convergence
            epochs = 1
    if model == "mlp":
        epochs, batch_size, lr = epochs or 5, batch_size or 64, lr or 1e-2
    if data is None:
        ds = load_digits(seed, device)
        if task == "regression":
            raise sel.DataError("the digits are a classification task; pass --data FILE for a regression")
        if model == "linear":
            ds.X_train, ds.X_test = ds.X_train.double(), ds.X_test.double()
    else:
        ds = load_data(data, target, task, model=model, test_fraction=test_fraction, seed=seed, device=device)
    if len(ds.X_train) < folds:
        raise sel.DataError(f"{len(ds.X_train)} training rows cannot make {folds} folds; use --folds "
                            f"{max(2, len(ds.X_train))} or fewer")
    n_in, n_out = ds.n_features, ds.n_outputs
    dtype = ds.X_train.dtype
    make = _model_fn(model, n_in, hidden, n_out, dtype)
    groups = sweep_groups(penalty, model)
    train_kw = dict(lr=lr, batch_size=batch_size, epochs=epochs, optimizer_kwargs=dict(backend=backend),
                    param_groups=groups, group_dim=1, l1_ratio=l1_ratio, penalty=penalty, seed=seed, task=ds.task)
    score = sel.default_score(ds.task)
    n_path = len(lambdas) if lambdas is not None else n_lambdas
    probe = make()
    units = dict(epochs=epochs, batch_size=batch_size, lr=lr)
    cv_splits = sel.splits(ds.y_train, folds, seed)
    total = sum(sel.path_units(probe, len(tr), n_path, **units) for tr, _ in cv_splits)
    total += sel.path_units(probe, len(ds.X_train), n_path, **units)  # the refit, at most the whole grid
    calibrate = lambdas is None and model != "linear"
    if calibrate:  # the first λ_max calibration trial; retries are not counted
        total += sel.path_units(probe, len(ds.X_train), 1, epochs=2 * epochs, epochs_first=2 * epochs,
                                batch_size=batch_size, lr=lr)
    shape = f"linear {n_in} -> {n_out}" if model == "linear" else f"MLP {n_in}-{hidden}-{n_out}"
    if model == "linear":
        how = ("full-batch proximal gradient (fusedreg.SGD, lr = 1/L, FISTA), each λ to convergence, warm-started "
               "from λ_max down")
    else:
        how = (f"fusedreg.Adam lr={lr:g}, batch {batch_size}, {plural(epochs, 'epoch')} per λ "
               f"({2 * epochs} for the first), warm-started from the smallest λ up")
    loss = "½·MSE (scikit-learn's Lasso objective)" if ds.task == "regression" else "mean cross-entropy"
    test_note = f", {len(ds.X_test)} held-out test rows" if ds.X_test is not None else ""
    print_fn(wrap(f"fusedreg sweep: {PENALTY_LABELS[penalty]} on {shape}, {ds.source} ({len(ds.X_train)} rows "
                  f"for {folds}-fold CV{test_note}), loss {loss}; {how}; device {device} "
                  f"({plural(torch.get_num_threads(), 'CPU thread')})"))
    if ds.task_note:
        print_fn(ds.task_note)
    if ds.near_constant:
        print_fn(f"standardized {plural(n_in, 'feature')}; {plural(len(ds.near_constant), 'near-constant feature')} "
                 f"(one value in >= 99% of rows) had the scale floored at 0.1·range")
    bar = make_progress(total, "fusedreg sweep", progress)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", sel.GridEdgeWarning)
        try:
            res = sel.select_lambda(make, ds.X_train, ds.y_train, lambdas=lambdas, n_lambdas=n_lambdas,
                                    lambda_min_ratio=lambda_min_ratio, folds=folds, rule=rule, refit=False,
                                    progress=bar, calibrate=calibrate, **train_kw)
            if bar is not None:
                bar.set_description("refit at the chosen λ")
                n_train = len(ds.X_train)  # the total counted a refit down the whole grid
                bar.total -= (sel.path_units(probe, n_train, n_path, **units)
                              - sel.path_units(probe, n_train, len(res.refit_lambdas), **units))
                bar.refresh()
            # The refit walks the part of the grid the folds walked before the chosen λ: from λ_max down for a
            # linear model, from the smallest λ up for the MLP.
            fit = sel.walk_path(make, ds.X_train, ds.y_train, res.refit_lambdas, progress=bar,
                                direction=res.direction, warm_start=res.warm_start, **train_kw)
            res.model = fit
        finally:
            if bar is not None:
                bar.close()
    factor = ds.y_scale ** 2 if score == "mse" else 1.0
    scores = dict(train=_score_all(fit, ds.X_train, ds.y_train, ds, score),
                  test=_score_all(fit, ds.X_test, ds.y_test, ds, score), cv=res.mean[res.index] * factor)
    w1 = first_weight(fit)
    inputs = int((w1 == 0).all(0).sum())
    hid = pruned(fit)[1] if model == "mlp" else 0
    penalized = [p for g in groups(fit, **sel.penalty_keys(penalty, 1.0, l1_ratio=l1_ratio, group_dim=1))
                 if any(g.get(k) for k in ("l1", "group_l1", "weight_decay")) for p in g["params"]]
    result = SweepResult(res, ds, scores, inputs, hid, os.path.abspath(out), seconds=0.0)
    os.makedirs(os.path.dirname(result.png), exist_ok=True)
    status("drawing the figure ...", progress)
    plot_sweep(result.png, res, fit, penalty, ds, factor)
    grid = ("given" if lambdas is not None else
            f"λ_max={res.lambda_max:.4g} down to {lambda_min_ratio:g}·λ_max")
    print_fn(f"λ grid: {len(res.lambdas)} values, {grid}; rule {rule!r} "
             + (f"(best mean validation {res.score_name})" if rule == "best" else
                "(largest λ within one standard error of the best mean)"))
    if lambdas is None and model == "linear" and ds.task == "regression":
        print_fn("  λ_max = max|Xᵀ(y − ȳ)|/n: scikit-learn's alpha_max; λ means Lasso's alpha")
    table = res.table() if factor == 1.0 else _scaled_table(res, factor)
    print_fn(table)
    for w in caught:
        print_fn(wrap(f"warning: {w.message}"))
    print_fn(f"\nchosen λ = {res.lambda_:.4g} (best {res.best_lambda:.4g}, 1-SE {res.lambda_1se:.4g})")
    metric = res.score_name
    shown = (lambda v: f"{v:.1%}") if metric == "accuracy" else (lambda v: f"{v:.4g}")
    parts = [f"CV {metric} {shown(scores['cv'])}", f"train {metric} {shown(scores['train'])}"]
    if scores["test"] is not None:
        parts.append(f"test {metric} {shown(scores['test'])}")
    pruned_text = f"features pruned {inputs}/{n_in}" + (f", hidden pruned {hid}/{hidden}" if model == "mlp" else "")
    print_fn(f"refit on all {len(ds.X_train)} training rows along the path ({res.describe_path()}) to "
             f"λ = {res.lambda_:.4g}:\n"
             f"  {', '.join(parts)}\n"
             f"  exact zeros {sel.zero_fraction(fit.parameters()):.1%} of all parameters "
             f"({sel.zero_fraction(penalized):.1%} of penalized weights), {pruned_text}")
    result.json = sweep_json(res, ds, scores, fit, penalized, model, hidden, penalty, l1_ratio, factor,
                             [str(w.message) for w in caught])
    if json_path:
        import json
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(result.json, f, indent=1)
        print_fn(f"wrote {os.path.abspath(json_path)}")
    if save_model:
        save_sweep_model(save_model, fit, ds, model, hidden, res.lambda_, penalty)
        print_fn(f"wrote {os.path.abspath(save_model)} (state_dict + standardization; README: 'Predict with a "
                 "saved model')")
    print_fn(f"wrote {result.png}")
    result.seconds = time.perf_counter() - t_start
    print_fn(f"done in {result.seconds:.1f} s")
    return result


def _scaled_table(res, factor):
    import dataclasses
    return dataclasses.replace(res, mean=[m * factor for m in res.mean], std=[s * factor for s in res.std]).table()


def sweep_json(res, ds, scores, fit, penalized, model, hidden, penalty, l1_ratio, factor, warnings_):
    w1 = first_weight(fit)
    used = (w1 != 0).any(0).tolist()
    return {
        "data": ds.source, "target": ds.target, "task": ds.task, "model": model,
        "hidden": hidden if model == "mlp" else None, "penalty": penalty,
        "l1_ratio": l1_ratio if penalty == "elastic_net" else None,
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
            "zero_fraction": sel.zero_fraction(fit.parameters()),
            "penalized_zero_fraction": sel.zero_fraction(penalized),
            "features_used": [n for n, u in zip(ds.features, used) if u],
            "features_pruned": [n for n, u in zip(ds.features, used) if not u],
        },
        "standardization": {"features": ds.features, "mean": ds.mean, "scale": ds.scale,
                            "near_constant": [ds.features[j] for j in ds.near_constant],
                            "y_mean": ds.y_mean, "y_scale": ds.y_scale},
        "classes": ds.classes,
    }


def save_sweep_model(path, fit, ds, model, hidden, lam, penalty):
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
