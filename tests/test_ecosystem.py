"""fusedreg inside an existing training script (issue #6): mixed precision (fp32 state, master weights, stochastic
rounding), torch.amp.GradScaler, torch.compile, LR schedulers and the optimizer plumbing around a step
(zero_grad, grad=None, frozen params, add_param_group, deepcopy, pickling). torch.distributed: test_distributed.py.
"""
import copy
import pickle

import pytest
import torch

import fusedreg
from fusedreg.precision import stochastic_round_bf16
from tolerances import TRAJECTORY, rel_err

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = [("SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.01)), ("Adam", dict(lr=0.01, amsgrad=True)),
           ("AdamW", dict(lr=0.01, weight_decay=0.1)), ("Adagrad", dict(lr=0.05, lr_decay=0.01))]
CONFIG_IDS = [name for name, _ in CONFIGS]
# The GradScaler tests take fusedreg's own options too (no torch.optim run beside them).
SCALER_CONFIGS = CONFIGS + [("AdamW", dict(lr=0.01, weight_decay=0.1, l1_mode="decoupled", group_l1=1e-3)),
                            ("Adagrad", dict(lr=0.05, lr_decay=0.01, l2=0.01, l1_mode="decoupled")),
                            ("Lion", dict(lr=0.01, weight_decay=0.1, group_l1=1e-3)),
                            ("Muon", dict(lr=0.02, group_l1=1e-3))]
SCALER_IDS = CONFIG_IDS + ["AdamW-decoupled", "Adagrad-decoupled", "Lion", "Muon"]
TWO_D = ("Muon",)  # the optimizers that take 2-D params only: their models have no biases


def mlp(dtype=torch.float32, seed=0, device="cpu", bias=True):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16, bias=bias), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3, bias=bias)).to(device, dtype)


def data(dtype=torch.float32, n=64, device="cpu"):
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g)
    return X.to(device, dtype), y.to(device, dtype)


def loss_fn(model, X, y):
    return ((model(X) - y) ** 2).mean()


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def random_grads(params, steps, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g) for p in params] for _ in range(steps)]


# ---------------------------------------------------------------------------------------------------------------
# Mixed precision

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,cfg", CONFIGS, ids=CONFIG_IDS)
def test_low_precision_params_step_in_fp32_with_fp32_state(name, cfg, dtype, backend):
    """bf16/fp16 params: each step is torch.optim's fp32 step on the upcast param and fp32 state, rounded once."""
    params = [torch.randn(7, 5).to(dtype), torch.randn(3).to(dtype)]
    ref = [p.float().clone() for p in params]
    opt = getattr(fusedreg, name)(params, **cfg, backend=backend)
    ref_opt = getattr(torch.optim, name)(ref, **cfg)
    for grads in random_grads(params, 6):
        for p, r, g in zip(params, ref, grads):
            p.grad, r.grad = g.to(dtype), g.to(dtype).float()
        opt.step()
        ref_opt.step()
        with torch.no_grad():
            for r in ref:
                r.copy_(r.to(dtype).float())  # the param is stored in low precision between steps
        for p, r in zip(params, ref):
            assert p.dtype == dtype
            # One rounding of (nearly) the same fp32 value: at most one ulp apart.
            assert torch.allclose(p.float(), r, rtol=2 * torch.finfo(dtype).eps, atol=0)
    for p, r in zip(params, ref):
        for key, value in ref_opt.state[r].items():
            if torch.is_tensor(value) and value.dim():
                assert opt.state[p][key].dtype == torch.float32, key
                assert rel_err(opt.state[p][key], value) <= 1e-2, key


def small_update_params(dtype=torch.bfloat16, n=20000):
    # bf16 has 8 significant bits: at 1.0 its ulp is 2^-7, so an update of 1e-4 rounds away to nothing.
    return [torch.ones(n, dtype=dtype)]


def sgd_small_updates(opt, params, steps):
    for _ in range(steps):
        params[0].grad = torch.full_like(params[0], 1.0)
        opt.step()


def test_master_weights_keep_updates_that_bf16_rounds_away(backend):
    plain, master = small_update_params(), small_update_params()
    sgd_small_updates(fusedreg.SGD(plain, lr=1e-4, backend=backend), plain, 40)
    opt = fusedreg.SGD(master, lr=1e-4, master_weights=True, backend=backend)
    sgd_small_updates(opt, master, 40)
    assert torch.equal(plain[0], torch.ones_like(plain[0]))  # every update lost
    m = opt.state[master[0]]["master_param"]
    assert m.dtype == torch.float32
    assert torch.allclose(m, torch.full_like(m, 1 - 40e-4), rtol=1e-5)
    assert torch.equal(master[0], m.to(torch.bfloat16))  # the param is the master rounded to nearest


@pytest.mark.parametrize("name,cfg", CONFIGS, ids=CONFIG_IDS)
def test_master_weights_equal_an_fp32_run_and_survive_state_dict(name, cfg, backend):
    """With master_weights the master follows torch.optim's fp32 trajectory exactly (given the same grads);
    the master and the moments stay fp32 through state_dict / load_state_dict, and training continues
    identically."""
    params = [torch.randn(7, 5).to(torch.bfloat16), torch.randn(3).to(torch.bfloat16)]
    ref = [p.float().clone() for p in params]
    opt = getattr(fusedreg, name)(params, **cfg, master_weights=True, backend=backend)
    ref_opt = getattr(torch.optim, name)(ref, **cfg)
    grads = random_grads(params, 10)

    def run(opt, params, grads):
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = g.to(torch.bfloat16).to(p.dtype)  # the bf16 grad, upcast for the fp32 reference
            opt.step()

    run(opt, params, grads[:5])
    run(ref_opt, ref, grads[:5])
    for p, r in zip(params, ref):
        assert rel_err(opt.state[p]["master_param"], r) <= TRAJECTORY[torch.float32]
        assert torch.equal(p, opt.state[p]["master_param"].to(torch.bfloat16))
    sd = copy.deepcopy(opt.state_dict())
    assert all(s["master_param"].dtype == torch.float32 for s in sd["state"].values())
    params2 = [p.detach().clone() for p in params]
    opt2 = getattr(fusedreg, name)(params2, **cfg, master_weights=True, backend=backend)
    opt2.load_state_dict(sd)
    for p in params2:
        for key, value in opt2.state[p].items():
            assert value.dtype == torch.float32, key  # torch's load_state_dict would have cast these to bf16
    run(opt, params, grads[5:])
    run(opt2, params2, grads[5:])
    run(ref_opt, ref, grads[5:])
    for p, p2, r in zip(params, params2, ref):
        assert torch.equal(p, p2)
        assert torch.equal(opt.state[p]["master_param"], opt2.state[p2]["master_param"])
        assert rel_err(opt.state[p]["master_param"], r) <= TRAJECTORY[torch.float32]


def test_load_state_dict_keeps_fp32_state_of_bf16_params(backend):
    model = mlp(torch.bfloat16)
    opt = fusedreg.Adam(model.parameters(), lr=0.01, amsgrad=True, backend=backend)
    X, y = data(torch.bfloat16)
    loss_fn(model, X, y).backward()
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    fresh = fusedreg.Adam(model.parameters(), lr=0.01, amsgrad=True, backend=backend)
    fresh.load_state_dict(sd)
    for i, p in enumerate(model.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"):
            assert fresh.state[p][key].dtype == torch.float32
            assert torch.equal(fresh.state[p][key], sd["state"][i][key])  # bit for bit, no bf16 round trip


def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(64), torch.randn(64) * 1e-30, torch.tensor([1.0, -1.0, 3.0e38, 0.0])])
    down = x.to(torch.bfloat16)  # round to nearest, then find the bf16 neighbours of x around it
    d = down.float()
    up = torch.where(d == x, d, torch.nextafter(down, torch.where(x > d, torch.inf, -torch.inf).to(torch.bfloat16))
                     .float())
    lo, hi = torch.minimum(d, up), torch.maximum(d, up)
    draws = torch.stack([stochastic_round_bf16(x).float() for _ in range(4000)])
    assert bool(((draws == lo) | (draws == hi)).all())
    # Mean of 4000 draws: standard error <= (hi - lo)/2/sqrt(4000); allow 5 of them.
    tol = 5 * (hi - lo) / 2 / 4000 ** 0.5 + 1e-45
    assert bool(((draws.double().mean(0) - x.double()).abs() <= tol.double()).all())
    # Exactly representable values, infinities and nan come through unchanged.
    special = torch.tensor([1.0, -2.5, 0.0, torch.inf, -torch.inf])
    assert torch.equal(stochastic_round_bf16(special), special.to(torch.bfloat16))
    assert torch.isnan(stochastic_round_bf16(torch.tensor([torch.nan]))).all()


def test_stochastic_rounding_keeps_small_updates_in_expectation(backend):
    params = small_update_params()
    opt = fusedreg.SGD(params, lr=1e-4, stochastic_rounding=True, backend=backend)
    sgd_small_updates(opt, params, 40)
    assert "master_param" not in opt.state[params[0]]
    mean = params[0].double().mean().item()
    assert abs(mean - (1 - 40e-4)) < 2e-4  # round-to-nearest would have stayed at exactly 1.0


def test_precision_flag_misuse_is_a_clear_error():
    p = torch.randn(3, dtype=torch.float16, requires_grad=True)
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="bfloat16"):
        fusedreg.SGD([p], lr=0.1, stochastic_rounding=True).step()
    with pytest.raises(ValueError, match="choose one"):
        fusedreg.SGD([p], lr=0.1, stochastic_rounding=True, master_weights=True).step()
    # fp32 params ignore both flags (nothing to round); no master copy is made.
    q = torch.randn(3, requires_grad=True)
    q.grad = torch.ones_like(q)
    opt = fusedreg.Adam([q], lr=0.1, master_weights=True)
    opt.step()
    assert "master_param" not in opt.state[q]


# ---------------------------------------------------------------------------------------------------------------
# torch.amp.GradScaler

def scaler_run(name, cfg, backend, device="cpu", steps=8, inf_at=(), use_scaler=True, unscale_first=False,
               dtype=torch.float32, unscale_in_step=True, **opt_kw):
    """Train with a GradScaler; at the steps in inf_at one grad element is set to inf after backward."""
    model = mlp(dtype, device=device, bias=name not in TWO_D)
    opt = getattr(fusedreg, name)(model.parameters(), **cfg, **opt_kw, backend=backend)
    opt.unscale_in_step = unscale_in_step
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 12, growth_interval=3, enabled=use_scaler)
    X, y = data(dtype, device=device)
    snapshots = []
    for i in range(steps):
        opt.zero_grad()
        scaler.scale(loss_fn(model, X, y)).backward()
        if i in inf_at:
            with torch.no_grad():
                model[0].weight.grad[0, 0] = torch.inf
            snapshots.append((flat(model).clone(), copy.deepcopy(opt.state_dict()["state"])))
        if unscale_first:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)
        scaler.step(opt)
        scaler.update()
        if i in inf_at:
            before, state = snapshots[-1]
            assert torch.equal(flat(model), before)
            after = opt.state_dict()["state"]
            for k, s in state.items():
                for key, value in s.items():
                    assert torch.equal(after[k][key], value), key  # incl. step: a skipped step is not counted
    return model, opt, scaler


@pytest.mark.parametrize("name,cfg", SCALER_CONFIGS, ids=SCALER_IDS)
def test_grad_scaler_matches_the_unscaled_run(name, cfg, backend):
    """Scaling by a power of two and dividing it out inside the fused step is exact."""
    plain, _, _ = scaler_run(name, cfg, backend, use_scaler=False, l1=1e-3)
    scaled, opt, scaler = scaler_run(name, cfg, backend, l1=1e-3)
    assert rel_err(flat(scaled), flat(plain)) <= TRAJECTORY[torch.float32]
    assert torch.equal(flat(scaled) == 0, flat(plain) == 0)
    # The step divides on the fly: the grads are still the scaled ones afterwards (no unscale pass wrote them).
    opt.zero_grad()
    scaler.scale(loss_fn(scaled, *data())).backward()
    grads = [p.grad.clone() for p in scaled.parameters()]
    scaler.step(opt)
    assert all(torch.equal(p.grad, g) for p, g in zip(scaled.parameters(), grads))


@pytest.mark.parametrize("unscale_in_step", [True, False], ids=["in-step", "by-scaler"])
@pytest.mark.parametrize("name,cfg", SCALER_CONFIGS, ids=SCALER_IDS)
def test_grad_scaler_skips_inf_steps_without_touching_params_or_state(name, cfg, backend, unscale_in_step):
    # Infs at step 0 (no state yet: SGD must not keep a momentum buffer) and mid-run.
    _, _, scaler = scaler_run(name, cfg, backend, inf_at=(0, 4), l1=1e-3, unscale_in_step=unscale_in_step)
    assert scaler.get_scale() < 2.0 ** 12 * 2 ** 3  # the scaler saw the infs and backed off
    # After unscale_ (e.g. for clipping) the step gets grad_scale=None and still skips on found_inf.
    scaler_run(name, cfg, backend, inf_at=(2,), unscale_first=True, unscale_in_step=unscale_in_step)


@pytest.mark.parametrize("unscale_in_step", [True, False], ids=["in-step", "by-scaler"])
def test_accelerate_reports_a_skipped_step_when_the_scaler_unscales(backend, unscale_in_step):
    # accelerate calls a step skipped when GradScaler did not call step(). In-step unscaling calls it on every
    # step (the kernel skips), so accelerate sees no skip and its scheduler advances, as with torch's fused=True;
    # unscale_in_step = False gives plain torch.optim's protocol, and the report with it.
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.scheduler import AcceleratedScheduler

    Accelerator(cpu=True)  # accelerate's process state, which its wrappers read
    model = mlp()
    opt = fusedreg.AdamW(model.parameters(), lr=0.01, l1=1e-3, backend=backend)
    opt.unscale_in_step = unscale_in_step
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    wrapped = AcceleratedOptimizer(opt, device_placement=False, scaler=scaler)
    sched = AcceleratedScheduler(torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5), wrapped)
    X, y = data()
    for inf in (False, True, False):
        wrapped.zero_grad()
        scaler.scale(loss_fn(model, X, y)).backward()
        if inf:
            with torch.no_grad():
                model[0].weight.grad[0, 0] = torch.inf
        before, lr = flat(model).clone(), opt.param_groups[0]["lr"]
        wrapped.step()
        sched.step()
        assert torch.equal(flat(model), before) == inf
        assert wrapped.step_was_skipped == (inf and not unscale_in_step)
        assert opt.param_groups[0]["lr"] == (lr if wrapped.step_was_skipped else lr / 2)


def test_grad_scaler_with_bf16_autocast_and_master_weights(backend):
    model = mlp(torch.bfloat16)
    opt = fusedreg.AdamW(model.parameters(), lr=0.01, l1=1e-3, master_weights=True, backend=backend)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    X, y = data()
    losses = []
    for _ in range(10):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(model, X.bfloat16(), y.bfloat16())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for p in model.parameters():
        assert torch.equal(p, opt.state[p]["master_param"].to(torch.bfloat16))


@CUDA
@pytest.mark.parametrize("name,cfg", SCALER_CONFIGS, ids=SCALER_IDS)
def test_grad_scaler_on_cuda(name, cfg):
    for backend in [b for b in fusedreg.backends.available() if b in ("cuda", "triton", "torch")]:
        plain, _, _ = scaler_run(name, cfg, backend, device="cuda", use_scaler=False, l1=1e-3)
        scaled, _, _ = scaler_run(name, cfg, backend, device="cuda", l1=1e-3)
        assert rel_err(flat(scaled), flat(plain)) <= TRAJECTORY[torch.float32], backend
        scaler_run(name, cfg, backend, device="cuda", inf_at=(0, 4), l1=1e-3)  # asserts inside


# ---------------------------------------------------------------------------------------------------------------
# torch.compile

COMPILE_BACKENDS = [b for b in ("torch", "cpp") if b in fusedreg.backends.available()]


@pytest.mark.parametrize("name,cfg", [("SGD", dict(momentum=0.9, l1=0.5)), ("AdamW", dict(l1=0.05)),
                                      ("AdamW", dict(l1=0.5, l1_mode="decoupled", group_l1=0.1)),
                                      ("Ftrl", dict(lr_power=-0.6, l1=0.05)),
                                      # l1 = 1: the threshold lr*l1 is Lion's step, so a zero stays zero
                                      ("Lion", dict(weight_decay=0.1, l1=1.0, group_l1=0.1)),
                                      ("Muon", dict(l1=0.5, group_l1=0.1))],
                         ids=["SGD", "AdamW", "AdamW-decoupled", "Ftrl", "Lion", "Muon"])
@pytest.mark.parametrize("backend_name", COMPILE_BACKENDS)
def test_compiled_training_step_matches_eager_and_tensor_lr_does_not_recompile(name, cfg, backend_name):
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    X, y = data()
    models = [mlp(bias=name not in TWO_D), mlp(bias=name not in TWO_D)]
    opts = [getattr(fusedreg, name)(m.parameters(), lr=torch.tensor(0.05), **cfg, backend=backend_name)
            for m in models]
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in opts]

    def train_step(model, opt):
        opt.zero_grad()
        loss = loss_fn(model, X, y)
        loss.backward()
        opt.step()
        return loss

    counter = CompileCounter()
    compiled = torch.compile(train_step, backend=counter)
    for i in range(6):
        train_step(models[0], opts[0])
        compiled(models[1], opts[1])
        for s in scheds:
            s.step()  # fills the lr tensor in place: 0.05, 0.025, 0.0125
        if i == 1:
            frames = counter.frame_count
    assert torch.is_tensor(opts[1].param_groups[0]["lr"]) and opts[1].param_groups[0]["lr"].item() == pytest.approx(0.05 / 8)
    assert counter.frame_count == frames  # the lr changes after step 2 and 4 did not recompile
    assert torch.equal(flat(models[0]), flat(models[1]))
    assert (flat(models[1]) == 0).any()


# ---------------------------------------------------------------------------------------------------------------
# LR schedulers and the plumbing around a step (fp64: compared with torch.optim)

SCHEDULERS = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5),
    # Cycles SGD's momentum and Adam's beta1 too (Adagrad has neither).
    "OneCycleLR": lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=0.1, total_steps=20, cycle_momentum=not isinstance(o, (torch.optim.Adagrad, fusedreg.Adagrad))),
    "CosineWarmRestarts": lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2),
}


@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("name,cfg", [("SGD", dict(lr=0.05, momentum=0.9)), ("Adam", dict(lr=0.01)),
                                      ("Adagrad", dict(lr=0.05))], ids=["SGD", "Adam", "Adagrad"])
def test_lr_schedulers_match_torch_optim(name, cfg, sched, backend):
    dt = torch.float64
    ref_model, our_model = mlp(dt), mlp(dt)
    ref_opt = getattr(torch.optim, name)(ref_model.parameters(), **cfg)
    our_opt = getattr(fusedreg, name)(our_model.parameters(), **cfg, backend=backend)
    scheds = [SCHEDULERS[sched](o) for o in (ref_opt, our_opt)]
    X, y = data(dt)
    for _ in range(20):
        for model, opt, s in ((ref_model, ref_opt, scheds[0]), (our_model, our_opt, scheds[1])):
            opt.zero_grad()
            loss_fn(model, X, y).backward()
            opt.step()
            s.step()
        for key in ("lr", "momentum", "betas"):
            assert our_opt.param_groups[0].get(key) == ref_opt.param_groups[0].get(key), key
    assert rel_err(flat(our_model), flat(ref_model)) <= TRAJECTORY[dt]


@pytest.mark.parametrize("name,cfg", CONFIGS, ids=CONFIG_IDS)
def test_grad_none_frozen_mid_run_zero_grad_and_add_param_group_match_torch_optim(name, cfg, backend):
    """One run through the plumbing: zero_grad(set_to_none=False) steps with zero grads, a layer whose grad is
    None for a while, a layer frozen mid-run, and a param group added after construction."""
    dt = torch.float64
    X, y = data(dt)
    runs = []
    for lib, kw in ((torch.optim, {}), (fusedreg, dict(backend=backend))):
        model = mlp(dt)
        extra = torch.nn.Linear(3, 3).to(dt)
        torch.manual_seed(5)
        torch.nn.init.normal_(extra.weight)
        opt = getattr(lib, name)([model[0].weight, model[0].bias, model[2].bias], **cfg, **kw)
        for i in range(16):
            opt.zero_grad(set_to_none=(i % 2 == 0))
            if i == 4:  # a group added after construction, with its own lr
                opt.add_param_group(dict(params=[model[2].weight], lr=cfg["lr"] / 2))
            if i == 6:
                opt.add_param_group(dict(params=list(extra.parameters())))
            if i == 10:  # freeze the first layer mid-run: its grad is None from here on
                model[0].requires_grad_(False)
                for p in model[0].parameters():
                    p.grad = None
            out = model(X)
            if i >= 6:
                out = extra(out)
            loss = ((out - y) ** 2).mean()
            loss.backward()
            if 2 <= i < 4:  # grad=None in a step while other params step
                model[2].bias.grad = None
            opt.step()
        runs.append((torch.cat([flat(model), flat(extra)]), opt))
    (ref, ref_opt), (ours, our_opt) = runs
    assert rel_err(ours, ref) <= TRAJECTORY[dt]
    assert len(our_opt.param_groups) == 3 and our_opt.param_groups[1]["l1"] == 0.0


def test_add_param_group_rejects_bad_groups_and_keeps_defaults(backend):
    model = mlp()
    opt = fusedreg.AdamW([model[0].weight], lr=0.01, l1=0.01, master_weights=True, backend=backend)
    opt.add_param_group(dict(params=[model[0].bias], l1=0.0))
    assert opt.param_groups[1]["l1"] == 0.0 and opt.param_groups[1]["master_weights"] is True
    with pytest.raises(ValueError, match="l1"):
        opt.add_param_group(dict(params=[model[2].weight], l1=-1.0))
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("name,cfg", CONFIGS + [("Lion", dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True))],
                         ids=CONFIG_IDS + ["Lion"])
def test_deepcopy_and_pickle_continue_identically(name, cfg, how, backend):
    model = mlp(torch.bfloat16)
    opt = getattr(fusedreg, name)(model.parameters(), **cfg, l1=1e-3, master_weights=True, backend=backend)
    X, y = data(torch.bfloat16)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(model, X, y).backward()
            opt.step()

    train(model, opt, 3)
    opt.unscale_in_step = False
    # Copy model and optimizer together so the copied optimizer steps the copied params.
    bundle = dict(model=model, opt=opt)
    clone = copy.deepcopy(bundle) if how == "deepcopy" else pickle.loads(pickle.dumps(bundle))
    assert clone["opt"].backend == backend and clone["opt"].param_groups[0]["master_weights"]
    assert not clone["opt"].unscale_in_step and not clone["opt"]._step_supports_amp_scaling
    train(model, opt, 3)
    train(clone["model"], clone["opt"], 3)
    assert torch.equal(flat(model), flat(clone["model"]))
    for p, q in zip(model.parameters(), clone["model"].parameters()):
        assert torch.equal(opt.state[p]["master_param"], clone["opt"].state[q]["master_param"])
