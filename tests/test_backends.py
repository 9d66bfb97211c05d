"""Backend choice (fusedreg.backends): auto order, errors that say why, the reference fallback without the
extension, the native registration check, and the GPU scripts kept runnable on CPU."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import fusedreg
from fusedreg import backends


def test_available_and_explain_agree():
    info = backends.explain()
    assert set(info) == set(backends.NAMES)
    assert backends.available() == [b for b in backends.NAMES if info[b] == "available"]
    assert "torch" in backends.available()
    for name, why in info.items():
        assert why == "available" or len(why) > 10, name


def test_unknown_backend_is_a_value_error_listing_choices():
    with pytest.raises(ValueError, match=r"'numpy'.*auto.*cuda.*triton.*cpp.*torch"):
        backends.resolve("numpy", torch.device("cpu"))


def test_unavailable_backend_says_why():
    missing = [b for b in backends.NAMES if b not in backends.available()]
    assert missing, "this machine has no CUDA device, so at least 'cuda' is missing"
    for name in missing:
        with pytest.raises(RuntimeError, match=f"backend '{name}' is not available: .+"):
            backends.resolve(name, torch.device("cpu"))


def test_auto_prefers_the_cpp_extension_on_cpu():
    expected = "cpp" if "cpp" in backends.available() else "torch"
    assert backends.resolve("auto", torch.device("cpu")) == expected


def test_env_var_replaces_auto(monkeypatch):
    monkeypatch.setenv("FUSEDREG_BACKEND", "torch")
    assert backends.resolve("auto", torch.device("cpu")) == "torch"
    assert backends.resolve("torch", torch.device("cpu")) == "torch"
    monkeypatch.setenv("FUSEDREG_BACKEND", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        backends.resolve("auto", torch.device("cpu"))


def test_import_without_the_extension_falls_back_with_one_warning():
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import fusedreg, torch\n"
            "print(fusedreg.backends.available()); print(fusedreg.backends.explain()['cpp'])\n"
            "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3)\n"
            "fusedreg.SGD([p], lr=0.5, l1=1.0).step(); print(p.tolist())\n")
    env = dict(os.environ, FUSEDREG_NO_EXT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert "'cpp'" not in lines[0] and "'torch'" in lines[0]
    assert "FUSEDREG_NO_EXT=1" in lines[1]
    assert lines[2] == "[0.0, 0.0, 0.0]"  # 1 - 0.5, then soft-threshold by 0.5


def test_the_op_runs_the_reference_where_no_native_kernel_is_registered():
    # Without the extension no device has a native kernel: torch.ops.fusedreg.<op> must then be the reference,
    # bit for bit, for every op (its penalties and group lasso on).
    code = ("import sys, torch\n"
            f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})\n"
            "import fusedreg, cases\n"
            "from fusedreg import _ops, reference\n"
            "assert 'cpp' not in fusedreg.backends.available()\n"
            "for op in _ops.ARGS:\n"
            "    pen = dict(l1=0.05, l0=1e-4, group_l1=0.05)  # muon_momentum_ takes only l1\n"
            "    case = cases.build(op, **{k: v for k, v in pen.items() if k in _ops.defaults(op)})\n"
            "    via_op, direct = case.clone(), case.clone()\n"
            "    via_op.call(getattr(torch.ops.fusedreg, op))\n"
            "    direct.call(getattr(reference, op))\n"
            "    for name, ts in direct.state().items():\n"
            "        assert all(torch.equal(a, b) for a, b in zip(via_op.state()[name], ts)), (op, name)\n"
            "    written = 'momentum_buffers' if op == 'muon_momentum_' else 'params'  # it only reads params\n"
            "    assert not all(torch.equal(a, b) for a, b in zip(case.lists[written], direct.lists[written])), op\n"
            "    print(op)\n")
    env = dict(os.environ, FUSEDREG_NO_EXT="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == list(backends.OPS)


@pytest.mark.skipif("cpp" not in backends.available(), reason="needs the C++ extension")
def test_an_extension_built_for_other_schemas_is_an_import_error_that_says_rebuild(tmp_path):
    # A user edits an op's table (here: sgd_ gets an argument) and imports without rebuilding: the built _C's
    # sgd_ kernel no longer fits. That must be an ImportError saying what to do, not a C++ terminate (SIGABRT).
    pkg = os.path.dirname(os.path.abspath(fusedreg.__file__))
    shutil.copytree(pkg, tmp_path / "fusedreg", ignore=shutil.ignore_patterns("__pycache__"))
    ops = tmp_path / "fusedreg" / "_ops.py"
    text = ops.read_text()
    first_step = 'Arg("first_step", "bool", False,'
    assert text.count(first_step) == 1
    ops.write_text(text.replace(first_step, 'Arg("stale", "float", 0.0), ' + first_step))
    env = {k: v for k, v in os.environ.items() if k != "FUSEDREG_NO_EXT"}
    out = subprocess.run([sys.executable, "-c", "import fusedreg"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 1, (out.returncode, out.stderr)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: fusedreg._C was built for other op schemas") and "sgd_" in last, last
    assert "rebuild it: bash scripts/setup.sh" in last


@pytest.mark.skipif("cpp" not in backends.available(), reason="needs the C++ extension")
def test_the_gpu_memcheck_script_runs_on_the_cpu_kernels():
    # bench/gpu.sh runs it under compute-sanitizer on a lent GPU, where a call that no longer fits the op
    # schemas would cost the run; the same calls on CPU keep it in step.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "bench", "memcheck_step.py"), "cpu"], cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "memcheck step script done" in out.stdout


@pytest.mark.skipif("cpp" not in backends.available(), reason="needs the C++ extension")
def test_every_gpu_benchmark_case_builds_and_steps_on_cpu(monkeypatch):
    # bench/bench_gpu.py only ever runs on a lent GPU; each of its cases is built and stepped once here, on CPU
    # tensors with small shapes, so that a broken case does not cost that run.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.syspath_prepend(os.path.join(root, "bench"))
    import bench_gpu
    monkeypatch.setattr(bench_gpu, "DEVICE", "cpu")
    monkeypatch.setattr(bench_gpu, "SHAPES", [(8, 4), (5,), (3, 2)])
    names = []
    for dtype in (torch.float32, torch.bfloat16):
        for name, (make, bytes_per_param) in bench_gpu.cases(dtype).items():
            if "triton" in name and "triton" not in backends.available():
                continue
            make()()
            assert bytes_per_param > 0
            names.append(name)
    assert {"fusedreg_cuda_adamw_l1_l2", "fusedreg_cuda_adamw_class_l1", "torch_adamw_fused",
            "seeds_way_l1_in_loss_default_adamw", "copy_d2d"} <= set(names)


_PROBE = torch.library.Library("fusedreg", "FRAGMENT")  # kept for the process: a schema with no kernel
_PROBE.define("probe_(Tensor(a!)[] params) -> ()")


@pytest.mark.skipif("cpp" not in backends.available(), reason="needs the C++ extension")
def test_an_op_without_a_kernel_on_a_built_device_is_a_clear_error(monkeypatch):
    # A schema added before its kernel used to switch the whole native backend off without a word.
    ops = list(backends.OPS)
    monkeypatch.setattr(backends, "OPS", backends.OPS + ("probe_",))
    with pytest.raises(RuntimeError, match=re.escape(f"CPU kernels for {ops} but none for ['probe_']")):
        backends._check_registered()
