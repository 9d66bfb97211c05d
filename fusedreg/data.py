"""The data the sweep and the demo train on, as standardized tensors (`Dataset`): scikit-learn's handwritten
digits (`load_digits`: bundled with scikit-learn, no download; a stratified 75/25 split), or your own table
(`load_data`: a .csv with a header row, a .npz or a .npy; DATA_LAYOUT says how each is laid out).

- `read_data` / `read_csv`: the file's features, target and names; anything unusable (a missing column, a
  non-numeric cell, NaN or inf) raises fusedreg.DataError with one line saying what and where.
- `target_task`: classification or regression from the target (text labels or at most MAX_CLASSES distinct
  whole numbers: classification), or as --task says; the target as class indices or numbers.
- `standardize`: each feature's mean and scale from the training rows, the scale of a near-constant feature
  floored so a value seen in a handful of rows cannot become huge.
"""
import os
from dataclasses import dataclass, field

import torch

from .folds import DataError

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


@dataclass(kw_only=True)
class Dataset:
    """Standardized training (and test) rows as tensors, with what `--save-model` needs to predict. Built by
    keyword: Dataset(X_train=..., y_train=..., ...)."""
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

    return Dataset(X_train=t((Xtr - mean) / scale, torch.float32), y_train=t(ytr, torch.long),
                   X_test=t((Xte - mean) / scale, torch.float32), y_test=t(yte, torch.long),
                   features=[f"pixel {j}" for j in range(X.shape[1])], target="digit", task="classification",
                   mean=mean.tolist(), scale=scale.tolist(), near_constant=near, constant=constant,
                   classes=list(range(10)), image_side=8)


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
        raise DataError(f"{path} is empty: expected a header row of column names, then data rows")
    header = [h.strip() for h in rows[0]]
    body = rows[1:]
    if not body:
        raise DataError(f"{path} has a header row but no data rows")
    for k, r in enumerate(body):
        if len(r) != len(header):
            raise DataError(f"{path} line {k + 2} has {len(r)} fields but the header has {len(header)}")
    return header, [[r[j].strip() for r in body] for j in range(len(header))]


def _numeric_column(values, name, path):
    import numpy as np
    out = np.empty(len(values))
    for i, v in enumerate(values):
        x = _number(v) if v else None
        if x is None:
            what = "an empty cell" if not v else f"the non-numeric value {v!r}"
            raise DataError(f"column {name!r} of {path} has {what} at line {i + 2}; features must be numbers "
                                "(encode or drop the column)")
        if not np.isfinite(x):
            raise DataError(f"column {name!r} of {path} has {v} at line {i + 2}; drop or impute it")
        out[i] = x
    return out


def read_data(path, target):
    """(X as a float64 numpy array, y as a list or array, feature names, target name) from FILE (see
    DATA_LAYOUT)."""
    import numpy as np
    if not os.path.exists(path):
        raise DataError(f"no such file: {path}")
    if os.path.isdir(path):
        raise DataError(f"{path} is a directory, not a data file")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".npz", ".npy"):
        raise DataError(f"{path}: unknown file type {ext!r}; use .csv (with a header row), .npz or .npy")
    if ext == ".csv":
        header, cols = read_csv(path)
        if target is None:
            raise DataError(f"--target is needed with a CSV: name the column to predict ({_names(header)})")
        if target not in header:
            raise DataError(f"no column {target!r} in {path}; its columns are {_names(header)}")
        t = header.index(target)
        names = [h for j, h in enumerate(header) if j != t]
        if not names:
            raise DataError(f"{path} has no feature columns besides the target {target!r}")
        X = np.stack([_numeric_column(cols[j], header[j], path) for j in range(len(header)) if j != t], 1)
        return X, cols[t], names, target
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises several types for a file that is not what its name says
        raise DataError(f"cannot read {path} as {ext or 'a numpy file'}: {e}") from None
    if ext == ".npz":
        target = target or "y"
        if "X" not in data.files or target not in data.files:
            raise DataError(f"{path} must hold arrays 'X' and {target!r}; it holds {_names(data.files)}")
        X, y = data["X"], data[target]
        if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
            raise DataError(f"{path}: X must be 2-D (rows x features) and {target!r} 1-D with as many rows; "
                                f"got shapes {X.shape} and {y.shape}")
        names = [f"x{j}" for j in range(X.shape[1])]
    elif ext == ".npy":
        if data.ndim != 2 or data.shape[1] < 2:
            raise DataError(f"{path} must be a 2-D array with the target and at least one feature column, "
                                f"got shape {data.shape}")
        try:
            col = data.shape[1] - 1 if target is None else int(target)
        except ValueError:
            raise DataError(f"--target for a .npy file is a column index, got {target!r}") from None
        if not -data.shape[1] <= col < data.shape[1]:
            raise DataError(f"--target {col} is outside the {data.shape[1]} columns of {path}")
        col %= data.shape[1]
        X, y = np.delete(data, col, axis=1), data[:, col]
        names, target = [f"x{j}" for j in range(data.shape[1]) if j != col], f"column {col}"
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: the features must be numeric, got dtype {X.dtype}")
    X = X.astype(np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(f"{path}: feature {names[j]!r} has NaN or inf at row {i}; drop or impute it")
    return X, list(y.tolist()), names, target


def target_task(y, target, task):
    """(task, y as numbers or class indices, classes, a line saying how the task was chosen)."""
    import numpy as np
    nums = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else _number(str(v)) if str(v) else None
            for v in y]
    numeric = all(v is not None for v in nums)
    if numeric and not all(np.isfinite(nums)):
        i = next(k for k, v in enumerate(nums) if not np.isfinite(v))
        raise DataError(f"target {target!r} has {y[i]} at row {i}; drop or impute it")
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
            raise DataError(f"target {target!r} is not numeric (row {i}: {y[i]!r}); a regression needs "
                                "numbers (use --task classification for class labels)")
        return task, np.asarray(nums, dtype=np.float64), [], note
    if len(distinct) < 2:
        raise DataError(f"target {target!r} has one class only ({distinct[0]!r}): there is nothing to classify")
    if numeric and not all(float(v).is_integer() for v in distinct):
        v = next(v for v in distinct if not float(v).is_integer())
        raise DataError(f"target {target!r} holds non-integer values ({v:g}, {len(distinct)} distinct): not class "
                            "labels; use --task regression")
    if numeric and len(distinct) > MAX_NUMERIC_CLASSES:
        raise DataError(f"target {target!r} holds {len(distinct)} distinct numbers: as classes that is a "
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
            raise DataError(f"--test-fraction {test_fraction} of {n} rows leaves no test or no training rows")
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
    held_out = len(idx_test) > 0
    return Dataset(X_train=Xt[tr], y_train=yt[tr], X_test=Xt[test] if held_out else None,
                   y_test=yt[test] if held_out else None, features=names, target=target, task=task,
                   mean=mean.tolist(), scale=scale.tolist(), near_constant=near, constant=constant, classes=classes,
                   y_mean=y_mean if y_mean is not None else 0.0, y_scale=y_scale if y_scale is not None else 1.0,
                   source=path, task_note=note)
