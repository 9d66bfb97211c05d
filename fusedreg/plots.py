"""The figures of `python -m fusedreg demo` and `sweep` (matplotlib, written as PNG).

plot_demo   per penalty the weight histogram and the map of the input pixels the model still reads; below, the
            L1 and group-lasso λ paths (test accuracy, zeros, pixels used) with the table's models marked.
plot_sweep  the cross-validated score and the sparsity along the λ path with the choices marked, and what the
            refit model reads (a pixel map for the digits, the largest feature weights for a table).
"""
import torch

from .console import plural
from .models import PENALTY_LABELS, first_weight, groups_for, penalty_keys, sweep_groups
from .path import _penalized, linear_layer, zero_fraction


def _figure(width, height):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def _pixel_map(fig, ax, model, *, title, side=8):
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


def _feature_bars(ax, model, *, names, title, top=25):
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


def plot_sweep(path, res, *, model, kind, data, scale=1.0):
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
    model_kind = "linear" if linear_layer(model) is not None else "mlp"
    keys = penalty_keys(kind, 1.0)
    refit_pen = zero_fraction(_penalized(sweep_groups(kind, model_kind)(model, **keys), keys))
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
        _pixel_map(fig, axes[2], model, title=f"refit at λ={res.lambda_:.3g}", side=data.image_side)
    else:
        _feature_bars(axes[2], model, names=data.features, title=f"refit at λ={res.lambda_:.3g}")
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


def plot_demo(path, *, rows, models, paths, data, hidden, epochs=None):
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
        _pixel_map(fig, ax, models[r.kind], title=r.label)
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
            star = dict(accuracy=r.accuracy, zeros=zero_fraction(penalized),
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
