"""torch's own optimizer test inputs (`optim_db` from torch.testing._internal.common_optimizers, in the installed
wheel) run through fusedreg's classes on every CPU backend, each compared with torch.optim (foreach/fused off):
the error inputs, every optim_input's trajectory and state, complex params, sparse gradients, state_dict both
ways, hooks, deepcopy and pickle, steps without grads, and GradScaler's found_inf. The checks are the ones of
upstream's TestOptimRenewed that a user switching from torch.optim can hit, written here against torch.optim
itself as the oracle."""
import copy
import functools
import inspect
import io
import pickle
import re
import warnings

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import fusedreg
from tolerances import TRAJECTORY, rel_err

common_optimizers = pytest.importorskip("torch.testing._internal.common_optimizers")  # needs expecttest
OptimizerErrorEnum = common_optimizers.OptimizerErrorEnum
# Every class of ours that torch's table has (an optimizer torch lacks has no entry and no torch.optim oracle).
INFOS = {info.optim_cls.__name__: info for info in common_optimizers.optim_db
         if info.optim_cls.__name__ in fusedreg.optim.__all__}
NAMES = list(INFOS)

def ours(name, backend):
    return functools.partial(getattr(fusedreg, name), backend=backend)


def theirs(name):
    cls = INFOS[name].optim_cls
    # torch.optim.Muon has one implementation and no foreach keyword
    return functools.partial(cls, **({"foreach": False} if "foreach" in inspect.signature(cls).parameters else {}))


def inputs(name):
    """Every optim_input of torch's table for this optimizer (fresh kwargs: tensor lrs get mutated)."""
    return INFOS[name].optim_inputs_func(device="cpu")


def close(a, b, dtype):
    """Params or state of ours (a) against torch.optim's (b), at the trajectory tolerance of dtype."""
    if torch.is_tensor(b) and b.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    if not torch.is_tensor(b):
        return a == b
    return a.shape == b.shape and rel_err(a, b) <= TRAJECTORY[dtype]


def assert_same_state_dict(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i, st in b["state"].items():
        assert a["state"][i].keys() == st.keys()
        for key, t in st.items():
            assert torch.equal(torch.as_tensor(a["state"][i][key]), torch.as_tensor(t)), (i, key)


def assert_state_close(opt_a, pa, opt_b, pb, dtype):
    for p, q in zip(pa, pb):
        assert set(opt_a.state[p]) == set(opt_b.state[q]), (dict(opt_a.state[p]).keys(), opt_b.state[q].keys())
        for key, t in opt_b.state[q].items():
            assert close(opt_a.state[p][key], t, dtype), key


# ---------------------------------------------------------------------------------------------------------------
# Errors: every error input of torch's table raises (or warns) the same type with a matching message.

@pytest.mark.parametrize("name", NAMES)
def test_error_inputs_raise_as_torch_optim_does(name, backend):
    cls = ours(name, backend)
    for err in INFOS[name].optim_error_inputs_func(device="cpu", dtype=torch.float32):
        args = err.optimizer_error_input
        where = f"{args.desc!r}: {err.error_type.__name__} /{err.error_regex}/"
        if err.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
            run = lambda: cls(args.params, **args.kwargs)
        else:
            run = lambda: cls(args.params, **args.kwargs).step()
        if issubclass(err.error_type, Warning):
            with pytest.warns(err.error_type, match=err.error_regex):
                run()
        else:
            with pytest.raises(err.error_type, match=err.error_regex) as info:
                run()
            assert type(info.value) is err.error_type or err.error_type is Exception, where


# ---------------------------------------------------------------------------------------------------------------
# Every optim_input: our trajectory and state against torch.optim's.

# The optimizers that take 2-D params only (torch.optim.Muon): their params are all matrices.
TWO_D = ("Muon",)


def make_params(dtype, seed=0, name=""):
    """What torch's tests step: a weight and a bias, a non-contiguous pair, a 0-dim and a zero-size param (for
    TWO_D: a weight, a (10, 1) bias, a non-contiguous tall and wide matrix and a zero-size one)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, dtype=dtype, generator=g)
    if name in TWO_D:
        return [r(10, 5), r(10, 1), r(10, 5, 2)[..., 0], r(4, 6).T, r(0, 3)]
    return [r(10, 5), r(10), r(10, 5, 2)[..., 0], r(10, 2)[..., 0], r(()), r(0, 3)]


def name_of(make):
    """The class name behind ours()/theirs()."""
    return make.func.__name__


def set_grads(ps, k, skip=()):
    g = torch.Generator().manual_seed(1000 + k)
    for i, p in enumerate(ps):
        p.grad = None if i in skip else torch.randn(p.shape, dtype=p.dtype, generator=g)


def scheduler_sets(name, backend):
    # Schedulers change group keys in Python, the same for every backend: Triton's interpreter (slow) skips them.
    return [None] + (list(INFOS[name].scheduler_inputs) if backend != "triton" else [])


def step_schedulers(scheds, loss=1.0):
    for s in scheds:
        if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
            s.step(loss)
        else:
            s.step()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", NAMES)
def test_every_optim_input_follows_torch_optim(name, dtype, backend):
    """7 steps per input and scheduler set: all grads None on step 3 (a no-op), the last param frozen from step
    5; params and every state tensor compared after each step."""
    for sched in scheduler_sets(name, backend):
        for a_in, b_in in zip(inputs(name), inputs(name)):
            pa, pb = make_params(dtype, name=name), make_params(dtype, name=name)
            a = ours(name, backend)(pa, **a_in.kwargs)
            b = theirs(name)(pb, **b_in.kwargs)
            sa = [c(a) for c in sched or ()]
            sb = [c(b) for c in sched or ()]
            for k in range(7):
                skip = range(len(pa)) if k == 3 else (1,) if k >= 5 else ()
                set_grads(pa, k, skip)
                set_grads(pb, k, skip)
                a.step()
                b.step()
                step_schedulers(sa)
                step_schedulers(sb)
                where = f"{a_in.desc}, schedulers {sched}, step {k}"
                # torch.optim.Muon keeps a tensor lr a tensor: it forms lr*ratio and 1 - lr*wd in the lr's float32
                # (ours in double, as for a float lr), an fp32 rounding apart
                tol = torch.float32 if name == "Muon" and torch.is_tensor(a_in.kwargs.get("lr")) else dtype
                for p, q in zip(pa, pb):
                    assert close(p, q, tol), where
                assert_state_close(a, pa, b, pb, tol)
            assert [g["lr"] for g in a.param_groups] == pytest.approx([float(g["lr"]) for g in b.param_groups])


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_and_closure_follow_torch_optim(name, backend):
    # Per-group lr and weight_decay (torch's param-group tests), with step(closure) returning the loss.
    x = torch.randn(5, dtype=torch.float64)
    models = []
    for make in (ours(name, backend), theirs(name)):
        w, b = [p.requires_grad_() for p in make_params(torch.float64, name=name)[:2]]
        opt = make([{"params": [w], "weight_decay": 0.1}, {"params": [b], "lr": 0.02}], lr=0.01)
        models.append((w, b, opt))
    for _ in range(5):
        losses = []
        for w, b, opt in models:
            def closure(w=w, b=b, opt=opt):
                opt.zero_grad()
                loss = (w.mv(x) + b).pow(2).sum()
                loss.backward()
                return loss
            losses.append(opt.step(closure).detach())
        assert close(losses[0], losses[1], torch.float64)
    for t, u in zip(models[0][:2], models[1][:2]):
        assert close(t.detach(), u.detach(), torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Complex params: our complex run equals our run on view_as_real copies (torch's own complex check) and torch.optim's
# complex run.

@pytest.mark.parametrize("name", [n for n in NAMES if INFOS[n].supports_complex])  # Muon: an error input
def test_complex_params_follow_their_real_view_and_torch_optim(name, backend):
    all_inputs = common_optimizers._get_optim_inputs_including_global_cliquey_kwargs(
        "cpu", torch.complex64, INFOS[name], skip=("differentiable",))
    for optim_input in all_inputs:
        g = torch.Generator().manual_seed(0)
        zs = [torch.randn(10, 5, dtype=torch.complex64, generator=g),
              torch.randn(10, dtype=torch.complex64, generator=g),
              torch.randn(10, 5, generator=g)]  # the last one real: complex and real params mixed
        rs = [torch.view_as_real(z).clone() if z.is_complex() else z.clone() for z in zs]
        ts = [z.clone() for z in zs]
        kw = {k: v for k, v in optim_input.kwargs.items() if k not in ("foreach", "fused")}
        oz = ours(name, backend)(zs, **copy.deepcopy(optim_input.kwargs))
        orl = ours(name, backend)(rs, **copy.deepcopy(optim_input.kwargs))
        ot = theirs(name)(ts, **copy.deepcopy(kw))
        for k in range(3):
            gen = torch.Generator().manual_seed(50 + k)
            for z, r, t in zip(zs, rs, ts):
                grad = torch.randn(r.shape, generator=gen)
                r.grad = grad
                z.grad = torch.view_as_complex(grad) if z.is_complex() else grad.clone()
                t.grad = z.grad.clone()
            oz.step()
            orl.step()
            ot.step()
            for z, r, t in zip(zs, rs, ts):
                assert torch.equal(torch.view_as_real(z) if z.is_complex() else z, r), optim_input.desc
                assert close(z, t, torch.float32), optim_input.desc
        assert_state_close(oz, zs, ot, ts, torch.float32)


def rosenbrock(xy):
    x, y = xy
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


@pytest.mark.parametrize("name", [n for n in NAMES if INFOS[n].supports_complex])
def test_complex_2d_rosenbrock_equals_separate_real_params(name, backend):
    # f(z) on one complex param of 2 elements against the same f on its real and imaginary parts as two params.
    kw = dict(lr=1e-3) if name != "Adagrad" else dict(lr=1e-2)
    z = torch.randn(2, dtype=torch.complex64, requires_grad=True)
    re, im = z.real.detach().clone().requires_grad_(), z.imag.detach().clone().requires_grad_()
    oz, orr = ours(name, backend)([z], **kw), ours(name, backend)([re, im], **kw)
    for _ in range(10):
        oz.zero_grad()
        orr.zero_grad()
        rosenbrock(z).abs().backward()
        rosenbrock(torch.complex(re, im)).abs().backward()
        oz.step()
        orr.step()
        assert torch.equal(z.real, re) and torch.equal(z.imag, im)


# ---------------------------------------------------------------------------------------------------------------
# Sparse gradients (torch's rosenbrock with uncoalesced sparse grads) against torch.optim's sparse step; Adam and
# AdamW refuse them with torch's error.

@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
@pytest.mark.parametrize("name", [n for n in NAMES if INFOS[n].supports_sparse])
def test_sparse_rosenbrock_follows_torch_optim(name, backend):
    kwargs, scheds = INFOS[name].metadata_for_sparse
    runs = []
    for make in (ours(name, backend), theirs(name)):
        xy = torch.tensor([1.5, 1.5], requires_grad=True)
        opt = make([xy], **copy.deepcopy(kwargs))
        runs.append((xy, opt, [s(opt) for s in scheds]))
    for k in range(200):
        for xy, opt, sch in runs:
            opt.zero_grad()
            loss = rosenbrock(xy)
            loss.backward()
            with torch.no_grad():
                g = xy.grad
                # Only one coordinate per step, split over two entries of the same index (uncoalesced).
                i = k % 2
                v = torch.stack([g[i] / 4, g[i] - g[i] / 4])
                xy.grad = torch.sparse_coo_tensor(torch.tensor([[i, i]]), v, (2,))
            opt.step()
            step_schedulers(sch, loss.item())
        assert torch.allclose(runs[0][0], runs[1][0], rtol=1e-5, atol=1e-6), k


@pytest.mark.parametrize("name", [n for n in NAMES if not INFOS[n].supports_sparse])
def test_sparse_gradients_are_refused_with_torch_optims_error(name, backend):
    shape = (4, 1) if name in TWO_D else (4,)
    p, q = torch.randn(shape), torch.randn(shape)
    p.grad, q.grad = torch.ones(shape).to_sparse(), torch.ones(shape).to_sparse()
    with pytest.raises(RuntimeError) as want:
        theirs(name)([q]).step()
    with pytest.raises(RuntimeError, match=re.escape(str(want.value))):
        ours(name, backend)([p]).step()


# ---------------------------------------------------------------------------------------------------------------
# state_dict: both ways with torch.optim, deterministic, older layouts (no maximize/foreach keys, plain-number
# step), the state_dict hooks; deepcopy and pickle; printing.

def trained(make, dtype=torch.float32, steps=3, **kw):
    ps = make_params(dtype, name=name_of(make))
    opt = make(ps, **kw)
    for k in range(steps):
        set_grads(ps, k)
        opt.step()
    return ps, opt


def continue_together(pa, a, pb, b, dtype=torch.float32, steps=3):
    for k in range(10, 10 + steps):
        set_grads(pa, k)
        set_grads(pb, k)
        a.step()
        b.step()
    for p, q in zip(pa, pb):
        assert close(p, q, dtype)
    assert_state_close(a, pa, b, pb, dtype)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("first", ["torch", "ours"])
def test_state_dict_moves_both_ways(name, first, backend):
    for a_in, b_in in zip(inputs(name), inputs(name)):
        makers = {"ours": ours(name, backend), "torch": theirs(name)}
        src_ps, src = trained(makers[first], **a_in.kwargs)
        dst_ps = [p.detach().clone() for p in src_ps]
        dst = makers["torch" if first == "ours" else "ours"](dst_ps, **b_in.kwargs)
        saved = src.state_dict()
        dst.load_state_dict(copy.deepcopy(saved))  # torch.optim keeps the very tensors it is given
        assert_state_close(dst, dst_ps, src, src_ps, torch.float32)
        continue_together(dst_ps, dst, src_ps, src)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_deterministic_and_loads_older_layouts(name, backend):
    ps, opt = trained(ours(name, backend), lr=0.01)
    # Equal but not identical params give equal state_dicts.
    qs = [p.detach().clone() for p in ps]
    other = ours(name, backend)(qs, lr=0.01)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert_same_state_dict(opt.state_dict(), other.state_dict())
    # Older checkpoints: groups without maximize/foreach/differentiable..., steps saved as plain numbers.
    sd = copy.deepcopy(opt.state_dict())
    for group in sd["param_groups"]:
        for key in ("maximize", "foreach", "fused", "differentiable", "capturable", "decoupled_weight_decay"):
            group.pop(key, None)
    for st in sd["state"].values():
        if torch.is_tensor(st.get("step")):
            st["step"] = st["step"].item()
    other.load_state_dict(sd)
    assert all(g["maximize"] is False and g["foreach"] is None for g in other.param_groups)
    ref = ours(name, backend)([q.detach().clone() for q in qs], lr=0.01)
    ref.load_state_dict(copy.deepcopy(opt.state_dict()))
    continue_together(qs, other, ref.param_groups[0]["params"], ref)
    repr(opt)  # printable


@pytest.mark.parametrize("name", NAMES)
def test_named_params_state_dict_moves_both_ways_with_torch_optim(name, backend):
    # torch.optim takes named_parameters() and keeps param_names in its groups; a named checkpoint loads into an
    # unnamed optimizer and back.
    for first, second in (("ours", "torch"), ("torch", "ours")):
        torch.manual_seed(1)
        bias = name not in TWO_D
        model = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=bias), torch.nn.Linear(3, 2, bias=bias))
        makers = {"ours": ours(name, backend), "torch": theirs(name)}
        src = makers[first](model.named_parameters(), lr=0.01)
        x = torch.randn(5, 4)
        for _ in range(2):
            src.zero_grad()
            model(x).sum().backward()
            src.step()
        dst = makers[second](model.parameters(), lr=0.01)
        dst.load_state_dict(copy.deepcopy(src.state_dict()))
        assert dst.state_dict()["param_groups"][0]["param_names"] == [n for n, _ in model.named_parameters()]
        ps = list(model.parameters())
        assert_state_close(dst, ps, src, ps, torch.float32)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_hooks_fire(name, backend):
    ps, opt = trained(ours(name, backend), lr=0.01)
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd_pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    sd = opt.state_dict()
    assert calls == ["sd_pre"] and sd["extra"] == 1
    other = ours(name, backend)([p.detach().clone() for p in ps], lr=0.01)

    def pre(o, sd):
        calls.append("load_pre")
        sd = dict(sd)
        sd.pop("extra")
        sd["param_groups"] = [{**g, "lr": 0.5} for g in sd["param_groups"]]
        return sd

    other.register_load_state_dict_pre_hook(pre)
    other.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    other.load_state_dict(sd)
    assert calls == ["sd_pre", "load_pre", "load_post"]
    assert other.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("name", NAMES)
def test_step_hooks_fire_in_order(name, backend):
    ps = make_params(torch.float32, name=name)
    opt = ours(name, backend)(ps, lr=0.01)
    calls = []
    h1 = opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    h2 = opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    g1 = register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global_pre"))
    g2 = register_optimizer_step_post_hook(lambda o, a, k: calls.append("global_post"))
    try:
        set_grads(ps, 0)
        opt.step()
        assert calls == ["global_pre", "pre", "post", "global_post"]
        for h in (h1, h2):
            h.remove()
        calls.clear()
        opt.step()
        assert calls == ["global_pre", "global_post"]
    finally:
        g1.remove()
        g2.remove()
    # A pre hook may replace the step's arguments (torch's contract: return (args, kwargs) or None).
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: ((o, lambda: seen.append(1) or 0.0), {}))
    opt.step()
    assert seen == [1]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_copies_continue_identically(name, how, backend):
    ps, opt = trained(ours(name, backend), l1=1e-3)  # penalties must survive too
    if how == "deepcopy":
        ps2, opt2 = copy.deepcopy((ps, opt))
    elif how == "pickle":
        ps2, opt2 = pickle.loads(pickle.dumps((ps, opt)))
    else:
        buf = io.BytesIO()
        torch.save((ps, opt.state_dict()), buf)
        buf.seek(0)
        ps2, sd = torch.load(buf, weights_only=True)
        opt2 = ours(name, backend)(ps2, l1=1e-3)
        opt2.load_state_dict(sd)
    assert opt2.backend == backend and opt2.param_groups[0]["l1"] == 1e-3
    public = lambda o: {k for k in vars(o) if not k.startswith("_")}
    assert public(opt2) == public(opt)
    continue_together(ps2, opt2, ps, opt)


# ---------------------------------------------------------------------------------------------------------------
# Steps without grads, and GradScaler.

@pytest.mark.parametrize("name", NAMES)
def test_step_without_grads_is_a_no_op_as_in_torch_optim(name, backend):
    for a_in, b_in in zip(inputs(name), inputs(name)):
        pa, pb = make_params(torch.float32, name=name), make_params(torch.float32, name=name)
        a, b = ours(name, backend)(pa, **a_in.kwargs), theirs(name)(pb, **b_in.kwargs)
        for opt in (a, b):
            opt.step()  # no grad anywhere
        for p, q in zip(pa, pb):
            assert torch.equal(p, q)
        assert_state_close(a, pa, b, pb, torch.float32)
        # Zero grads with no decay move nothing either.
        if not a.param_groups[0]["weight_decay"]:
            before = [p.clone() for p in pa]
            for p in pa:
                p.grad = torch.zeros_like(p)
            a.step()
            assert all(torch.equal(p, q) for p, q in zip(pa, before)), a_in.desc


@pytest.mark.parametrize("name", NAMES)
def test_grad_scaler_skips_inf_steps_and_unscales_as_torch_optim(name, backend):
    x = torch.randn(5)
    runs = []
    for make in (ours(name, backend), theirs(name)):
        w, b = [p.requires_grad_() for p in make_params(torch.float32, name=name)[:2]]
        opt = make([w, b], lr=0.01)
        runs.append((w, b, opt, torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=2)))
    for k in range(6):
        for w, b, opt, scaler in runs:
            opt.zero_grad()
            loss = (w.mv(x) + b).pow(2).sum() * (float("inf") if k == 2 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        (wa, ba, a, sa), (wb, bb, b, sb) = runs
        assert sa.get_scale() == sb.get_scale()
        assert close(wa.detach(), wb.detach(), torch.float32) and close(ba.detach(), bb.detach(), torch.float32)
        assert_state_close(a, [wa, ba], b, [wb, bb], torch.float32)
    # The inf step (k == 2) advanced no counter.
    if "step" in runs[0][2].state[runs[0][0]]:
        assert float(runs[0][2].state[runs[0][0]]["step"]) == 5


@pytest.mark.parametrize("name", NAMES)
def test_found_inf_given_by_hand_skips_everything(name, backend):
    ps, opt = trained(ours(name, backend), lr=0.01)
    snap = [p.clone() for p in ps], copy.deepcopy(opt.state_dict())
    set_grads(ps, 9)
    opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(1.0)
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, snap[0]))
    assert_same_state_dict(opt.state_dict(), snap[1])
    opt.found_inf = torch.tensor(0.0)
    opt.step()
    assert not all(torch.equal(p, q) for p, q in zip(ps, snap[0]))


def test_every_optimizer_is_covered():
    # A rename on either side must not silently drop one of the classes torch.optim has.
    assert {"SGD", "Adam", "AdamW", "Adagrad"} <= set(NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in NAMES:
            assert list(inputs(name)) and INFOS[name].optim_error_inputs_func is not None
