"""Reliability (issue #9): bad inputs fail loudly and change nothing, non-finite gradients behave like torch.optim,
a checkpoint resumed in a fresh process continues bitwise, runs are deterministic, and a missing or broken C++
extension falls back to the reference with one warning. Every test runs on each CPU backend (conftest).

"Changes nothing" is checked bitwise: every param and every state tensor, compared as raw bytes.
"""
import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedreg
from fusedreg import backends
from fusedreg import functional as F
from cases import OPS, assert_unchanged, build, raw, snapshot, unchanged
from tolerances import TRAJECTORY, rel_err

CONFIGS = {
    "SGD": dict(lr=0.05, momentum=0.9, l1=0.01),
    "Adam": dict(lr=0.01, amsgrad=True, l1=0.01),
    "AdamW": dict(lr=0.01, l1=0.01, weight_decay=0.1),
    "Adagrad": dict(lr=0.05, l1=0.01, l2=0.01, lr_decay=0.01),
    "Ftrl": dict(lr=0.05, l1=0.01, l2=0.01, l2_shrinkage=0.01, beta=0.1),
    "Lion": dict(lr=0.01, l1=0.01, weight_decay=0.1),
}
NAMES = list(CONFIGS)
TORCH_NAMES = [n for n in NAMES if hasattr(torch.optim, n)]  # torch.optim has no Ftrl, no Lion


def params(dtype=torch.float32, seed=0, shapes=((16, 6), (16,), (3, 16), (3,))):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype)) for s in shapes]


def set_grads(ps, k):
    """Deterministic, param-dependent gradients for step k (no matmul, so bitwise reproducible anywhere)."""
    for i, p in enumerate(ps):
        g = torch.Generator().manual_seed(1000 * k + i)
        noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
        p.grad = torch.sin(3 * p.detach()) + 0.1 * noise


def train(ps, opt, steps, start=0):
    for k in range(start, start + steps):
        set_grads(ps, k)
        opt.step()


def make(name, ps, backend, **extra):
    return getattr(fusedreg, name)(ps, **{**CONFIGS[name], **extra}, backend=backend)


# ------------------------------------------------------------------------------------------------------------
# 2. Bad inputs

HYPER = {
    "SGD": ["lr", "momentum", "dampening", "weight_decay", "l1", "l0", "group_l1"],
    "Adam": ["lr", "eps", "beta1", "beta2", "weight_decay", "l1", "l0", "group_l1"],
    "AdamW": ["lr", "eps", "beta1", "beta2", "weight_decay", "l1", "l0", "group_l1"],
    "Adagrad": ["lr", "lr_decay", "eps", "weight_decay", "initial_accumulator_value", "l1", "l2", "l0", "group_l1"],
    "Ftrl": ["lr", "initial_accumulator_value", "beta", "l1", "l2", "l2_shrinkage", "l0", "group_l1"],
    "Lion": ["lr", "beta1", "beta2", "weight_decay", "l1", "l0", "group_l1"],
}
BAD_HYPER = [(n, k, v) for n in HYPER for k in HYPER[n] for v in (-0.5, float("nan"))]


def _hyper_kw(name, key, value):
    if key in ("beta1", "beta2"):
        betas = [0.9, 0.999]
        betas[key == "beta2"] = value
        return dict(betas=tuple(betas))
    return {key: value}


@pytest.mark.parametrize("name,key,value", BAD_HYPER, ids=[f"{n}-{k}-{v}" for n, k, v in BAD_HYPER])
def test_negative_or_nan_hyperparameter_fails_at_construction(name, key, value):
    match = "beta" if key.startswith("beta") else key
    with pytest.raises(ValueError, match=match):
        getattr(fusedreg, name)(params(), **_hyper_kw(name, key, value))


@pytest.mark.parametrize("name", NAMES)
def test_hyperparameter_edited_to_a_bad_value_fails_at_step_before_any_group_moves(name, backend):
    ps = params()
    opt = getattr(fusedreg, name)([dict(params=ps[:2]), dict(params=ps[2:])], **CONFIGS[name], backend=backend)
    train(ps, opt, 2)
    set_grads(ps, 2)
    snap = snapshot(ps, opt)
    for key in HYPER[name]:
        if key in ("initial_accumulator_value",):
            continue
        for value in (-1.0, float("nan")):
            group = opt.param_groups[1]  # the second group: the first must not have been stepped either
            saved = copy.deepcopy({k: v for k, v in group.items() if k != "params"})
            if key in ("beta1", "beta2"):
                b = list(group["betas"])
                b[key == "beta2"] = value
                group["betas"] = tuple(b)
            else:
                group[key] = value
            with pytest.raises(ValueError, match="beta" if key.startswith("beta") else key):
                opt.step()
            group.update(saved)
            assert_unchanged(ps, opt, snap)


FUNCTIONAL_BAD = [("sgd", "lr"), ("sgd", "momentum"), ("sgd", "dampening"), ("sgd", "weight_decay"), ("sgd", "l1"),
                  ("sgd", "l2"), ("sgd", "l0"), ("adam", "lr"), ("adam", "eps"), ("adam", "beta1"),
                  ("adam", "beta2"), ("adam", "l1"), ("adagrad", "lr"), ("adagrad", "lr_decay"), ("adagrad", "eps"),
                  ("adagrad", "l2"), ("ftrl", "lr"), ("ftrl", "beta"), ("ftrl", "l2_shrinkage"), ("ftrl", "l1"),
                  ("ftrl", "l2"), ("ftrl", "l0"), ("lion", "lr"), ("lion", "beta1"), ("lion", "beta2"),
                  ("lion", "weight_decay"), ("lion", "l1"), ("lion", "l0")]


def functional_call(op, ps, gs, backend, **kw):
    """One functional step with fresh state (returned, so callers can check it too)."""
    o = [torch.zeros_like(p, dtype=torch.float64 if p.dtype == torch.float64 else torch.float32) for p in ps]
    steps = [torch.zeros((), dtype=torch.float32) for _ in ps]
    if op == "sgd":
        state = dict(momentum_buffers=[x.clone() for x in o])
        F.sgd(ps, gs, state["momentum_buffers"], **{"lr": 0.1, "momentum": 0.9, **kw}, backend=backend)
    elif op == "adam":
        state = dict(exp_avgs=o, exp_avg_sqs=[x.clone() for x in o], state_steps=steps)
        state["max_exp_avg_sqs"] = [x.clone() for x in o] if kw.get("amsgrad") else []
        F.adam(ps, gs, state["exp_avgs"], state["exp_avg_sqs"], state["max_exp_avg_sqs"], steps, **{"lr": 0.1, **kw},
               backend=backend)
    elif op == "ftrl":
        state = dict(accumulators=[x + 0.1 for x in o], linears=o)
        F.ftrl(ps, gs, state["accumulators"], o, **{"lr": 0.1, **kw}, backend=backend)
    elif op == "lion":
        state = dict(exp_avgs=o)
        F.lion(ps, gs, o, **{"lr": 0.1, **kw}, backend=backend)
    else:
        state = dict(state_sums=o, state_steps=steps)
        F.adagrad(ps, gs, o, steps, **{"lr": 0.1, **kw}, backend=backend)
    return state


@pytest.mark.parametrize("op,key", FUNCTIONAL_BAD)
@pytest.mark.parametrize("value", [-1.0, float("nan")])
def test_functional_rejects_negative_or_nan_hyperparameters(op, key, value, backend):
    ps, gs = [torch.ones(5), torch.ones(3)], [torch.ones(5), torch.ones(3)]
    with pytest.raises(ValueError, match=key):
        functional_call(op, ps, gs, backend, **{key: value})
    assert all(torch.equal(p, torch.ones_like(p)) for p in ps)


def _step_and_expect(ps, opt, exc, match):
    snap = snapshot(ps, opt)
    with pytest.raises(exc, match=match):
        opt.step()
    assert_unchanged(ps, opt, snap)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "Ftrl"])  # Ftrl takes them, and has no weight_decay
def test_sparse_gradient_is_rejected_and_nothing_moves(name, backend):
    # Adam/AdamW refuse sparse grads; SGD and Adagrad take them, but not with weight_decay (as torch.optim).
    ps = params()
    opt = make(name, ps, backend, weight_decay=0.1)
    train(ps, opt, 2)
    set_grads(ps, 2)
    ps[3].grad = ps[3].grad.to_sparse()  # the last param: earlier ones must not have been stepped
    _step_and_expect(ps, opt, RuntimeError, "sparse")


@pytest.mark.parametrize("op", ["sgd", "adam", "adagrad", "ftrl", "lion"])
def test_functional_rejects_sparse_and_mismatched_grads(op, backend):
    ps = [torch.ones(4), torch.ones(3)]
    # sgd and adagrad take sparse grads, but not with weight_decay (as torch.optim); ftrl takes them (no
    # weight_decay: tests/test_sparse.py steps them)
    kw = {} if op == "ftrl" else dict(weight_decay=0.1)
    bad = [([torch.ones(4), torch.ones(4)], "does not match"),
           ([torch.ones(4), torch.ones(3, dtype=torch.float64)], "does not match"),
           ([torch.ones(4), torch.ones(1, 3)], "does not match"),
           ([torch.ones(4), None], "no gradient")]
    if op != "ftrl":
        bad.append(([torch.ones(4), torch.ones(3).to_sparse()], "sparse"))
    for gs, match in bad:
        with pytest.raises(RuntimeError, match=match):
            functional_call(op, ps, gs, backend, **kw)
        assert all(torch.equal(p, torch.ones_like(p)) for p in ps)


def test_integer_params_are_rejected_everywhere(backend):
    # Complex params are stepped (tests/test_complex.py); integer ones are not.
    z = torch.nn.Parameter(torch.zeros(3, dtype=torch.int64), requires_grad=False)
    for name in NAMES:
        with pytest.raises(ValueError, match="floating-point or complex"):
            getattr(fusedreg, name)([z])
        opt = getattr(fusedreg, name)(params(), backend=backend)
        with pytest.raises(ValueError, match="floating-point or complex"):
            opt.add_param_group(dict(params=[z]))
        assert len(opt.param_groups) == 1
    ps = [torch.ones(3), torch.zeros(3, dtype=torch.int64)]
    with pytest.raises(RuntimeError, match="floating-point"):
        functional_call("adam", ps, [torch.ones(3), torch.ones(3, dtype=torch.int64)], backend)
    assert torch.equal(ps[0], torch.ones(3))


@pytest.mark.parametrize("name", NAMES)
def test_several_dtypes_in_one_group_step_as_separate_groups(name, backend):
    """A group may mix dtypes: fusedreg.functional runs one kernel per dtype, bitwise as if they were apart."""
    dtypes = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
    mixed = [params(dt, seed=i, shapes=((7, 5),))[0] for i, dt in enumerate(dtypes)]
    apart = [torch.nn.Parameter(p.detach().clone()) for p in mixed]
    opt = make(name, mixed, backend)
    opts = [make(name, [p], backend) for p in apart]
    for k in range(3):
        set_grads(mixed, k)
        set_grads(apart, k)
        opt.step()
        for o in opts:
            o.step()
    for a, b in zip(mixed, apart):
        assert torch.equal(raw(a), raw(b)), a.dtype


@pytest.mark.parametrize("name", NAMES)
def test_a_meta_param_among_cpu_params_is_rejected_clearly(name, backend):
    ps = params()
    meta = torch.nn.Parameter(torch.empty(4, device="meta"))
    meta.grad = torch.empty(4, device="meta")
    opt = make(name, ps + [meta], backend)
    set_grads(ps, 0)
    snap = snapshot(ps, opt)
    with pytest.raises(RuntimeError, match="meta"):
        opt.step()
    assert_unchanged(ps, opt, snap)


def test_functional_state_on_another_device_or_of_another_shape_or_dtype_is_rejected(backend):
    ps, gs = [torch.ones(4), torch.ones(3)], [torch.ones(4), torch.ones(3)]
    steps = [torch.zeros(()), torch.zeros(())]
    good = [torch.zeros(4), torch.zeros(3)]
    cases = [([torch.zeros(4), torch.zeros(3, device="meta")], "meta"),
             ([torch.zeros(4), torch.zeros(1)], r"\(1,\).*shape \(3,\)"),
             ([torch.zeros(4), torch.zeros(3, dtype=torch.float64)], "float64"),
             ([torch.zeros(4), torch.zeros(3, dtype=torch.bfloat16)], "bfloat16")]
    for bad, match in cases:
        with pytest.raises(RuntimeError, match=match):
            F.adam(ps, gs, bad, [x.clone() for x in good], [], [s.clone() for s in steps], lr=0.1, backend=backend)
        with pytest.raises(RuntimeError, match=match):
            F.adam(ps, gs, [x.clone() for x in good], bad, [], [s.clone() for s in steps], lr=0.1, backend=backend)
        assert all(torch.equal(p, torch.ones_like(p)) for p in ps)
    with pytest.raises(RuntimeError, match="state_steps.*one-element float32"):
        F.adagrad(ps, gs, good, [torch.zeros(()), torch.zeros((), dtype=torch.int64)], lr=0.1, backend=backend)
    with pytest.raises(RuntimeError, match="grad_scale.*one-element"):
        F.sgd(ps, gs, [], lr=0.1, grad_scale=torch.ones(2), backend=backend)
    assert all(torch.equal(p, torch.ones_like(p)) for p in ps)
    assert all(torch.equal(s, torch.zeros(())) for s in steps)


def _views():
    """Non-contiguous params of several kinds: transposed, strided slice, channels_last, a column."""
    g = torch.Generator().manual_seed(3)
    base = [torch.randn(9, 7, generator=g), torch.randn(40, generator=g), torch.randn(2, 3, 5, 4, generator=g),
            torch.randn(6, 5, generator=g)]
    return [base[0].t(), base[1][1::3], base[2].to(memory_format=torch.channels_last), base[3][:, 2]]


@pytest.mark.parametrize("op,kw", [("sgd", dict(momentum=0.0)), ("sgd", dict(momentum=0.9, nesterov=True)),
                                   ("adam", dict()), ("adam", dict(amsgrad=True)), ("adagrad", dict())],
                         ids=["sgd", "sgd-momentum", "adam", "adam-amsgrad", "adagrad"])
def test_non_contiguous_params_step_exactly_like_contiguous_ones(op, kw, backend):
    views = _views()
    assert not any(v.is_contiguous() for v in views)
    dense = [v.contiguous() for v in views]
    gs = [torch.sin(3 * v) for v in dense]
    gs_nc = [g.clone().t().contiguous().t() if g.dim() == 2 else g.clone() for g in gs]
    kw = dict(l1=0.05, weight_decay=0.01, **kw)
    s1 = functional_call(op, views, gs_nc, backend, **kw)
    s2 = functional_call(op, dense, gs, backend, **kw)
    for a, b in zip(views, dense):
        assert not torch.equal(b, b.clone().zero_())
        assert torch.equal(a, b)
    for key in s1:
        for a, b in zip(s1[key], s2[key]):
            assert torch.equal(a, b), key


@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_params_in_an_optimizer(name, backend):
    views = [torch.nn.Parameter(v.clone()) for v in _views()[:3]]
    views[0] = torch.nn.Parameter(torch.randn(9, 7).t())
    dense = [torch.nn.Parameter(v.detach().contiguous()) for v in views]
    o1, o2 = make(name, views, backend), make(name, dense, backend)
    for k in range(3):
        set_grads(views, k)
        set_grads(dense, k)
        o1.step()
        o2.step()
    assert all(torch.equal(a, b) for a, b in zip(views, dense))


@pytest.mark.parametrize("op", ["sgd", "adam", "adagrad", "ftrl", "lion"])
def test_overlapping_or_aliased_params_are_rejected(op, backend):
    ok = torch.ones(3)
    expanded = torch.zeros(1).expand(4)        # four elements, one memory location
    strided0 = torch.zeros(3, 1).expand(3, 5)  # stride 0 along dim 1
    for ps, gs, match in (([ok, expanded], [torch.ones(3), torch.ones(4)], "overlaps itself"),
                          ([ok, strided0], [torch.ones(3), torch.ones(3, 5)], "overlaps itself"),
                          ([ok, ok], [torch.ones(3), torch.ones(3)], "shares its memory")):
        with pytest.raises(RuntimeError, match=match):
            functional_call(op, ps, gs, backend)
        assert torch.equal(ok, torch.ones(3)) and not expanded.any() and not strided0.any()
    # A state tensor that is the param itself.
    p = torch.ones(3)
    with pytest.raises(RuntimeError, match="shares its memory"):
        F.adagrad([p], [torch.ones(3)], [p], [torch.zeros(())], lr=0.1, backend=backend)
    assert torch.equal(p, torch.ones(3))


# The native fast path of check_tensors (fusedreg._C.lists_ok) may only vouch for lists the Python walk accepts:
# drawn calls (Adam-like lists, SGD's momentum buffers that may be None) with 0-3 of these faults each.
_FAULTS = ("int_param", "complex_param", "meta_param", "sparse_param", "grad_none", "grad_not_tensor",
           "grad_shape", "grad_dtype", "grad_sparse", "expanded_param", "expanded_state", "param_twice",
           "state_is_param", "state_shared", "step_shared", "state_dtype", "state_shape", "state_none",
           "step_dtype", "step_two", "short_list", "transposed", "empty_twice", "parameter")


def _drawn_call(data, faults):
    n = data.draw(st.integers(1, 4))
    dtypes = [data.draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
              for _ in range(n)]
    shapes = [data.draw(st.sampled_from([(5,), (3, 4), (), (0,), (2, 3, 2)])) for _ in range(n)]
    ps = [torch.randn(s, dtype=d) for s, d in zip(shapes, dtypes)]
    sgd = data.draw(st.booleans())
    state = lambda p: torch.zeros(p.shape, dtype=torch.float64 if p.dtype == torch.float64 else torch.float32)
    lists = dict(grads=[torch.randn_like(p) for p in ps])
    if sgd:
        lists["momentum_buffers"] = [state(p) if data.draw(st.booleans()) else None for p in ps]
    else:
        lists.update(exp_avgs=[state(p) for p in ps], exp_avg_sqs=[state(p) for p in ps],
                     state_steps=[torch.zeros(()) for _ in ps])
    missing_ok = ("momentum_buffers",) if sgd else ()
    i = data.draw(st.integers(0, n - 1))
    j = (i + 1) % n
    key = "momentum_buffers" if sgd else data.draw(st.sampled_from(["exp_avgs", "exp_avg_sqs"]))

    def four(i):  # entry i as four elements, so that an expand()ed view of it is a real overlap
        ps[i] = torch.randn(4, dtype=dtypes[i])
        lists["grads"][i] = torch.randn(4, dtype=ps[i].dtype)
        for name, ts in lists.items():
            if name not in ("grads", "state_steps") and ts[i] is not None:
                ts[i] = state(ps[i])

    for fault in faults:
        s = lists[key]
        if fault == "int_param":
            ps[i] = torch.ones(ps[i].shape, dtype=torch.int64)
        elif fault == "complex_param":
            ps[i] = torch.ones(ps[i].shape, dtype=torch.complex64)
        elif fault == "meta_param":
            ps[i] = torch.empty(ps[i].shape, dtype=ps[i].dtype, device="meta")
        elif fault == "sparse_param":
            ps[i] = torch.ones(2, 2).to_sparse()
        elif fault == "grad_none":
            lists["grads"][i] = None
        elif fault == "grad_not_tensor":
            lists["grads"][i] = 1.0
        elif fault == "grad_shape":
            lists["grads"][i] = torch.zeros(7)
        elif fault == "grad_dtype":
            other = torch.float64 if dtypes[i] != torch.float64 else torch.float32
            lists["grads"][i] = torch.randn(ps[i].shape, dtype=other)
        elif fault == "grad_sparse":
            lists["grads"][i] = torch.zeros(ps[i].shape).to_sparse() if ps[i].dim() else None
        elif fault == "expanded_param":
            four(i)
            ps[i] = torch.zeros(1, dtype=ps[i].dtype).expand(4)
        elif fault == "expanded_state":
            four(i)
            s[i] = state(ps[i])[:1].expand(4)
        elif fault == "param_twice":
            ps[j] = ps[i]
        elif fault == "state_is_param":
            s[i] = ps[i]
        elif fault == "state_shared":
            s[j] = s[i]
        elif fault == "step_shared" and not sgd:
            lists["state_steps"][j] = lists["state_steps"][i]
        elif fault == "state_dtype" and s[i] is not None:
            s[i] = s[i].to(torch.float16)
        elif fault == "state_shape":
            s[i] = torch.zeros(6)
        elif fault == "state_none":
            s[i] = None
        elif fault == "step_dtype" and not sgd:
            lists["state_steps"][i] = torch.zeros((), dtype=torch.float64)
        elif fault == "step_two" and not sgd:
            lists["state_steps"][i] = torch.zeros(2)
        elif fault == "transposed" and ps[i].dim() == 2:  # allowed: non-contiguous tensors are fine
            ps[i] = ps[i].t()
            lists["grads"][i] = torch.zeros(ps[i].shape[::-1], dtype=ps[i].dtype).t()
            if s[i] is not None and s[i].shape != ps[i].shape:
                s[i] = torch.zeros(ps[i].shape[::-1], dtype=s[i].dtype).t()
        elif fault == "empty_twice":  # allowed: empty tensors have no memory to share
            ps[i] = ps[j] = torch.zeros(0)
            lists["grads"][i] = lists["grads"][j] = torch.zeros(0)
            for name, ts in lists.items():
                if name not in ("grads", "state_steps") and len(ts) == n:
                    ts[i], ts[j] = torch.zeros(0), torch.zeros(0)
        elif fault == "parameter":  # allowed: a Parameter is a plain tensor here
            ps[i] = torch.nn.Parameter(ps[i], requires_grad=ps[i].is_floating_point())
    if "short_list" in faults:
        lists[key].pop()
    return ps, missing_ok, lists


# Every fault gets its own examples (the simplest first: that fault alone), with up to two more drawn beside it.
@pytest.mark.parametrize("fault", (None,) + _FAULTS)
@settings(deadline=None, derandomize=True, database=None, max_examples=40,
          suppress_health_check=list(HealthCheck))
@given(data=st.data(), more=st.lists(st.sampled_from(_FAULTS), max_size=2))
def test_the_native_check_vouches_only_for_lists_the_python_walk_accepts(fault, data, more):
    if backends.lists_ok() is None:
        pytest.skip("needs the C++ extension")  # CI builds it: this runs there
    faults = ([fault] if fault else []) + more
    ps, missing_ok, lists = _drawn_call(data, faults)
    states = [(name, ts) for name, ts in lists.items() if name != "grads"]
    native = F._vouched(ps, missing_ok, lists, states)
    try:
        F._walk(ps, missing_ok, lists, states)
        walked = True
    except (RuntimeError, ValueError, TypeError):
        walked = False
    assert walked or not native, f"the native check passed what the walk rejects: {faults}"
    if not faults:
        assert native, "the native check refused a plain valid call (the fast path would never be taken)"


def test_a_valid_optimizer_step_never_takes_the_python_walk(monkeypatch):
    if backends.lists_ok() is None:
        pytest.skip("needs the C++ extension")
    def walk(*args):
        raise AssertionError("the Python walk ran on valid lists")
    monkeypatch.setattr(F, "_walk", walk)
    for name in NAMES:
        ps = params() + params(torch.float64, shapes=((4, 3),)) + [torch.nn.Parameter(torch.randn(6, 5).t())]
        opt = make(name, ps, "cpp")
        for k in range(2):
            set_grads(ps, k)
            opt.step()


# The kernel-level tests below: momentum on, AdamW's decay, so that lr reaches every term of the update.
KERNEL_HP = {"sgd_": dict(momentum=0.9), "adam_": dict(decoupled=True), "adagrad_": dict(), "ftrl_": dict(),
             "lion_": dict(), "muon_": dict(lr_ratio=1.5)}
# muon_momentum_ has neither lr nor group lasso (its kernels run before Muon's orthogonalization)
PENALTY_OPS = [op for op in OPS if "group_dim" in fusedreg._ops.defaults(op)]


@pytest.mark.parametrize("op", PENALTY_OPS)
def test_kernel_rejects_a_bad_group_dim_before_anything_moves(op, backend):
    # The kernels themselves (below fusedreg.functional's checks): Adam/Adagrad must not advance their step
    # counters, and nothing may be written, before the group arguments are checked.
    case = build(op, [(6, 5), (7,)], init={"state_steps": 0.0}, **KERNEL_HP[op], l1=0.01, group_l1=0.5,
                 group_dim=2)
    before = case.clone()
    with pytest.raises(RuntimeError, match="group_dim must be 0"):
        case.call(fusedreg.backends.kernel(backend, op))
    unchanged(case, before)


@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("op", PENALTY_OPS)
def test_kernel_lr_tensor_replaces_the_float_lr(op, lr_dtype, backend):
    # The kernels take lr as a one-element tensor too (read on the device by the CUDA kernels: no host sync, so
    # a step can be captured in a CUDA graph); it must step exactly like the float it holds, group lasso included.
    lr = 0.01 if lr_dtype == torch.float64 else float(torch.tensor(0.01, dtype=lr_dtype))
    hp = dict(KERNEL_HP[op], l1=0.3, l2=0.01, **({"lr_decay": 0.1} if op == "adagrad_" else {}),
              # FTRL has no weight decay: its shrinkage and beta carry lr instead
              **(dict(l2_shrinkage=0.1, beta=0.5) if op == "ftrl_" else dict(weight_decay=1e-2)),
              group_l1=2.0, group_dim=1)

    def call(lr_float, lr_tensor):
        case = build(op, [(6, 5), (7,)], gen=torch.Generator().manual_seed(7), **hp)
        case.call(fusedreg.backends.kernel(backend, op), lr=lr_float, lr_tensor=lr_tensor)
        return case

    by_float = call(lr, None)
    by_tensor = call(float("nan"), torch.tensor(lr, dtype=lr_dtype))
    assert any(not torch.equal(a, b) for a, b in zip(call(2 * lr, None).params, by_float.params))  # lr matters
    unchanged(by_tensor, by_float)


def test_unknown_backend_fails_before_anything_moves_functional():
    for op in ("sgd", "adam", "adagrad", "ftrl", "lion"):
        ps = [torch.ones(3)]
        with pytest.raises(ValueError, match="'tpu'.*auto.*cuda.*triton.*cpp.*torch"):
            functional_call(op, ps, [torch.ones(3)], "tpu")
        assert torch.equal(ps[0], torch.ones(3))


@pytest.mark.parametrize("name", NAMES)
def test_unknown_backend_fails_before_anything_moves(name, monkeypatch):
    ps = params()
    with pytest.raises(ValueError, match="'tpu'.*choose one of"):
        make(name, ps, "tpu")  # a bad name fails at construction
    # A name that only turns up at step time (FUSEDREG_BACKEND under "auto") fails before any state is created.
    monkeypatch.setenv("FUSEDREG_BACKEND", "tpu")
    opt = make(name, ps, "auto")
    set_grads(ps, 0)
    _step_and_expect(ps, opt, ValueError, "'tpu'.*choose one of")


@pytest.mark.parametrize("name", NAMES)
def test_unavailable_backend_fails_before_anything_moves(name):
    ps = params()
    opt = make(name, ps, "cuda")  # a known name that cannot run CPU tensors
    set_grads(ps, 0)
    _step_and_expect(ps, opt, RuntimeError, "'cuda'")
    assert len(opt.state) == (len(ps) if name == "Adagrad" else 0)  # Adagrad's state is made at construction


# ---- state_dicts that do not fit -----------------------------------------------------------------------------

def _trained(name, backend, steps=2):
    ps = params()
    opt = make(name, ps, backend)
    train(ps, opt, steps)
    return ps, opt


def _load_then_step(ps, opt, sd, match):
    """The bad state_dict must raise a clear error (ValueError/RuntimeError naming the problem) at load or at
    the next step; whichever raises, params and the optimizer's state are as before that call."""
    set_grads(ps, 7)
    snap = snapshot(ps, opt)
    try:
        opt.load_state_dict(sd)
    except (ValueError, RuntimeError) as e:
        assert __import__("re").search(match, str(e)), str(e)
        assert_unchanged(ps, opt, snap)
        return
    snap = snapshot(ps, opt)
    with pytest.raises((ValueError, RuntimeError), match=match):
        opt.step()
    assert_unchanged(ps, opt, snap)


STATE_KEYS = {"SGD": ["momentum_buffer"], "Adam": ["step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
              "AdamW": ["step", "exp_avg", "exp_avg_sq"], "Adagrad": ["step", "sum"],
              "Ftrl": ["accumulator", "linear"], "Lion": ["exp_avg"]}
MISSING = [(n, k) for n in STATE_KEYS for k in STATE_KEYS[n]]


@pytest.mark.parametrize("name,key", MISSING,
                         ids=[f"{n}-{k}" for n, k in MISSING])
def test_state_dict_with_a_missing_key_is_rejected(name, key, backend):
    ps, opt = _trained(name, backend)
    sd = copy.deepcopy(opt.state_dict())
    del sd["state"][1][key]
    _load_then_step(ps, opt, sd, key)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_with_a_wrong_shape_is_rejected(name, backend):
    ps, opt = _trained(name, backend)
    sd = copy.deepcopy(opt.state_dict())
    key = STATE_KEYS[name][-1]
    sd["state"][1][key] = sd["state"][1][key][:3].clone()  # param 1 has 16 elements
    _load_then_step(ps, opt, sd, r"shape|\(3,\)")


@pytest.mark.parametrize("name", NAMES)
def test_wrong_shape_in_a_later_group_moves_no_earlier_group(name, backend):
    ps = params()
    opt = getattr(fusedreg, name)([dict(params=ps[:2]), dict(params=ps[2:])], **CONFIGS[name], backend=backend)
    train(ps, opt, 2)
    sd = copy.deepcopy(opt.state_dict())
    key = STATE_KEYS[name][-1]
    sd["state"][3][key] = sd["state"][3][key][:1].clone()
    _load_then_step(ps, opt, sd, r"shape|\(1,\)")


@pytest.mark.parametrize("name", NAMES)
def test_bad_state_tensor_in_a_later_group_moves_no_earlier_group_at_step(name, backend):
    """State edited in place (no load_state_dict): validated for every group before any group steps."""
    ps = params()
    opt = getattr(fusedreg, name)([dict(params=ps[:2]), dict(params=ps[2:])], **CONFIGS[name], backend=backend)
    train(ps, opt, 2)
    set_grads(ps, 2)
    key = STATE_KEYS[name][-1]
    for bad in (opt.state[ps[3]][key][:1].clone(), opt.state[ps[3]][key].double()):
        opt.state[ps[3]][key] = bad
        _step_and_expect(ps, opt, RuntimeError, key)  # check_tensors names the state list


OTHER = [("SGD", "Adam"), ("Adam", "SGD"), ("Adagrad", "Adam"), ("Adam", "Adagrad"), ("SGD", "Adagrad"),
         ("Adagrad", "SGD"), ("Ftrl", "Adagrad"), ("Adagrad", "Ftrl"), ("Ftrl", "Adam"), ("Lion", "Adam"),
         ("Adam", "Lion"), ("Lion", "SGD")]


@pytest.mark.parametrize("src,dst", OTHER,
                         ids=[f"{s}-into-{d}" for s, d in OTHER])
def test_another_optimizers_state_dict_is_rejected(src, dst, backend):
    ps, src_opt = _trained(src, backend)
    dst_opt = make(dst, ps, backend)
    train(ps, dst_opt, 1, start=5)
    sd = copy.deepcopy(src_opt.state_dict())
    for g in sd["param_groups"]:  # hyperparameters of the destination, state of the source
        g.update({k: v for k, v in dst_opt.param_groups[0].items() if k != "params"})
    _load_then_step(ps, dst_opt, sd, "|".join(STATE_KEYS[src] + STATE_KEYS[dst]))


def test_state_dict_with_another_group_layout_is_rejected(backend):
    ps, opt = _trained("Adam", backend)
    other = fusedreg.Adam([dict(params=ps[:2]), dict(params=ps[2:])], lr=0.01, backend=backend)
    _load_then_step(ps, opt, other.state_dict(), "group")


# ------------------------------------------------------------------------------------------------------------
# Non-finite gradients

@pytest.mark.parametrize("name", TORCH_NAMES)
def test_nonfinite_gradients_propagate_like_torch_optim(name, backend):
    """Without GradScaler nothing is skipped: NaN/inf gradients reach params and state, exactly where
    torch.optim's do (documented in fusedreg.functional)."""
    cfg = {k: v for k, v in CONFIGS[name].items() if k not in ("l1", "l2")}
    ours, theirs = params(torch.float64), params(torch.float64)
    ref = getattr(torch.optim, name)(theirs, **cfg)
    opt = getattr(fusedreg, name)(ours, **cfg, backend=backend)
    for k in range(3):
        set_grads(ours, k)
        set_grads(theirs, k)
        if k == 1:
            for ps in (ours, theirs):
                ps[0].grad[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
                ps[1].grad[5] = float("nan")
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        assert torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(torch.isinf(a), torch.isinf(b))
        fin = torch.isfinite(b)
        assert rel_err(a[fin], b[fin]) <= TRAJECTORY[torch.float64]
    assert torch.isnan(ours[0][0, :3]).any() and not torch.isfinite(ours[0][0, :3]).any()


# Lion steps by sign(...), which is 0 for NaN (torch.sign's, as lion-pytorch): test_lion_nonfinite_gradients_...
@pytest.mark.parametrize("name", [n for n in NAMES if n != "Lion"])
def test_the_prox_keeps_nan_as_nan(name, backend):
    """A NaN is never soft-thresholded, L0-cut or clamped (nonneg) to an exact zero; an inf stays non-finite
    through the thresholds (nonneg turns -inf into 0, as max(-inf, 0) should)."""
    for nonneg in (False, True):
        ps = params()
        opt = make(name, ps, backend, l1=1e3, l0=1e3, nonneg=nonneg)
        set_grads(ps, 0)
        ps[1].grad[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0])
        opt.step()
        assert torch.isnan(ps[1][0])
        if not nonneg:
            assert not torch.isfinite(ps[1][:3]).any()
        assert (ps[1][3:] == 0).all()  # the huge penalties zero every finite element


def test_lion_nonfinite_gradients_follow_lion_pytorch(backend):
    """Without GradScaler, NaN/inf gradients reach params and state exactly where lion-pytorch's do: the momentum
    takes them, and the param moves by lr*sign(...) only, sign(NaN) being 0 (torch.sign's)."""
    import lion_pytorch
    cfg = dict(lr=0.01, weight_decay=0.1)
    ours, theirs = params(torch.float64), params(torch.float64)
    ref = lion_pytorch.Lion(theirs, **cfg)
    opt = fusedreg.Lion(ours, **cfg, backend=backend)
    for k in range(3):
        for ps in (ours, theirs):
            set_grads(ps, k)
            if k == 1:
                ps[0].grad[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=torch.float64)
                ps[1].grad[5] = float("nan")
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        m_a, m_b = opt.state[a]["exp_avg"], ref.state[b]["exp_avg"]
        assert torch.equal(torch.isnan(m_a), torch.isnan(m_b)) and torch.equal(torch.isinf(m_a), torch.isinf(m_b))
        fin = torch.isfinite(m_b)
        assert rel_err(m_a[fin], m_b[fin]) <= TRAJECTORY[torch.float64]
        assert torch.isfinite(a).all() and rel_err(a, b) <= TRAJECTORY[torch.float64]
    assert torch.isnan(opt.state[ours[1]]["exp_avg"][5]) and torch.isnan(opt.state[ours[0]]["exp_avg"][0, 0])


@pytest.mark.parametrize("name", NAMES)
def test_gradscaler_skips_a_nonfinite_step_and_unscales_exactly(name, backend):
    ours = params()
    plain = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt, ref = make(name, ours, backend), make(name, plain, backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    scaler.scale(torch.ones(()))  # creates the scale, as scaling the first loss does
    for k in range(4):
        set_grads(plain, k)
        set_grads(ours, k)
        for p in ours:
            p.grad.mul_(scaler.get_scale())  # what scaler.scale(loss).backward() produces
        if k == 2:
            ours[2].grad[0, 0] = float("inf")
            snap, scale = snapshot(ours, opt), scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if k == 2:
            assert_unchanged(ours, opt, snap)  # skipped: params, moments and step counters untouched
            assert scaler.get_scale() == scale / 2
        else:
            ref.step()
        # Dividing by a power of two is exact, so the scaled run is bitwise the unscaled one.
        assert all(torch.equal(a, b) for a, b in zip(ours, plain)), k


# ------------------------------------------------------------------------------------------------------------
# 3. Checkpoint / resume in a fresh process, 4. determinism

RESUME_CONFIGS = [
    ("SGD", "float32", dict(lr=0.05, momentum=0.9, nesterov=True, l1=0.01, weight_decay=1e-3)),
    ("SGD", "float32", dict(lr=0.05, momentum=0.5, dampening=0.1, group_l1=0.05, l0=1e-4)),
    ("Adam", "float32", dict(lr=0.01, amsgrad=True, l1=0.01)),
    ("Adam", "bfloat16", dict(lr=0.01, l1=0.01, nonneg=True)),
    ("AdamW", "float32", dict(lr=0.01, weight_decay=0.1, l1=0.001)),
    ("AdamW", "float64", dict(lr=0.01, amsgrad=True, group_l1=0.01, group_dim=1)),
    ("Adagrad", "float32", dict(lr=0.05, lr_decay=0.01, l1=0.01, l2=0.01, initial_accumulator_value=0.1)),
    ("Ftrl", "float32", dict(lr=0.05, l1=0.01, l2=0.01, l2_shrinkage=0.01, beta=0.1)),
    ("Ftrl", "bfloat16", dict(lr=0.05, lr_power=-0.7, l1=0.01, l0=1e-4, nonneg=True)),
    ("Lion", "float32", dict(lr=0.01, weight_decay=0.1, l1=0.01, group_l1=0.05)),
    ("Lion", "bfloat16", dict(lr=0.01, betas=(0.8, 0.95), l1=0.01, nonneg=True)),
]

_RESUME = textwrap.dedent('''
    import sys, torch, fusedreg
    sys.path.insert(0, {tests!r})
    import test_reliability as R
    ckpt, out, backend = sys.argv[1], sys.argv[2], sys.argv[3]
    saved = torch.load(ckpt, weights_only=False)
    results = []
    for (name, dtype, cfg), state in zip(R.RESUME_CONFIGS, saved):
        ps = R.params(getattr(torch, dtype), seed=1)   # fresh weights, overwritten by the checkpoint
        with torch.no_grad():
            for p, w in zip(ps, state["params"]):
                p.copy_(w)
        opt = getattr(fusedreg, name)(ps, **cfg, backend=backend)
        opt.load_state_dict(state["opt"])
        R.train(ps, opt, 4, start=4)
        results.append([p.detach() for p in ps])
    torch.save(results, out)
''')


def test_checkpoint_resumed_in_a_fresh_process_continues_bitwise(backend, tmp_path):
    straight, saved = [], []
    for name, dtype, cfg in RESUME_CONFIGS:
        ps = params(getattr(torch, dtype))
        opt = getattr(fusedreg, name)(ps, **cfg, backend=backend)
        train(ps, opt, 4)
        saved.append(copy.deepcopy(dict(params=[p.detach() for p in ps], opt=opt.state_dict())))
        train(ps, opt, 4, start=4)
        straight.append([p.detach().clone() for p in ps])
    ckpt, out = tmp_path / "ckpt.pt", tmp_path / "out.pt"
    torch.save(saved, ckpt)
    code = _RESUME.format(tests=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt), str(out), backend], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = torch.load(out)
    for (name, dtype, _), a, b in zip(RESUME_CONFIGS, straight, resumed):
        for i, (x, y) in enumerate(zip(a, b)):
            assert x.dtype == y.dtype and torch.equal(raw(x), raw(y)), f"{name} {dtype} param {i}"


def _run_twice_config(backend, threads=None):
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        out = []
        for name, dtype, cfg in RESUME_CONFIGS:
            ps = params(getattr(torch, dtype), shapes=((300, 700), (129,), (5, 3)))
            opt = getattr(fusedreg, name)(ps, **cfg, backend=backend)
            train(ps, opt, 3)
            out.append([raw(p) for p in ps] + [raw(v) for p in ps for v in opt.state[p].values()
                                               if torch.is_tensor(v)])
        return out
    finally:
        torch.set_num_threads(old)


def test_two_identical_runs_are_bitwise_identical(backend):
    # 210,000-element params: several threads and several 64-element units per thread on the native backend.
    a, b = _run_twice_config(backend), _run_twice_config(backend)
    for (name, dtype, _), x, y in zip(RESUME_CONFIGS, a, b):
        assert all(torch.equal(u, v) for u, v in zip(x, y)), f"{name} {dtype}"


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="needs two threads")
def test_results_do_not_depend_on_the_thread_count(backend):
    """Elementwise kernels: every element runs the same code whatever the split, so 1 thread == n threads."""
    a, b = _run_twice_config(backend, threads=1), _run_twice_config(backend, threads=torch.get_num_threads())
    for (name, dtype, _), x, y in zip(RESUME_CONFIGS, a, b):
        assert all(torch.equal(u, v) for u, v in zip(x, y)), f"{name} {dtype}"


# ------------------------------------------------------------------------------------------------------------
# 5. The extension missing or failing to load

_NO_EXT = textwrap.dedent('''
    import importlib.abc, json, sys, warnings
    MODE = sys.argv[1]

    class Broken(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "fusedreg._C":
                raise ImportError("_C.so: undefined symbol: _ZN5fused4fakeEv")
            return None

    if MODE == "broken":
        sys.meta_path.insert(0, Broken())
    else:
        sys.modules["fusedreg._C"] = None  # what an absent build looks like to the import system
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import torch, fusedreg
        from fusedreg import backends
        avail, why = backends.available(), backends.explain()
        auto = backends.resolve("auto", torch.device("cpu"))
        try:
            backends.resolve("cpp", torch.device("cpu"))
            cpp_error = ""
        except RuntimeError as e:
            cpp_error = str(e)
        p = torch.nn.Parameter(torch.tensor([3.0, -0.5, 0.25, -2.0]))
        q = torch.nn.Parameter(p.detach().clone())
        for param, backend in ((p, "auto"), (q, "torch")):
            opt = fusedreg.Adam([param], lr=0.1, l1=1.0, backend=backend)
            for k in range(3):
                param.grad = torch.sin(param.detach()) + k
                opt.step()
        backends.explain(); backends.available()
    print(json.dumps(dict(warnings=[str(w.message) for w in caught if "fusedreg" in str(w.message)],
                          available=avail, explain=why, auto=auto, cpp_error=cpp_error,
                          same=bool(torch.equal(p, q)))))
''')


@pytest.mark.parametrize("mode,cause", [("broken", "undefined symbol: _ZN5fused4fakeEv"),
                                        ("missing", "fusedreg._C")])
def test_unloadable_extension_falls_back_with_one_warning_and_explains_why(mode, cause):
    env = {k: v for k, v in os.environ.items() if k not in ("FUSEDREG_NO_EXT", "FUSEDREG_BACKEND")}
    proc = subprocess.run([sys.executable, "-c", _NO_EXT, mode], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(r["warnings"]) == 1, r["warnings"]
    assert cause in r["warnings"][0] and "reference" in r["warnings"][0]
    assert "cpp" not in r["available"] and "torch" in r["available"]
    assert cause in r["explain"]["cpp"] and cause in r["explain"]["cuda"]
    assert r["auto"] == "torch"
    assert cause in r["cpp_error"]
    assert r["same"]


# ------------------------------------------------------------------------------------------------------------
# Muon: 2-D params only, so its own params and cases (bad values at the step, state, sparse and complex grads)

MUON_SHAPES = ((16, 6), (6, 16), (3, 16), (16, 3))
MUON_HYPER = ["lr", "momentum", "weight_decay", "eps", "l1", "l0", "group_l1"]


def muon_trained(backend, steps=2, **kw):
    ps = params(shapes=MUON_SHAPES)
    opt = fusedreg.Muon([dict(params=ps[:2]), dict(params=ps[2:])], lr=0.02, l1=0.01, group_l1=0.01, **kw,
                        backend=backend)
    train(ps, opt, steps)
    set_grads(ps, steps)
    return ps, opt


@pytest.mark.parametrize("key", MUON_HYPER)
def test_muon_hyperparameter_edited_to_a_bad_value_fails_at_step_before_any_group_moves(key, backend):
    ps, opt = muon_trained(backend)
    snap = snapshot(ps, opt)
    group = opt.param_groups[1]
    saved = copy.deepcopy({k: v for k, v in group.items() if k != "params"})
    for value in (-1.0, float("nan")):
        group[key] = value
        with pytest.raises(ValueError, match=key):
            opt.step()
        assert_unchanged(ps, opt, snap)
    for key, value, match in (("l1_mode", "prox", "prox"), ("ns_steps", 100, "steps"),
                              ("ns_coefficients", (1.0,), "3 values"), ("adjust_lr_fn", "x", "Adjust")):
        group.update(saved)
        group[key] = value
        with pytest.raises(ValueError, match=match):
            opt.step()
        assert_unchanged(ps, opt, snap)


def test_muon_sparse_or_complex_grads_and_bad_state_are_refused_before_anything_moves(backend):
    ps, opt = muon_trained(backend)
    ps[3].grad = ps[3].grad.to_sparse()  # the last param: earlier ones must not have been stepped
    _step_and_expect(ps, opt, RuntimeError, "Muon does not support sparse gradients")
    set_grads(ps, 2)
    opt.state[ps[3]]["momentum_buffer"] = opt.state[ps[3]]["momentum_buffer"].double()
    _step_and_expect(ps, opt, RuntimeError, "momentum_buffer")
    z = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.complex64))
    z.grad = torch.randn_like(z)
    opt = fusedreg.Muon([ps[0], z], backend=backend)
    set_grads(ps[:1], 0)
    _step_and_expect([ps[0], z], opt, RuntimeError, "Muon does not support complex parameters")


def test_muon_state_dict_of_another_optimizer_or_shape_is_rejected(backend):
    ps, opt = muon_trained(backend)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][1]["momentum_buffer"] = sd["state"][1]["momentum_buffer"][:3].clone()
    _load_then_step(ps, opt, sd, r"shape|\(3, 16\)")
    ps2, sgd = muon_trained(backend)[0], None
    sgd = fusedreg.AdamW([dict(params=ps2[:2]), dict(params=ps2[2:])], backend=backend)
    train(ps2, sgd, 2)
    sd = copy.deepcopy(sgd.state_dict())
    for g in sd["param_groups"]:
        g.update({k: v for k, v in opt.param_groups[0].items() if k != "params"})
    _load_then_step(ps, opt, sd, "exp_avg|momentum_buffer|step")
