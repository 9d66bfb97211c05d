"""The C++ CPU group prox beyond the kernel grid of test_kernels.py: the one-pass path (the metric prox's root from
the group's moments, when every a_i is small next to it) mixed with the exact Newton passes in one param, on rows,
columns and conv weights; conv weights against the reference on an explicit reshape; the result on 1 and 2
threads; no allocation the size of a param.
"""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fusedreg import backends
from cases import build, compare, shrink_groups
from test_kernels import run, seeded

SHAPES = [(40, 300), (300, 40), (6, 20, 3, 3), (3, 10), (2, 3), (3, 4, 300)]  # the last: K > a strip's 256
# A group_l1 for which most groups take the one-pass path (a_i / r ~ 1e-4 here), while the groups scaled by 1e-3
# (below) are zeroed or need the exact passes.
SMALL = {"sgd_": dict(momentum=0.9, l1=1e-3, group_l1=1e-2),
         "adam_": dict(weight_decay=1e-2, decoupled=True, l1=1e-3, group_l1=1e-2),
         "adagrad_": dict(l1=1e-3, l2=0.1, group_l1=1e-2),
         "ftrl_": dict(beta=0.5, l1=1e-3, l2=0.1, group_l1=1e-2)}


def _case(op, dtype, group_dim, gen, **over):
    return shrink_groups(build(op, SHAPES, dtype, gen=gen, **{**SMALL[op], "group_dim": group_dim, **over}))


@pytest.fixture(autouse=True)
def cpp_only():
    if "cpp" not in backends.available():
        pytest.skip(backends.explain()["cpp"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("group_dim", [0, 1])
@pytest.mark.parametrize("op", list(SMALL))
def test_one_pass_and_exact_groups_match_reference(op, group_dim, dtype):
    gen = seeded("group-one-pass", op, group_dim, dtype)
    compare(*run("cpp", _case(op, dtype, group_dim, gen), gen))


@pytest.mark.parametrize("group_dim", [0, 1])
@pytest.mark.parametrize("op", list(SMALL))
def test_conv_weight_groups_are_filters_or_input_channels(op, group_dim):
    # A (out, in, kh, kw) weight: group_dim=0 groups p[o] (a filter), group_dim=1 groups p[:, i] (an input channel
    # across every filter and position): the reference's group prox on the weight reshaped to (out, in*kh*kw),
    # or to (in, out*kh*kw) through a transpose, with group_dim=0.
    gen = seeded("group-conv", op, group_dim)
    case = _case(op, torch.float64, group_dim, gen, group_l1=0.05 if op == "ftrl_" else 1.0)  # some groups zeroed
    case.lists = {k: v[2:3] for k, v in case.lists.items()}
    flat = case.clone()

    def view(t):
        if t.dim() < 4:
            return t
        return (t if group_dim == 0 else t.transpose(0, 1)).reshape(t.shape[group_dim], -1).contiguous()

    flat.lists = {k: [view(t) for t in v] for k, v in flat.lists.items()}
    flat.kw["group_dim"] = 0
    grads = case.new_grads(gen, scale=1e-3)  # small: the tiny groups stay tiny and are zeroed
    case.call(backends.kernel("cpp", op), grads=grads)
    flat.call(backends.kernel("torch", op), grads=[view(g) for g in grads])
    got = view(case.params[0])
    want = flat.params[0]
    assert torch.equal(got == 0, want == 0)
    assert (got != 0).any() and (got == 0).any()
    # FTRL's w = -(z - sign(z)*l1)/q cancels near the threshold (elementwise, group lasso or not): there the
    # error is held against the largest w
    atol = 1e-12 * float(want.abs().max()) if op == "ftrl_" else 0
    torch.testing.assert_close(got, want, rtol=1e-12, atol=atol)


@pytest.mark.parametrize("group_dim", [0, 1])
@pytest.mark.parametrize("op", list(SMALL))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_one_pass_does_not_depend_on_thread_count(op, group_dim, dtype):
    # fp32/fp64 rows take their sums from the update itself, bf16/fp16 rows from a pass over the written row
    results = []
    n = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            gen = seeded("group-threads", op, group_dim)
            case = build(op, [(600, 70), (70, 600), (6, 50, 40), (4, 2000), (5, 3, 600)], dtype, gen=gen,
                         **{**SMALL[op], "group_dim": group_dim})
            for _ in range(2):
                case.call(backends.kernel("cpp", op), grads=case.new_grads(gen))
        finally:
            torch.set_num_threads(n)
        results.append(case.params)
    for a, b in zip(*results):
        assert torch.equal(a, b)


PEAK = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, "tests")
    from fusedreg import backends
    from cases import build

    def hwm():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024

    op, group_dim = sys.argv[1], int(sys.argv[2])
    hp = dict(group_l1=1e-2, group_dim=group_dim)
    fn = backends.kernel("cpp", op)
    small = build(op, [(64, 64)], torch.float32, **hp)
    small.call(fn)  # thread pools, panels: everything a first call sets up
    case = build(op, [(2048, 2048)], torch.float32, **hp)
    plain = build(op, [(2048, 2048)], torch.float32, **{**hp, "group_l1": 0.0})
    plain.call(fn)
    open("/proc/self/clear_refs", "w").write("5")  # resets VmHWM to the current RSS
    before = hwm()
    case.call(fn)
    print(hwm() - before)
""")


@pytest.mark.parametrize("group_dim", [0, 1])
@pytest.mark.parametrize("op", ["sgd_", "adam_"])
def test_no_param_sized_allocation(op, group_dim):
    # The step's peak resident memory over what the tensors hold, on a 16 MiB param: a transient the size of the
    # param (the column path kept a_i in one) would show as ~16 MiB; the per-thread panels are a few KiB.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", PEAK, op, str(group_dim)], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2"})
    if out.returncode != 0 and "clear_refs" in out.stderr:
        pytest.skip("no /proc/self/clear_refs here")
    assert out.returncode == 0, out.stderr
    grown = int(out.stdout.split()[-1])
    assert grown < 4 << 20, f"peak grew by {grown / 2**20:.1f} MiB"


@pytest.mark.parametrize("group_dim", [0, 1])
def test_one_pass_root_is_as_exact_as_newton_in_fp64(group_dim):
    # The one-pass root (series from the moments) against the reference's Newton to 1e-14 elementwise, far tighter
    # than the step tolerance (measured: < 1e-15); its start alone (the Jensen bound, no series) is off by up to
    # ~1e-12 here.
    gen = seeded("group-one-pass-exact", "adam_", group_dim)
    case = build("adam_", [(64, 512), (512, 64)], torch.float64, gen=gen,
                 **{**SMALL["adam_"], "group_l1": 8e-3, "group_dim": group_dim})
    mine, ref, _ = run("cpp", case, gen, steps=1)
    for a, b in zip(mine.params, ref.params):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14 * b.abs().max().item())
