"""Command line: `python -m fusedreg demo`, `python -m fusedreg sweep`, `python -m fusedreg backends`.

Also installed as the `fusedreg` console script. main(argv) runs in-process and returns the exit status.
"""
import argparse
import math
import os
import sys

DESCRIPTION = """\
fusedreg: fused penalized optimizers for PyTorch (L1 prox, elastic net, group lasso, weight decay).

Commands (each has its own --help):
  demo      train a small MLP on scikit-learn's bundled digits with no penalty, L2, L1, elastic net and group
            lasso; print accuracy, sparsity and step time per backend vs torch.optim; write a PNG
  sweep     choose λ by k-fold cross-validation along a warm-started path, on the digits or on your own
            table (--data FILE --target COLUMN); print and draw the path, write it as JSON (--json)
  backends  list the backends this install can run, and why the others cannot

demo and sweep need the demo extras: pip install "fusedreg[demo]" (scikit-learn, matplotlib, tqdm)."""

DEMO_HELP = """\
Trains an MLP 64 -> HIDDEN -> 10 (ReLU) on scikit-learn's handwritten digits (1,797 8x8 images that ship inside
scikit-learn: nothing is downloaded), 75/25 stratified split, with fusedreg.Adam and five penalties from the same
initial weights: none; L2 (Adam's coupled weight decay, --l2); L1 (proximal soft-threshold: exact zeros, --l1);
elastic net (--elastic-net, --l1-ratio); group lasso on the first layer, one group per input pixel
(--group-lasso). Penalties go on weight matrices only; biases are never penalized.

Prints one row per penalty: test accuracy, exact-zero fraction, input pixels and hidden neurons pruned, and the
median optimizer.step() time for each fusedreg backend and for torch.optim.Adam (+ the same penalty in torch
ops), measured in this run on the same model. Then walks a λ path for L1 and group lasso (one model each,
warm-started from the smallest λ up, a separate run from the table's), and writes a PNG: weight histograms per
penalty, which pixels each model still reads, and accuracy / sparsity vs λ with the table's models marked.
About 10 s on a 2-core CPU (measured 2026-12-06: 10.8 s of work, 15 s with Python's start-up, on a busy machine);
--quick takes a few seconds."""

SWEEP_HELP = """\
Chooses the penalty strength λ by k-fold cross-validation (fusedreg.select.select_lambda), on the digits
training split, or on your own data with --data FILE --target COLUMN:
  1. λ_max = the strength at which every penalized weight is zero; the grid is N_LAMBDAS values from λ_max down
     to λ_max * LAMBDA_MIN_RATIO, evenly spaced in log (or --lambdas). For --model linear, λ_max is exact, and
     λ means what scikit-learn's alpha means (see "The λ scale" below).
  2. On each of FOLDS folds one model walks the grid, each λ starting from the previous λ's weights (warm
     start). A linear model walks down from λ_max (scikit-learn's LassoCV path) and trains full-batch to
     convergence at every λ. The MLP walks up, from the smallest λ (trained from the initial weights) to λ_max:
     a network started at λ_max, where every weight is zero, keeps most neurons dead all the way down; walking
     up, each larger λ only prunes a trained network. It trains EPOCHS epochs per λ (twice that for the first).
  3. The chosen λ has the best mean validation score (--rule best, the default), or with --rule 1se it is the
     largest λ whose mean is within one standard error of the best (a sparser model of the same quality).
     A choice at either end of the grid prints a warning: extend the grid.
Then refits on all the training rows along the same path to the chosen λ (down from λ_max, or up from the
smallest λ), reports its scores and sparsity, writes a PNG (--out), and with --json / --save-model the whole
result / the refit model.

Features are standardized (mean 0, std 1, from the training rows; the digits too); a near-constant feature (one
value in >= 99% of the rows) has its scale floored at 0.1·(max - min), so a feature seen in a handful of rows
cannot get a huge standardized value. The task is inferred from the target (text labels or <= 20 distinct
whole numbers: classification; else regression) and printed; --task overrides it.

The λ scale (--model linear): regression minimizes ½·mean squared error + penalty on standardized X and
centered y, scikit-learn's Lasso/ElasticNet objective, so λ = alpha and λ_max = max|Xᵀ(y - ȳ)|/n.
Classification minimizes mean cross-entropy + λ·Σ|w|: LogisticRegression(l1_ratio=1, C=1/(λ·n)).

""" + "{layout}"

SWEEP_PENALTIES = {"l1": "l1", "elastic-net": "elastic_net", "group-lasso": "group_l1"}


def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _nonneg_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _folds(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 2:
        raise argparse.ArgumentTypeError(f"cross-validation needs at least 2 folds, got {v}")
    return v


def _float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _positive(text):
    v = _float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def _ratio(text):
    v = _float(text)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {text}")
    return v


def _l1_ratio(text):
    v = _float(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1] (1 is pure L1), got {text}")
    return v


def _lambda_list(text):
    values = []
    for part in text.split(","):
        if not part.strip():
            raise argparse.ArgumentTypeError(f"empty value in {text!r}; write e.g. 1e-2,3e-3,1e-3")
        v = _float(part.strip())
        if v <= 0:
            raise argparse.ArgumentTypeError(f"every λ must be > 0, got {part.strip()}")
        values.append(v)
    return sorted(set(values), reverse=True)


def _pt(text):
    if not text.lower().endswith((".pt", ".pth")):
        raise argparse.ArgumentTypeError(f"the model is saved with torch.save: the path must end in .pt, got {text!r}")
    return text


def _json(text):
    if not text.lower().endswith(".json"):
        raise argparse.ArgumentTypeError(f"the path must end in .json, got {text!r}")
    return text


def _fraction(text):
    v = _float(text)
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return v


def _png(text):
    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"the output is a PNG image: the path must end in .png, got {text!r}")
    parent = os.path.dirname(os.path.abspath(text))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{parent!r} is not a directory")
    return text


def _common(p, out, command):
    p.set_defaults(_parser=p)  # so checks after parsing report through this subcommand's usage
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the model trains: cpu (default) or cuda (the first GPU; an error when none is "
                        "available)")
    p.add_argument("--backend", default="auto", choices=("auto", "cpp", "cuda", "triton", "torch"),
                   help="fusedreg backend that trains the models (default auto: cpp on CPU when the C++ "
                        "extension is built, else the pure-PyTorch reference 'torch'; see `python -m fusedreg "
                        "backends`)" + (". The timing columns cover every backend regardless" if command == "demo"
                                        else ""))
    p.add_argument("--out", type=_png, default=out, metavar="PATH.png",
                   help=f"where to write the figure (default {out}, under the current folder; missing folders "
                        "are created)")
    p.add_argument("--seed", type=_nonneg_int, default=0,
                   help="seed for the train/test split, the initial weights and the batch order (default 0)")
    p.add_argument("--hidden", type=_positive_int, default=64,
                   help="hidden layer width: the MLP is FEATURES -> HIDDEN -> OUTPUTS (default 64; the digits: "
                        "64 -> HIDDEN -> 10)")
    if command == "demo":
        p.add_argument("--batch-size", type=_positive_int, default=64, help="mini-batch size (default 64)")
        p.add_argument("--lr", type=_positive, default=1e-2, help="Adam learning rate (default 0.01)")
    else:
        p.add_argument("--batch-size", type=_positive_int, default=None,
                       help="MLP mini-batch size (default 64; a linear model trains full-batch)")
        p.add_argument("--lr", type=_positive, default=None,
                       help="MLP Adam learning rate (default 0.01; a linear model uses lr = 1/L, L the Lipschitz "
                            "constant of its loss's gradient)")
    p.add_argument("--threads", type=_nonneg_int, default=1,
                   help="torch CPU threads for the run (default 1: the model is tiny, so one thread is fastest "
                        "and steadiest; 0 keeps torch's own setting)")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds instead of the full run, for smoke tests (fewer epochs, folds and λ values)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="hide the progress bar (it is drawn on stderr, and only when stderr is a terminal)")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m fusedreg", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from . import __version__
    parser.add_argument("--version", action="version", version=f"fusedreg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,sweep,backends}")

    d = sub.add_parser("demo", help="train five penalties on bundled data; table + PNG", description=DEMO_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--epochs", type=_positive_int, default=30,
                   help="training epochs per penalty (default 30; --quick caps it at 3)")
    d.add_argument("--l2", type=_positive, default=1e-2, metavar="λ",
                   help="L2 strength: Adam's coupled weight decay, g += λ·w (default 0.01)")
    d.add_argument("--l1", type=_positive, default=2e-3, metavar="λ",
                   help="L1 strength λ in λ·Σ|w|, applied as a proximal soft-threshold (default 0.002)")
    d.add_argument("--elastic-net", type=_positive, default=4e-3, metavar="α",
                   help="elastic-net strength α: l1 = α·l1_ratio, weight decay = α·(1 - l1_ratio) "
                        "(fusedreg.elastic_net; default 0.004)")
    d.add_argument("--l1-ratio", type=_l1_ratio, default=0.5,
                   help="elastic net's L1 share, in (0, 1] (default 0.5)")
    d.add_argument("--group-lasso", type=_positive, default=7e-3, metavar="λ",
                   help="group-lasso strength λ in λ·Σ_j sqrt(HIDDEN)·||W1[:, j]||_2 over the first layer's "
                        "columns, one group per input pixel (default 0.007)")
    d.add_argument("--path-lambdas", type=_positive_int, default=8, metavar="N",
                   help="points on the λ path drawn for L1 and group lasso (default 8; --quick caps it at 4)")
    d.add_argument("--timing-steps", type=_positive_int, default=200, metavar="N",
                   help="optimizer steps timed per backend and penalty; the table shows the median "
                        "(default 200; --quick caps it at 20)")
    _common(d, "out/fusedreg_demo.png", "demo")

    from .data import DATA_LAYOUT
    s = sub.add_parser("sweep", help="choose λ by cross-validation (digits or --data FILE); path, PNG, JSON",
                       description=SWEEP_HELP.format(layout=DATA_LAYOUT),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--data", metavar="FILE", default=None,
                   help="your data: a .csv with a header row, or a .npz / .npy (layouts above). Default: "
                        "scikit-learn's digits (75/25 train/test split)")
    s.add_argument("--target", metavar="COLUMN", default=None,
                   help="the column to predict: a CSV column name, a .npz array name (default y), or a .npy "
                        "column index (default: the last column)")
    s.add_argument("--task", choices=("classification", "regression"), default=None,
                   help="default: inferred from the target and printed")
    s.add_argument("--model", choices=("linear", "mlp"), default=None,
                   help="linear: nn.Linear, on scikit-learn's λ scale (default with --data); mlp: FEATURES -> "
                        "HIDDEN -> OUTPUTS with ReLU (default on the digits)")
    s.add_argument("--test-fraction", type=_fraction, default=0.0, metavar="F",
                   help="with --data: hold out this share of the rows (random, by --seed) to score the refit "
                        "model on (default 0: every row is used for CV and the refit)")
    s.add_argument("--json", type=_json, default=None, metavar="PATH.json",
                   help="write the whole result: grid, CV mean/std and zero fraction per λ, chosen λ and rule, the "
                        "refit's scores and sparsity, the standardization")
    s.add_argument("--save-model", type=_pt, default=None, metavar="PATH.pt",
                   help="save the refit model's state_dict with the standardization (torch.save); README "
                        "'Predict with a saved model' shows how to use it")
    s.add_argument("--penalty", choices=tuple(SWEEP_PENALTIES), default="l1",
                   help="the penalty whose strength is chosen: l1 (default), elastic-net (with --l1-ratio) or "
                        "group-lasso (one group per input feature: a column of the first weight matrix)")
    s.add_argument("--folds", type=_folds, default=5, help="k in k-fold cross-validation, >= 2 (default 5)")
    s.add_argument("--n-lambdas", type=_positive_int, default=10, metavar="N",
                   help="number of λ values on the grid (default 10)")
    s.add_argument("--lambda-min-ratio", type=_ratio, default=1e-3, metavar="R",
                   help="smallest λ as a fraction of λ_max, in (0, 1) (default 0.001)")
    s.add_argument("--lambdas", type=_lambda_list, default=None, metavar="L1,L2,...",
                   help="an explicit comma-separated grid instead (sorted large to small for you; --quick keeps "
                        "every value); overrides --n-lambdas and --lambda-min-ratio")
    s.add_argument("--rule", choices=("best", "1se"), default="best",
                   help="best: the λ with the best mean validation score (accuracy, or mse for a regression; "
                        "default); 1se: the largest λ whose mean is within one standard error of the best")
    s.add_argument("--l1-ratio", type=_l1_ratio, default=None,
                   help="elastic net's L1 share, in (0, 1] (default 0.5; only with --penalty elastic-net)")
    s.add_argument("--epochs", type=_positive_int, default=None,
                   help="MLP epochs per λ on the warm-started path (walked from the smallest λ up); the first λ "
                        "gets twice as many (default 5; "
                        "--quick uses 1). A linear model trains each λ to convergence")
    _common(s, "out/fusedreg_sweep.png", "sweep")

    sub.add_parser("backends", help="list the backends this install can run",
                   description="Prints every fusedreg backend and whether this install can run it (and why not).")
    return parser


def _check_device(parser, args):
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False; "
                     f"torch {torch.__version__} built with CUDA {torch.version.cuda}). Use --device cpu.")
    if args.backend == "auto":
        return
    from . import backends
    dev = torch.device(args.device)
    try:
        backends.resolve(args.backend, dev)
    except RuntimeError as e:
        parser.error(f"--backend {args.backend}: {e}")


def _check_demo_deps(parser):
    missing = []
    for mod in ("sklearn", "matplotlib"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        parser.error(f"this command needs {', '.join(missing)}: pip install \"fusedreg[demo]\"")


VALUE_OPTIONS = ("--lambdas",)


def _join_negative(argv):
    """argparse reads "--lambdas -1,0.1" as two options; join such a value to its option, so the value's own
    check reports it ("every λ must be > 0")."""
    out, argv = [], list(argv)
    for k, a in enumerate(argv):
        if k and argv[k - 1] in VALUE_OPTIONS and a.startswith("-") and a[1:2].isdigit() | (a[1:2] == "."):
            out[-1] = f"{argv[k - 1]}={a}"
        else:
            out.append(a)
    return out


def _check_sweep(parser, args):
    if args.l1_ratio is not None and args.penalty != "elastic-net":
        parser.error(f"--l1-ratio applies to --penalty elastic-net only (got --penalty {args.penalty})")
    if args.data is None:
        if args.target is not None:
            parser.error("--target names a column of --data FILE; without --data the sweep runs on the digits")
        if args.test_fraction:
            parser.error("--test-fraction applies to --data; the digits use a fixed 75/25 split")
        if args.task == "regression":
            parser.error("the digits are a classification task; pass --data FILE for a regression")
    model = args.model or ("mlp" if args.data is None else "linear")
    if model == "linear":
        given = [f"--{k.replace('_', '-')}" for k in ("lr", "batch_size", "epochs")
                 if getattr(args, k) is not None]
        if given:
            parser.error(f"{', '.join(given)} set{'s' if len(given) == 1 else ''} the MLP's training; --model "
                         "linear trains full-batch to convergence (lr = 1/L)")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(_join_negative(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 0
    from . import backends
    if args.command == "backends":
        for name, why in backends.explain().items():
            print(f"{name:7} {why}")
        return 0
    _check_device(args._parser, args)
    _check_demo_deps(args._parser)
    if args.command == "sweep":
        _check_sweep(args._parser, args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    from . import demo, sweep
    from .folds import DataError
    common = dict(device=args.device, out=args.out, seed=args.seed, hidden=args.hidden, batch_size=args.batch_size,
                  lr=args.lr, backend=args.backend, progress=args.progress, quick=args.quick, threads=args.threads)
    try:
        if args.command == "demo":
            demo.run_demo(epochs=args.epochs, l2=args.l2, l1=args.l1, elastic_net=args.elastic_net,
                          l1_ratio=args.l1_ratio, group_lasso=args.group_lasso, path_lambdas=args.path_lambdas,
                          timing_steps=args.timing_steps, **common)
        else:
            sweep.run_sweep(penalty=SWEEP_PENALTIES[args.penalty], folds=args.folds, n_lambdas=args.n_lambdas,
                            lambda_min_ratio=args.lambda_min_ratio, lambdas=args.lambdas, rule=args.rule,
                            l1_ratio=0.5 if args.l1_ratio is None else args.l1_ratio, epochs=args.epochs,
                            data=args.data, target=args.target, task=args.task, model=args.model,
                            test_fraction=args.test_fraction, json_path=args.json, save_model=args.save_model,
                            **common)
    except DataError as e:  # a problem with the user's data: one line, no traceback
        args._parser.exit(2, f"{args._parser.prog}: error: {e}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
