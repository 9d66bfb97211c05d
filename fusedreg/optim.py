"""Drop-in replacements for torch.optim.SGD / Adam / AdamW / Adagrad with fused penalties.

The classes keep torch.optim's signatures, group keys and state layout (so state_dicts move both ways) and
delegate every update to fusedreg.functional. Penalty keys (l1, l1_mode, ...) may differ per param group.
"""
import torch

from . import backends
from . import functional as F
from .precision import Work, local, locals_, no_compile
from .reference import opmath

# Penalty group keys every optimizer accepts, with their defaults.
PENALTIES = dict(l1=0.0, l1_mode="prox", l0=0.0, nonneg=False, group_l1=0.0, group_dim=0)
# Low-precision group keys (fusedreg.precision): an fp32 master copy of bf16/fp16 params, or bf16 stochastic rounding.
PRECISION = dict(master_weights=False, stochastic_rounding=False)
# Per-param state any optimizer may hold next to its own keys (fusedreg.precision's fp32 master copy).
EXTRA_STATE = ("master_param",)


_EMPTY = {}  # _Staged.peek's answer for a param without state (read, never written)


class _Staged:
    """A copy-on-write view of optimizer.state for one step: Work and _prepare create lazy state here, and it
    reaches optimizer.state (commit) only once every group has been validated, so a failed step adds nothing."""

    def __init__(self, state):
        self._state, self._new = state, {}

    def __getitem__(self, p):
        if p not in self._new:
            self._new[p] = dict(self._state[p]) if p in self._state else {}
        return self._new[p]

    def peek(self, p):
        """p's state as this step sees it, for reading only (no copy: __getitem__ is for state that will change)."""
        st = self._new.get(p) if self._new else None
        return self._state.get(p, _EMPTY) if st is None else st

    def commit(self):
        # Staged states only gain keys (lazy state), so a state that kept its size is unchanged.
        for p, st in self._new.items():
            old = self._state.get(p, {})
            if len(st) != len(old):
                self._state[p].update({k: v for k, v in st.items() if k not in old})


class _Fused(torch.optim.Optimizer):
    # GradScaler hands us grad_scale/found_inf instead of unscaling and checking the grads itself.
    _step_supports_amp_scaling = True
    _defaults = {}

    def __init__(self, params, defaults):
        backends.check_name(self.backend)
        self._check(defaults)
        super().__init__(params, {**PENALTIES, **PRECISION, **defaults})

    def __getstate__(self):
        # torch.optim pickles only defaults, state and param_groups; keep the backend choice too.
        return {**super().__getstate__(), "backend": self.backend}

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in {**PENALTIES, **PRECISION, **self._defaults}.items():
                group.setdefault(key, value)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check(group)
            for p in group["params"]:
                if p.is_complex() or not p.is_floating_point():
                    raise ValueError(f"fusedreg optimizers take real floating-point params, got {p.dtype}")
        except ValueError:
            self.param_groups.pop()
            raise

    def _check(self, group):
        """Validate one group's hyperparameters (at construction and again before every step)."""
        raise NotImplementedError

    def _prepare(self, group, work, state):
        """Validate the group's complete kernel inputs (work tensors, grads and every state tensor the kernels
        will get) and create missing lazy state in `state` (a _Staged view); raise before anything changes.
        _step_group then calls fusedreg.functional with _checked=True: one check of every tensor per step."""
        raise NotImplementedError

    def _state_keys(self, group):
        """(keys a stepped param's state must have in this group, optional keys) for load_state_dict."""
        raise NotImplementedError

    def _step_group(self, group, work, grad_scale, found_inf):
        """Step work.params (the group's params with grads; state is keyed by them) by running the kernels on
        work.tensors / work.grads (fusedreg.precision.Work); state tensors go to the kernels through local()."""
        raise NotImplementedError

    def _grads(self, group):
        return [p for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._fused_step(getattr(self, "grad_scale", None), getattr(self, "found_inf", None))
        return loss

    # The kernels are opaque fused ops already, so there is nothing for torch.compile to fuse here: a compiled
    # training step graph-breaks at opt.step() and runs it eagerly. Host-side hyperparameters (a tensor lr that
    # a scheduler changes) are then read at run time instead of being specialized into guards and recompiling.
    @no_compile
    def _fused_step(self, grad_scale, found_inf):
        # Validate every group completely (hyperparameters, grads, state, backend) before any group is stepped;
        # lazily created state (moments, master copies) goes into a staged view and is kept only once all passed.
        staged = _Staged(self.state)
        works = []
        for group in self.param_groups:
            self._check(group)
            params = self._grads(group)
            if group["master_weights"] or group["stochastic_rounding"]:
                # The kernels will get fp32 copies: check the params and grads themselves too (_prepare checks
                # the copies), so that e.g. an expand()ed param fails here and not in the write-back.
                F.check_tensors([local(p) for p in params], grads=[local(p.grad) for p in params])
            # What the kernels update: local shards of DTensors, fp32 masters or temporaries (fusedreg.precision).
            work = Work(params, staged, group)
            self._prepare(group, work, staged)
            for device in {t.device for t in work.tensors}:
                backends.resolve(self.backend, device)
            works.append(work)
        staged.commit()
        for group, work in zip(self.param_groups, works):
            self._step_group(group, work, grad_scale, found_inf)
            work.finish()

    def load_state_dict(self, state_dict):
        # torch casts floating state to the param's dtype, which would round fp32 moments of bf16 params down;
        # keep the saved values and put them in opmath on the param's device instead.
        saved = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        self._check_saved_state(state_dict)
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            if i in saved:
                self.state[p] = {k: _state_value(p, k, v) for k, v in saved[i].items()}


    def _check_saved_state(self, state_dict):
        """Raise ValueError (before anything is replaced) when a saved param's state does not have exactly the
        keys this optimizer keeps for it, or a state tensor does not fit its param. A param without saved state
        has not been stepped yet and is fine."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(ours["params"]) for g, ours in zip(groups, self.param_groups)):
            return  # torch's load_state_dict raises about the group layout, before it changes anything
        saved = state_dict["state"]
        name = type(self).__name__
        for g, ours in zip(groups, self.param_groups):
            required, optional = self._state_keys({**ours, **{k: v for k, v in g.items() if k != "params"}})
            for i, p in zip(g["params"], ours["params"]):
                if i not in saved:
                    continue
                st = saved[i]
                if not isinstance(st, dict):
                    raise ValueError(f"param {i}: saved state is a {type(st).__name__}, not a dict")
                unknown = [k for k in st if k not in required + optional + EXTRA_STATE]
                if unknown:
                    raise ValueError(f"param {i}: state key(s) {unknown} are not {name}'s (it keeps "
                                     f"{list(required + optional)}): is this another optimizer's state_dict?")
                present = [k for k in required if k in st]
                missing = [k for k in required if k not in st]
                if missing and (present or isinstance(self, SGD)):
                    raise ValueError(f"param {i}: state is missing {missing} (has {list(st)}); {name} keeps "
                                     f"{list(required)} for every param it has stepped")
                for k, v in st.items():
                    if v is None and k == "momentum_buffer":
                        continue  # torch.optim.SGD's 'no buffer yet'
                    if k == "step":
                        if not (torch.is_tensor(v) and v.numel() == 1) and not isinstance(v, (int, float)):
                            raise ValueError(f"param {i}: state 'step' must be a number or a one-element tensor, "
                                             f"got {v if not torch.is_tensor(v) else tuple(v.shape)}")
                        continue
                    if not torch.is_tensor(v):
                        raise ValueError(f"param {i}: state {k!r} is a {type(v).__name__}, not a tensor")
                    if v.shape != p.shape:
                        raise ValueError(f"param {i}: state {k!r} has shape {tuple(v.shape)}, expected the "
                                         f"param's shape {tuple(p.shape)}")
                    if v.is_complex() or not v.is_floating_point():
                        raise ValueError(f"param {i}: state {k!r} has dtype {v.dtype}, expected floating point")


def _state_value(p, key, value):
    if key == "step" and isinstance(value, (int, float)):
        return torch.tensor(float(value), dtype=torch.float32, device=p.device)
    if not torch.is_tensor(value):
        return value
    if key == "step":
        return value.detach().to(device=p.device, dtype=torch.float32).clone()
    return value.detach().to(device=p.device, dtype=opmath(p.dtype)).clone()


def _check_common(group):
    F.check_nonneg("lr", group["lr"])
    F.check_penalties(group["l1"], group["l1_mode"], group.get("l2", 0.0), group["l0"], group["weight_decay"],
                      group["group_l1"], group["group_dim"])


def _common_args(group, backend):
    # _checked: _check has validated the hyperparameters, _prepare the tensors, and _fused_step resolved the backend.
    return dict(l1=group["l1"], l1_mode=group["l1_mode"], l0=group["l0"], nonneg=group["nonneg"],
                group_l1=group["group_l1"], group_dim=group["group_dim"], backend=backend, _checked=True)


class SGD(_Fused):
    """torch.optim.SGD plus fused penalties: `l1` (prox soft-threshold by lr*l1, or subgradient), `l0`,
    `nonneg`, and group lasso `group_l1` over the rows (`group_dim=0`) or columns (`group_dim=1`) of every param
    with dim >= 2 (exact prox, step lr). weight_decay is torch's coupled L2 (g += wd*p), so
    `SGD(params, lr, **fusedreg.elastic_net(alpha, l1_ratio))` is scikit-learn's elastic net."""
    _defaults = dict(momentum=0.0, dampening=0.0, nesterov=False, maximize=False)

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *, l1=0.0,
                 l1_mode="prox", l0=0.0, nonneg=False, group_l1=0.0, group_dim=0, maximize=False, backend="auto",
                 master_weights=False, stochastic_rounding=False):
        self.backend = backend
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, l1=l1, l1_mode=l1_mode, l0=l0,
                                      nonneg=nonneg, group_l1=group_l1, group_dim=group_dim,
                                      master_weights=master_weights, stochastic_rounding=stochastic_rounding))

    def _check(self, group):
        _check_common(group)
        F.check_nonneg("momentum", group["momentum"])
        F.check_nonneg("dampening", group["dampening"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _state_keys(self, group):
        # torch.optim.SGD records momentum_buffer (None before the first step) for every param it stepped with
        # momentum; some torch versions record None with momentum == 0 too.
        return (("momentum_buffer",), ()) if group["momentum"] != 0 else ((), ("momentum_buffer",))

    def _prepare(self, group, work, state):
        if group["momentum"] == 0:
            F.check_tensors(work.tensors, grads=work.grads)
            return
        # Existing buffers are checked here; new ones (None) are created (and kept) by _step_group.
        work.state = dict(momentum_buffers=locals_([state.peek(p).get("momentum_buffer") for p in work.params]))
        F.check_tensors(work.tensors, grads=work.grads, missing_ok=("momentum_buffers",), **work.state)

    def _step_group(self, group, work, grad_scale, found_inf):
        params = work.params
        kw = dict(lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                  weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"],
                  grad_scale=grad_scale, found_inf=found_inf, **_common_args(group, self.backend))
        if group["momentum"] == 0:
            F.sgd(work.tensors, work.grads, [], **kw)
            return
        # torch's first step copies the gradient into a new buffer: run new and old buffers apart.
        held = work.state["momentum_buffers"]
        new = [i for i, b in enumerate(held) if b is None]
        if not new:
            F.sgd(work.tensors, work.grads, held, first_step=False, **kw)
            return
        old = [i for i, b in enumerate(held) if b is not None]
        bufs = [torch.zeros_like(params[i], dtype=opmath(params[i].dtype), memory_format=torch.preserve_format)
                for i in new]
        for first, idx, bs in ((True, new, locals_(bufs)), (False, old, [held[i] for i in old])):
            if idx:
                F.sgd([work.tensors[i] for i in idx], [work.grads[i] for i in idx], bs, first_step=first, **kw)
        # Only keep new buffers when the step was taken, so a skipped (inf) step leaves state untouched. This
        # reads found_inf on the host only on a step that creates buffers (the first), never in steady state.
        taken = found_inf is None or not bool(found_inf.item())
        for i, b in zip(new, bufs):
            # A skipped first step records torch's 'no buffer yet' (None), so a stepped param always has the key
            # (load_state_dict relies on it).
            self.state[params[i]]["momentum_buffer"] = b if taken else None


class Adam(_Fused):
    """torch.optim.Adam plus fused penalties. The prox threshold uses Adam's per-element step:
    t = lr*l1 / (sqrt(v_hat) + eps), which converges to the lasso solution. weight_decay is coupled.
    group_l1 (group lasso over rows/columns of params with dim >= 2, see `group_dim`) is the exact prox in the
    same metric: a group is zeroed when ||(sqrt(v_hat) + eps) * w_g|| <= lr*group_l1*sqrt(|g|), else shrunk
    elementwise by r/(r + lr*group_l1*sqrt(|g|)/denom_i) (fusedreg.reference.group_prox), so fixed points are
    group-lasso solutions whatever the spread of denom inside a group."""
    _decoupled = False
    _defaults = dict(amsgrad=False, maximize=False)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *, l1=0.0,
                 l1_mode="prox", l0=0.0, nonneg=False, group_l1=0.0, group_dim=0, maximize=False, backend="auto",
                 master_weights=False, stochastic_rounding=False):
        self.backend = backend
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize, l1=l1, l1_mode=l1_mode, l0=l0,
                                      nonneg=nonneg, group_l1=group_l1, group_dim=group_dim,
                                      master_weights=master_weights, stochastic_rounding=stochastic_rounding))

    def _check(self, group):
        _check_common(group)
        F.check_nonneg("eps", group["eps"])
        for i, b in enumerate(group["betas"]):
            if not 0.0 <= float(b) < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b} (must be in [0, 1))")

    _KEYS = ("step", "exp_avg", "exp_avg_sq")

    def _state_keys(self, group):
        return (self._KEYS + ("max_exp_avg_sq",), ()) if group["amsgrad"] else (self._KEYS, ("max_exp_avg_sq",))

    def _prepare(self, group, work, state):
        amsgrad = group["amsgrad"]
        needed = frozenset(self._state_keys(group)[0])
        sts = []
        for i, p in enumerate(work.params):
            st = state.peek(p)
            if not st.keys() >= needed:  # lazy state to create (in the staged view), or a broken one
                st = state[p]
                missing = [k for k in self._KEYS if k not in st]
                if len(missing) == len(self._KEYS):
                    st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    st["exp_avg"] = torch.zeros_like(p, dtype=opmath(p.dtype), memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros_like(st["exp_avg"])
                elif missing:
                    raise ValueError(f"param {i}: state is missing {missing} (has {list(st)})")
                # amsgrad switched on mid-run: the max starts at zero (torch.optim.Adam would raise a KeyError).
                if amsgrad and "max_exp_avg_sq" not in st:
                    st["max_exp_avg_sq"] = torch.zeros_like(p, dtype=opmath(p.dtype),
                                                            memory_format=torch.preserve_format)
            sts.append(st)
        keys = dict(exp_avgs="exp_avg", exp_avg_sqs="exp_avg_sq", state_steps="step")
        if amsgrad:
            keys["max_exp_avg_sqs"] = "max_exp_avg_sq"
        work.state = {name: locals_([s[key] for s in sts]) for name, key in keys.items()}
        F.check_tensors(work.tensors, grads=work.grads, **work.state)

    def _step_group(self, group, work, grad_scale, found_inf):
        st = work.state
        F.adam(work.tensors, work.grads, st["exp_avgs"], st["exp_avg_sqs"], st.get("max_exp_avg_sqs", []),
               st["state_steps"], lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"],
               weight_decay=group["weight_decay"], decoupled=self._decoupled, amsgrad=group["amsgrad"],
               maximize=group["maximize"], grad_scale=grad_scale, found_inf=found_inf,
               **_common_args(group, self.backend))


class AdamW(Adam):
    """torch.optim.AdamW plus fused penalties: decoupled decay p *= 1 - lr*wd before the Adam step (so
    `elastic_net`'s weight_decay is not scikit-learn's L2 term here; use Adam or SGD for that)."""
    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 l1=0.0, l1_mode="prox", l0=0.0, nonneg=False, group_l1=0.0, group_dim=0, maximize=False,
                 backend="auto", master_weights=False, stochastic_rounding=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, l1=l1, l1_mode=l1_mode, l0=l0,
                         nonneg=nonneg, group_l1=group_l1, group_dim=group_dim, maximize=maximize,
                         backend=backend, master_weights=master_weights, stochastic_rounding=stochastic_rounding)


class Adagrad(_Fused):
    """torch.optim.Adagrad plus fused penalties. With l1/l2 (and eps=0) it is TensorFlow's
    ProximalAdagradOptimizer: threshold eta*l1 and division by 1 + eta*l2, eta = lr/sqrt(acc); the accumulator
    starts at initial_accumulator_value. group_l1 is the group-lasso prox in the same metric (see Adam)."""
    _defaults = dict(lr_decay=0.0, initial_accumulator_value=0.0, maximize=False, l2=0.0)

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, *,
                 l1=0.0, l2=0.0, l1_mode="prox", l0=0.0, nonneg=False, group_l1=0.0, group_dim=0, maximize=False,
                 backend="auto", master_weights=False, stochastic_rounding=False):
        self.backend = backend
        F.check_nonneg("initial_accumulator_value", initial_accumulator_value)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                                      initial_accumulator_value=initial_accumulator_value, maximize=maximize,
                                      l1=l1, l2=l2, l1_mode=l1_mode, l0=l0, nonneg=nonneg, group_l1=group_l1,
                                      group_dim=group_dim, master_weights=master_weights,
                                      stochastic_rounding=stochastic_rounding))
        # torch.optim.Adagrad creates its state eagerly, with the accumulator at its initial value.
        for group in self.param_groups:
            self._init_group(group, self.state)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if hasattr(self, "backend"):
            self._init_group(self.param_groups[-1], self.state)

    def _init_group(self, group, states, params=None):
        for p in group["params"] if params is None else params:
            state = states[p]
            if not any(k in state for k in self._KEYS):
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["sum"] = torch.full_like(p, group["initial_accumulator_value"], dtype=opmath(p.dtype),
                                               memory_format=torch.preserve_format)

    def _check(self, group):
        _check_common(group)
        F.check_nonneg("lr_decay", group["lr_decay"])
        F.check_nonneg("eps", group["eps"])

    _KEYS = ("step", "sum")

    def _state_keys(self, group):
        return self._KEYS, ()

    def _prepare(self, group, work, state):
        needed = frozenset(self._state_keys(group)[0])
        sts = []
        for i, p in enumerate(work.params):
            st = state.peek(p)
            if not st.keys() >= needed:
                # State is made at construction; a param loaded without it starts from initial_accumulator_value.
                self._init_group(group, state, [p])
                st = state.peek(p)
                missing = [k for k in self._KEYS if k not in st]
                if missing:
                    raise ValueError(f"param {i}: state is missing {missing} (has {list(st)})")
            sts.append(st)
        work.state = dict(state_sums=locals_([s["sum"] for s in sts]), state_steps=locals_([s["step"] for s in sts]))
        F.check_tensors(work.tensors, grads=work.grads, **work.state)

    def _step_group(self, group, work, grad_scale, found_inf):
        st = work.state
        F.adagrad(work.tensors, work.grads, st["state_sums"], st["state_steps"],
                  lr=group["lr"], lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
                  maximize=group["maximize"], l2=group["l2"], grad_scale=grad_scale, found_inf=found_inf,
                  **_common_args(group, self.backend))
