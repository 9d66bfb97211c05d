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
  sweep     choose λ by k-fold cross-validation along a warm-started path on the same data; draw the path
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
ops), measured in this run on the same model. Then walks a λ path for L1 and group lasso, and writes a PNG:
weight histograms per penalty, which pixels each model still reads, and accuracy / sparsity vs λ.
About 30 s on a 2-core CPU; --quick takes a few seconds."""

SWEEP_HELP = """\
Chooses the penalty strength λ on the digits training split (fusedreg.select.select_lambda):
  1. λ_max = the strength at which a proximal step keeps every penalized weight at zero (from the loss gradient
     at the initial weights); the grid is N_LAMBDAS values from λ_max down to λ_max * LAMBDA_MIN_RATIO,
     evenly spaced in log (or --lambdas).
  2. On each of FOLDS folds one model walks the grid from large to small λ; each λ starts from the previous
     λ's weights and optimizer state (warm start) and trains EPOCHS epochs (twice that for the first λ).
  3. The chosen λ has the best mean validation accuracy (--rule best, the default), or with --rule 1se it is
     the largest λ whose mean is within one standard error of the best (a sparser model of the same quality).
Then refits on the whole training split down the path to the chosen λ, reports test accuracy and sparsity,
and writes a PNG of validation accuracy and sparsity vs λ. About 15 s on a 2-core CPU with the defaults."""

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
    v = _positive_int(text)
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


def _png(text):
    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"the output is a PNG image: the path must end in .png, got {text!r}")
    parent = os.path.dirname(os.path.abspath(text))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"{parent!r} is not a directory")
    return text


def _common(p, out):
    p.set_defaults(_parser=p)  # so checks after parsing report through this subcommand's usage
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the model trains: cpu (default) or cuda (the first GPU; an error when none is "
                        "available)")
    p.add_argument("--backend", default="auto", choices=("auto", "cpp", "cuda", "triton", "torch"),
                   help="fusedreg backend that trains the models (default auto: cpp on CPU when the C++ "
                        "extension is built, else the pure-PyTorch reference 'torch'; see `python -m fusedreg "
                        "backends`). The demo's timing columns cover every backend regardless")
    p.add_argument("--out", type=_png, default=out, metavar="PATH.png",
                   help=f"where to write the figure (default ./{out}; missing folders are created)")
    p.add_argument("--seed", type=_nonneg_int, default=0,
                   help="seed for the train/test split, the initial weights and the batch order (default 0)")
    p.add_argument("--hidden", type=_positive_int, default=64,
                   help="hidden layer width: the MLP is 64 -> HIDDEN -> 10 (default 64)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="mini-batch size (default 64)")
    p.add_argument("--lr", type=_positive, default=1e-2, help="Adam learning rate (default 0.01)")
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
    _common(d, "fusedreg_demo.png")

    s = sub.add_parser("sweep", help="choose λ by cross-validation on bundled data; draw the path",
                       description=SWEEP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--penalty", choices=tuple(SWEEP_PENALTIES), default="l1",
                   help="the penalty whose strength is chosen: l1 (default), elastic-net (with --l1-ratio) or "
                        "group-lasso (first layer, one group per input pixel)")
    s.add_argument("--folds", type=_folds, default=5, help="k in k-fold cross-validation, >= 2 (default 5)")
    s.add_argument("--n-lambdas", type=_positive_int, default=10, metavar="N",
                   help="number of λ values on the grid (default 10)")
    s.add_argument("--lambda-min-ratio", type=_ratio, default=1e-3, metavar="R",
                   help="smallest λ as a fraction of λ_max, in (0, 1) (default 0.001)")
    s.add_argument("--lambdas", type=_lambda_list, default=None, metavar="L1,L2,...",
                   help="an explicit comma-separated grid instead (sorted large to small for you); overrides "
                        "--n-lambdas and --lambda-min-ratio")
    s.add_argument("--rule", choices=("best", "1se"), default="best",
                   help="best: the λ with the best mean validation accuracy (default); 1se: the largest λ whose "
                        "mean is within one standard error of the best")
    s.add_argument("--l1-ratio", type=_l1_ratio, default=0.5,
                   help="elastic net's L1 share, in (0, 1] (default 0.5; only with --penalty elastic-net)")
    s.add_argument("--epochs", type=_positive_int, default=5,
                   help="epochs per λ on the warm-started path; the first λ gets twice as many (default 5; "
                        "--quick uses 1)")
    _common(s, "fusedreg_sweep.png")

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


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
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
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    from . import demo
    common = dict(device=args.device, out=args.out, seed=args.seed, hidden=args.hidden, batch_size=args.batch_size,
                  lr=args.lr, backend=args.backend, progress=args.progress, quick=args.quick, threads=args.threads)
    if args.command == "demo":
        demo.run_demo(epochs=args.epochs, l2=args.l2, l1=args.l1, elastic_net=args.elastic_net,
                      l1_ratio=args.l1_ratio, group_lasso=args.group_lasso, path_lambdas=args.path_lambdas,
                      timing_steps=args.timing_steps, **common)
    else:
        demo.run_sweep(penalty=SWEEP_PENALTIES[args.penalty], folds=args.folds, n_lambdas=args.n_lambdas,
                       lambda_min_ratio=args.lambda_min_ratio, lambdas=args.lambdas, rule=args.rule,
                       l1_ratio=args.l1_ratio, epochs=args.epochs, **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
