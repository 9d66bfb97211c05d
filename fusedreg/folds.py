"""The rows `fusedreg.select` learns from: the checks of X and y (`check_data` raises DataError, naming what is
wrong and where), the task a y implies (`infer_task`), and the split of the rows into cross-validation folds
(`kfold`, stratified by class; `splits` also takes a scikit-learn splitter or your own index pairs)."""
import torch

TASKS = ("classification", "regression")


class DataError(ValueError):
    """X or y cannot be used as given (NaN or inf, one class only, fewer rows than folds, ...); the message says
    which and where."""


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
