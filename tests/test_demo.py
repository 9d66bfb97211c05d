"""`python -m fusedreg demo` / `sweep` end to end in quick mode, and the command line's help and errors
(fusedreg.select itself: test_select.py)."""
import contextlib
import io
import os
import re
import subprocess
import sys

import pytest
import torch

import fusedreg
from fusedreg import console, demo, models, plots, select, sweep
from fusedreg.data import load_digits
from fusedreg.path import _all_zero, _rounding_tol
from fusedreg.__main__ import build_parser, main

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The models here are tiny: one thread is fastest and does not stall when the machine is busy.
    with console.cpu_threads(1):
        yield


class Bar:
    """Stands in for the tqdm bar: records whether the header was printed first and every change of total."""
    made = []

    def __init__(self, total, desc, enabled, unit="step"):
        self.totals, self.n = [total], 0
        self.header_first = sys.stdout.getvalue().startswith("fusedreg ")
        Bar.made.append(self)

    @property
    def total(self):
        return self.totals[-1]

    @total.setter
    def total(self, v):
        self.totals.append(v)

    def update(self, k=1):
        self.n += k

    def set_description(self, text):
        pass

    def refresh(self):
        pass

    def close(self):
        pass


def _run(argv, module, fn_name):
    """main(argv) in-process; returns (stdout, stderr, the result object module.fn_name returned). The
    progress bar is a recording Bar (result.bar)."""
    seen = {}
    real = getattr(module, fn_name)

    def spy(**kw):
        seen["result"] = real(**kw)
        return seen["result"]

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setattr(module, fn_name, spy)
        mp.setattr(console, "make_progress", Bar)
        Bar.made.clear()
        assert main(argv) == 0
    seen["result"].bar = Bar.made[-1]
    return out.getvalue(), err.getvalue(), seen["result"]


def _bar_ok(bar):
    # The header comes before the bar; the total never grows (the percentage never goes back) and the run
    # ends at exactly 100%.
    assert bar.header_first
    assert all(b <= a for a, b in zip(bar.totals, bar.totals[1:])), bar.totals
    assert bar.n == bar.total, (bar.n, bar.totals)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    png = tmp_path_factory.mktemp("demo") / "out" / "demo.png"  # a missing folder is created
    return (png,) + _run(["demo", "--quick", "--out", str(png)], demo, "run_demo")


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    png = tmp_path_factory.mktemp("sweep") / "sweep.png"
    return (png,) + _run(["sweep", "--quick", "--no-progress", "--out", str(png)], sweep, "run_sweep")


def _png_ok(path):
    assert path.exists(), f"{path} was not written"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # a real figure, not an empty canvas


# ------------------------------------------------------------------------------------------------------- demo

def test_demo_prints_a_row_per_penalty(demo_run):
    png, out, _, res = demo_run
    for label in ("none", "L2", "L1", "elastic net", "group lasso"):
        assert any(line.startswith(label) for line in out.splitlines()), f"no table row for {label!r}:\n{out}"
    for column in ("test acc", "zero weights", "inputs pruned", "hidden pruned", "torch.optim us"):
        assert column in out
    assert [r.kind for r in res.rows] == ["none", "l2", "l1", "elastic_net", "group_l1"]
    assert f"wrote {os.path.abspath(png)}" in out
    assert "overhead-bound" in out


def test_demo_writes_the_png(demo_run):
    png, _, _, res = demo_run
    _png_ok(png)
    assert res.png == os.path.abspath(png)


def test_demo_progress_and_table_text(demo_run):
    _, out, _, res = demo_run
    _bar_ok(res.bar)
    assert max(len(line) for line in out.splitlines()) <= 160
    flat = " ".join(out.split())  # notes are wrapped
    assert "1 epochs" not in flat and "backend='torch' (the pure-PyTorch reference, the test oracle)" in flat
    # The table's "zero weights" is the figure legend's count: the weight matrices' exact-zero fraction.
    for r in res.rows:
        weights = [p for p in res.models[r.kind].parameters() if p.dim() >= 2]
        assert r.zeros == sum(int((p == 0).sum()) for p in weights) / sum(p.numel() for p in weights)


def test_demo_figure_contents(demo_run, tmp_path):
    _, _, _, res = demo_run
    fig = plots.plot_demo(str(tmp_path / "d.png"), rows=res.rows, models=res.models, paths=res.paths,
                          data=load_digits(0), hidden=64)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels.count("||W1[:, pixel]||") == len(res.rows)  # a colorbar per pixel map
    legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    for r in res.rows:
        if r.zeros:
            assert f"zero weights: {r.zeros:.1%}" in legends, (r.kind, legends)
    assert any("table's λ" in t for t in legends)  # the λ the table used, marked on the path plots
    # ... with the table's model itself at that λ (a star), and the figure says the path is another run.
    assert any("table's model" in t for t in legends)
    texts = [t.get_text() for t in fig.texts] + [ax.get_xlabel() + " " + ax.get_title() for ax in fig.axes]
    assert any("different run" in t and "trained alone" in t for t in texts), texts
    assert any("warm-started from the smallest λ up" in t for t in texts), texts


def test_sweep_figure_axis_spans_the_models_that_are_not_all_zero(sweep_run, tmp_path):
    _, _, _, res = sweep_run
    fig = plots.plot_sweep(str(tmp_path / "s.png"), res.path, model=res.path.model, kind="l1", data=res.data)
    lo, hi = fig.axes[0].get_ylim()
    live = [m for m, z in zip(res.path.mean, res.path.penalized_sparsity) if z < 1]
    assert lo > min(res.path.mean) or len(live) == len(res.path.mean)  # the ~0.1 accuracy of λ_max is off-axis
    assert lo <= min(live) and hi >= max(live)
    legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("chosen λ=") for t in legends)
    # The refit (the printed numbers) is marked apart from the folds' curves, and the path's direction is named.
    assert any(t.startswith("refit on all rows") for t in legends)
    texts = [t.get_text() for t in fig.texts] + [ax.get_xlabel() for ax in fig.axes]
    assert any("warm-started from the smallest λ up" in t for t in texts), texts
    assert any("small to large" in t for t in texts), texts


def test_default_figure_path_is_not_the_current_folder():
    from fusedreg.__main__ import build_parser
    for cmd in ("demo", "sweep"):
        args = build_parser().parse_args([cmd])
        assert os.path.dirname(args.out) == "out", args.out


def test_demo_l1_has_exact_zeros_and_l2_has_none(demo_run):
    _, _, _, res = demo_run
    rows = {r.kind: r for r in res.rows}
    for kind in ("none", "l2"):
        assert rows[kind].zeros == 0.0
        assert all(int((p == 0).sum()) == 0 for p in res.models[kind].parameters()), kind
    for kind in ("l1", "elastic_net"):
        assert rows[kind].zeros > 0.05, kind
        assert int((res.models[kind][0].weight == 0).sum()) > 0
    # The pixels that are constant in the training data get a zero gradient: any L1-type penalty removes them.
    assert rows["l1"].inputs_pruned >= 1 and rows["group_l1"].inputs_pruned >= 1
    # Group lasso zeroes whole columns of the first layer and touches nothing else.
    w1 = res.models["group_l1"][0].weight
    cols = (w1 == 0).all(0)
    assert int((w1 == 0).sum()) == int(cols.sum()) * w1.shape[0]
    assert all(int((p == 0).sum()) == 0 for name, p in res.models["group_l1"].named_parameters()
               if name != "0.weight")
    for r in res.rows:
        assert 0.5 < r.accuracy <= 1.0, (r.kind, r.accuracy)


def test_demo_times_every_backend_and_torch_optim(demo_run):
    _, out, _, res = demo_run
    available = fusedreg.backends.available()
    for r in res.rows:
        for b in demo.TIMED["cpu"]:
            if b in available:
                assert isinstance(r.step_us[b], float) and r.step_us[b] > 0, (r.kind, b)
            else:
                assert isinstance(r.step_us[b], str) and r.step_us[b]  # the reason, printed under the table
                assert f"{b}: not timed" in out
        assert r.torch_us > 0


def test_demo_lambda_paths(demo_run):
    _, _, _, res = demo_run
    for kind in ("l1", "group_l1"):
        rec = res.paths[kind]
        lam = rec["lambdas"]
        assert lam == sorted(lam, reverse=True) and len(rec["accuracy"]) == len(lam)
        assert None not in rec["accuracy"] + rec["zeros"] + rec["inputs_kept"]  # filled by grid index
        # The path walks up (from the smallest λ), so it reaches λ_max last, from a trained network: the
        # sparsest point, but not necessarily all zero (walking down, it was the all-zero start).
        assert rec["direction"] == "up" and rec["zeros"][0] == max(rec["zeros"]) > rec["zeros"][-1]
        assert rec["zeros"][-1] < 1.0 and rec["accuracy"][-1] > 0.5
        # λ_max itself is calibrated from the initial weights: trained alone there, every penalized weight is 0.
        kw = dict(param_groups=models.groups_for(kind), lr=1e-2, batch_size=64, group_dim=1, penalty=kind,
                  epochs=rec["epochs"], epochs_first=rec["epochs_first"])
        data = load_digits(0)
        groups = {}
        select.walk_path(models.mlp_factory(64, 64), data.X_train, data.y_train, lam[:1], **kw,
                         on_lambda=lambda i, lam_, model, penalized: groups.update(p=penalized))
        assert _all_zero(groups["p"], _rounding_tol(groups["p"], 1e-2, lam[0])), kind


# ------------------------------------------------------------------------------------------------------ sweep

def test_sweep_chooses_a_lambda_in_the_grid(sweep_run):
    png, out, _, res = sweep_run
    path = res.path
    assert path.lambda_ in path.lambdas
    assert path.lambdas[-1] <= path.lambda_ <= path.lambdas[0]
    assert path.lambdas == sorted(path.lambdas, reverse=True)
    assert len(path.mean) == len(path.std) == len(path.sparsity) == len(path.lambdas)
    assert all(len(s) == path.folds for s in path.scores)
    # The MLP's path walks up from the smallest λ: λ_max comes last, from a trained network, and is the
    # sparsest point (walking down, it was the all-zero start; see select's docstring for why that changed).
    assert path.direction == "up" and path.refit_lambdas == path.lambdas[path.index:]
    assert path.penalized_sparsity[0] == max(path.penalized_sparsity) > 0.9
    assert path.index_1se <= path.best_index
    assert f"chosen λ = {path.lambda_:.4g}" in out
    assert "test accuracy" in out
    rows = [line for line in out.splitlines() if re.match(r"^[* ] +\d\.?\d*(e[-+]\d+)? +\d\.\d{4} ± ", line)]
    assert len(rows) == len(path.lambdas)
    assert 0.5 < res.test_accuracy <= 1.0
    _png_ok(png)
    _bar_ok(res.bar)
    assert "1 epochs" not in out and "1 epoch per λ" in out


def test_sweep_group_lasso_with_explicit_grid(tmp_path):
    png = tmp_path / "g.png"
    out, _, res = _run(["sweep", "--quick", "--no-progress", "--penalty", "group-lasso", "--folds", "2",
                        "--lambdas", "1e-3,1e-2", "--rule", "1se", "--out", str(png)], sweep, "run_sweep")
    assert res.path.lambdas == [1e-2, 1e-3]  # sorted large to small
    assert res.path.rule == "1se" and res.path.lambda_ == res.path.lambda_1se
    _png_ok(png)


# ------------------------------------------------------------------------------------------------ command line

def test_every_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help and len(action.help) > 10, (name, action.option_strings)
        text = p.format_help()
        for action in p._actions:
            for opt in action.option_strings:
                assert opt in text


def test_help_runs(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--epochs" in out and "--device" in out and "digits" in out
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["demo", "--epochs", "0"], "must be at least 1"),
    (["demo", "--epochs", "ten"], "expected a whole number"),
    (["demo", "--l1", "-1"], "must be > 0"),
    (["demo", "--l1-ratio", "1.5"], "(0, 1]"),
    (["demo", "--lr", "nan"], "finite"),
    (["demo", "--out", "figure.jpg"], "must end in .png"),
    (["demo", "--device", "tpu"], "invalid choice"),
    (["demo", "--backend", "fortran"], "invalid choice"),
    (["sweep", "--folds", "1"], "at least 2 folds"),
    (["sweep", "--lambda-min-ratio", "1"], "strictly between 0 and 1"),
    (["sweep", "--lambdas", "1e-2,,1e-3"], "empty value"),
    (["sweep", "--lambdas", "1e-2,-1"], "must be > 0"),
    (["sweep", "--penalty", "l0"], "invalid choice"),
    (["sweep", "--rule", "2se"], "invalid choice"),
])
def test_bad_option_values_are_clear_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--quick", "--device", "cuda"])
    assert e.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_unavailable_backend_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--quick", "--backend", "cuda"])
    assert e.value.code == 2
    assert "--backend cuda" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    root = os.path.dirname(os.path.dirname(os.path.abspath(fusedreg.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "fusedreg", "sweep", "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--rule" in done.stdout and "cross-validation" in done.stdout


def test_backends_command(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    for name in fusedreg.backends.NAMES:
        assert name in out
