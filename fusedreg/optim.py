"""Drop-in replacements for torch.optim.SGD / Adam / AdamW / Adagrad / Muon with fused penalties, Ftrl
(FTRL-Proximal, TensorFlow's / Keras's, which torch.optim lacks) and Lion (lion-pytorch's).

The classes keep torch.optim's signatures, group keys and state layout (so state_dicts move both ways) and
delegate every update to fusedreg.functional. Penalty keys (l1, l1_mode, ...) may differ per param group.
"""
import math

import torch

from . import backends
from . import functional as F
from . import _ops
from .precision import Work, _dtensor_type, local, locals_, no_compile
from .reference import opmath

__all__ = ["SGD", "Adam", "AdamW", "Adagrad", "Ftrl", "Lion", "Muon"]

# Penalty group keys every optimizer accepts, with their defaults.
PENALTIES = dict(l1=0.0, l1_mode="prox", l0=0.0, nonneg=False, group_l1=0.0, group_dim=0)
# Low-precision group keys (fusedreg.precision): an fp32 master copy of bf16/fp16 params, or bf16 stochastic rounding.
PRECISION = dict(master_weights=False, stochastic_rounding=False)
# Per-param state any optimizer may hold next to its own keys (fusedreg.precision's fp32 master copy).
EXTRA_STATE = ("master_param",)
# torch.optim's own group keys, accepted and recorded so that code written for torch.optim runs unchanged: the
# step is always one fused kernel, whatever foreach/fused say; differentiable=True is refused (_check).
TORCH_KEYS = dict(foreach=None, fused=None, differentiable=False)


_EMPTY = {}  # the state of a param that has none (read, never written)


class _Fused(torch.optim.Optimizer):
    """The step every optimizer shares. A subclass names its op (`_op`, a fusedreg._ops.ARGS key), the state
    key behind each of the op's state lists (`_state`), the keys created together on a param's first step
    (`_keys`), and creates that lazy state in `_init_group`, as torch.optim's _init_group does."""
    # True: GradScaler hands the kernels its scale and inf flag instead of unscaling the grads and checking them
    # itself (one pass less, no host sync), so step() runs even on a step it skips, as for torch's fused=True.
    # False: GradScaler unscales and skips the call, as for plain torch.optim, which is what a wrapper that watches
    # step() being called needs (accelerate's step_was_skipped). Set per optimizer.
    unscale_in_step = True
    _defaults = {}
    _op = ""
    _state = {}
    _keys = ()

    def __init__(self, params, defaults):
        backends.check_name(self.backend)
        self._check(defaults)
        super().__init__(params, {**PENALTIES, **PRECISION, **TORCH_KEYS, **defaults})

    @property
    def _step_supports_amp_scaling(self):  # what GradScaler reads
        return self.unscale_in_step

    def __getstate__(self):
        # torch.optim pickles only defaults, state and param_groups; keep the backend choice too.
        state = {**super().__getstate__(), "backend": self.backend}
        if "unscale_in_step" in self.__dict__:  # set on this optimizer (else the class's default)
            state["unscale_in_step"] = self.unscale_in_step
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in {**PENALTIES, **PRECISION, **TORCH_KEYS, **self._defaults}.items():
                group.setdefault(key, value)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check(group)
            for p in group["params"]:
                if not (p.is_floating_point() or p.is_complex()):
                    raise ValueError(f"fusedreg optimizers take floating-point or complex params, got {p.dtype}")
        except ValueError:
            self.param_groups.pop()
            raise

    def _kind(self, group):
        """(op, state list -> state key, keys created together) of a group: the class's (Muon's AdamW groups take
        Adam's)."""
        return self._op, self._state, self._keys

    def _scalars(self, group):
        """The op's scalar arguments for this group: every op argument that is a group key, plus the subclass's
        own (_extra) and l1_subgradient / l1_decoupled for l1_mode."""
        kw = {a.name: group[a.name] for a in _ops.ARGS[self._kind(group)[0]] if not a.role and a.name in group}
        kw.update(F.l1_flags(group["l1_mode"]))
        kw.update(self._extra(group))
        return kw

    def _extra(self, group):
        return {}

    def _check(self, group, scalars=None):
        """Validate one group's hyperparameters (at construction and again before every step, with the op's
        scalars the step has made of them)."""
        if group.get("differentiable"):
            raise ValueError("differentiable=True is not supported: fusedreg's step is one fused kernel that "
                             "autograd does not differentiate through")
        scalars = scalars or self._scalars(group)
        F.check_args(op=self._kind(group)[0], l1_mode=group["l1_mode"], **scalars)
        F.check_complex(group.get("params", ()), **scalars)

    def _state_keys(self, group):
        """(keys a stepped param's state must have in this group, optional keys) for load_state_dict."""
        raise NotImplementedError

    def _init_group(self, group, params, lists):
        """Create the state of params that have none yet (the None entries of `lists`, which it fills)."""
        raise NotImplementedError

    def _read(self, params, used, sharded, group):
        """The op's state lists for params as their state holds them (None where there is none yet; empty for
        the lists not in `used`); raises where a param's state is broken (some of the keys created together, not
        all). sharded: DTensor params, whose state goes to the kernels as local shards."""
        _, names, together = self._kind(group)
        keys = [(name, key) for name, key in names.items() if name in used]
        state = self.state
        sts = [state.get(p, _EMPTY) for p in params]
        try:  # every step after the first: all there
            lists = {name: [st[key] for st in sts] for name, key in keys}
        except KeyError:  # first steps (or broken state): look closer
            for i, st in enumerate(sts):
                missing = [k for k in together if k not in st]
                if st and 0 < len(missing) < len(together):
                    raise ValueError(f"param {i}: state is missing {missing} (has {list(st)})")
            lists = {name: [st.get(key) for st in sts] for name, key in keys}
        if sharded:
            lists = {name: locals_(ts) for name, ts in lists.items()}
        return {name: lists.get(name, []) for name in names}

    def _run(self, params, names, lists, scalars, grad_scale, found_inf):
        F.launch(self._op, names, lists, grad_scale, found_inf, **scalars)

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
        # Check every group completely (hyperparameters, params, grads, state, backend) before any is stepped, so
        # that a step that raises changes nothing; lazy state is created only after that.
        if grad_scale is not None or found_inf is not None:
            F.check_args(grad_scale=grad_scale, found_inf=found_inf)
        plans = []
        for group in self.param_groups:
            scalars = self._scalars(group)
            self._check(group, scalars)
            params = [p for p in group["params"] if p.grad is not None]
            if group["master_weights"] or group["stochastic_rounding"]:
                # The kernels will get fp32 copies: check the params and grads themselves too, so that e.g. an
                # expand()ed param fails here and not in the write-back.
                F.check_tensors(locals_(params), grads=locals_([p.grad for p in params]))
            # What the kernels update: local shards of DTensors, fp32 masters or temporaries (fusedreg.precision).
            work = Work(params, self.state, group)
            op = self._kind(group)[0]
            used = F.used(op, scalars)
            lists = self._read(params, used, work.sharded, group)
            F.check_tensors(work.tensors, grads=work.grads, missing_ok=tuple(lists),
                            **{name: ts for name, ts in lists.items() if name in used})
            F.check_sparse(op, work.grads, work.tensors, **scalars)
            plans.append((group, params, work, lists, scalars, F.resolve(self.backend, work.tensors)))
        for group, params, work, lists, scalars, names in plans:
            work.keep(self.state)
            self._init_group(group, params, lists)
            self._run(params, names, {"params": work.tensors, "grads": work.grads, **lists}, scalars, grad_scale,
                      found_inf)
            work.finish()

    def load_state_dict(self, state_dict):
        # torch casts floating state to the param's dtype, which would round fp32 moments of bf16 params down;
        # keep the saved values and put them in opmath on the param's device instead.
        saved = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        self._check_saved_state(state_dict)
        # A key the checkpoint lacks (a torch.optim checkpoint has no penalties) keeps the value this optimizer
        # was built with: fine-tuning from a torch checkpoint with l1 added keeps the l1.
        if len(state_dict["param_groups"]) == len(self.param_groups):
            state_dict = {**state_dict, "param_groups": [{**ours, **g} for ours, g in
                                                         zip(self.param_groups, state_dict["param_groups"])]}
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
                if missing and (present or isinstance(self, (SGD, Lion))):  # their one key is all their state
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
                    if v.is_complex() != p.is_complex() or not (v.is_floating_point() or v.is_complex()):
                        raise ValueError(f"param {i}: state {k!r} has dtype {v.dtype}, expected "
                                         f"{'complex' if p.is_complex() else 'floating point'} like the param")


def _state_value(p, key, value):
    if key == "step" and isinstance(value, (int, float)):
        return torch.tensor(float(value), dtype=torch.float32, device=p.device)
    if not torch.is_tensor(value):
        return value
    if key == "step":
        return value.detach().to(device=p.device, dtype=torch.float32).clone()
    if value.is_sparse:  # torch.optim.SGD's momentum buffer after sparse grads: ours is dense, the same values
        value = value.to_dense()
    return value.detach().to(device=p.device, dtype=opmath(p.dtype)).clone()


class SGD(_Fused):
    """torch.optim.SGD plus fused penalties: `l1` (prox soft-threshold by lr*l1, or subgradient; "decoupled" is the
    same as "prox" here), `l0`, `nonneg`, and group lasso `group_l1` over the rows (`group_dim=0`) or columns
    (`group_dim=1`) of every param with dim >= 2 (exact prox, step lr). weight_decay is torch's coupled L2 (g += wd*p), so
    `SGD(params, lr, **fusedreg.elastic_net(alpha, l1_ratio))` is scikit-learn's elastic net."""
    _defaults = dict(momentum=0.0, dampening=0.0, nesterov=False, maximize=False)
    _op = "sgd_"
    _state = dict(momentum_buffers="momentum_buffer")

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *, l1=0.0,
                 l1_mode="prox", l0=0.0, nonneg=False, group_l1=0.0, group_dim=0, maximize=False, backend="auto",
                 master_weights=False, stochastic_rounding=False, foreach=None, differentiable=False, fused=None):
        self.backend = backend
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, l1=l1, l1_mode=l1_mode, l0=l0,
                                      nonneg=nonneg, group_l1=group_l1, group_dim=group_dim,
                                      master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                                      foreach=foreach, differentiable=differentiable, fused=fused))

    def _state_keys(self, group):
        # torch.optim.SGD records momentum_buffer (None before the first step) for every param it stepped with
        # momentum; some torch versions record None with momentum == 0 too.
        return (("momentum_buffer",), ()) if group["momentum"] != 0 else ((), ("momentum_buffer",))

    def _init_group(self, group, params, lists):
        pass  # torch's first step copies the gradient into a new buffer: _run makes the buffers

    def _run(self, params, names, lists, scalars, grad_scale, found_inf):
        held = lists["momentum_buffers"]
        new = [i for i, b in enumerate(held) if b is None]
        if not new:
            F.launch(self._op, names, lists, grad_scale, found_inf, first_step=False, **scalars)
            return
        # Run new and old buffers apart: the first step of a new buffer is buf = g.
        bufs = [_zeros_state(params[i]) for i in new]
        old = [i for i, b in enumerate(held) if b is not None]
        for first, idx, bs in ((True, new, locals_(bufs)), (False, old, [held[i] for i in old])):
            if idx:
                part = {k: [ts[i] for i in idx] for k, ts in lists.items() if k != "momentum_buffers"}
                F.launch(self._op, names, {**part, "momentum_buffers": bs}, grad_scale, found_inf,
                         first_step=first, **scalars)
        # Keep new buffers only when the step was taken, so a skipped (inf) step leaves state untouched. This
        # reads found_inf on the host only on a step that creates buffers (the first), never in steady state. A
        # skipped first step records torch's 'no buffer yet' (None), so a stepped param always has the key
        # (load_state_dict relies on it).
        taken = found_inf is None or not bool(found_inf.item())
        for i, b in zip(new, bufs):
            self.state[params[i]]["momentum_buffer"] = b if taken else None


class Adam(_Fused):
    """torch.optim.Adam plus fused penalties. The prox threshold uses Adam's per-element step:
    t = lr*l1 / (sqrt(v_hat) + eps), which converges to the lasso solution; l1_mode="decoupled" thresholds by
    lr*l1 instead (the L1 analogue of AdamW's decay: one scale whatever the gradients' size), and its group lasso
    is the closed form w_g * max(0, 1 - lr*group_l1*sqrt(|g|)/||w_g||). weight_decay is coupled.
    group_l1 (group lasso over rows/columns of params with dim >= 2, see `group_dim`) is the exact prox in the
    same metric: a group is zeroed when ||(sqrt(v_hat) + eps) * w_g|| <= lr*group_l1*sqrt(|g|), else shrunk
    elementwise by r/(r + lr*group_l1*sqrt(|g|)/denom_i) (fusedreg.reference.group_prox), so fixed points are
    group-lasso solutions whatever the spread of denom inside a group."""
    _defaults = dict(amsgrad=False, maximize=False, capturable=False, decoupled_weight_decay=False)
    _op = "adam_"
    _state = dict(exp_avgs="exp_avg", exp_avg_sqs="exp_avg_sq", max_exp_avg_sqs="max_exp_avg_sq",
                  state_steps="step")
    _keys = ("step", "exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *, l1=0.0,
                 l1_mode="prox", l0=0.0, nonneg=False, group_l1=0.0, group_dim=0, maximize=False, backend="auto",
                 master_weights=False, stochastic_rounding=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False):
        self.backend = backend
        # torch.optim.Adam's checks in its words, so that code (and torch's own error tests) see the same errors:
        # its foreach path cannot take tensor lr/betas, and although ours always can, foreach=True asks for it.
        if torch.is_tensor(lr) and foreach and not capturable:
            raise ValueError("lr as a Tensor is not supported for capturable=False and foreach=True")
        if len(betas) == 2 and torch.is_tensor(betas[0]) != torch.is_tensor(betas[1]):
            raise ValueError("betas must be either both floats or both Tensors")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
            if torch.is_tensor(beta) and foreach and not capturable:
                raise ValueError(f"betas[{i}] as a Tensor is not supported for capturable=False and foreach=True")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize, l1=l1, l1_mode=l1_mode, l0=l0,
                                      nonneg=nonneg, group_l1=group_l1, group_dim=group_dim,
                                      master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                                      foreach=foreach, capturable=capturable, differentiable=differentiable,
                                      fused=fused, decoupled_weight_decay=decoupled_weight_decay))

    def _extra(self, group):
        beta1, beta2 = group["betas"]
        return dict(beta1=beta1, beta2=beta2, decoupled=group["decoupled_weight_decay"])

    def _state_keys(self, group):
        keys = Adam._keys  # also for Muon's AdamW groups
        return (keys + ("max_exp_avg_sq",), ()) if group["amsgrad"] else (keys, ("max_exp_avg_sq",))

    def _init_group(self, group, params, lists):
        for i, p in enumerate(params):
            if lists["exp_avgs"][i] is None:
                st = self.state[p]
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                st["exp_avg"] = _zeros_state(p)
                st["exp_avg_sq"] = _zeros_state(p)
                for name in ("exp_avgs", "exp_avg_sqs", "state_steps"):
                    lists[name][i] = local(st[Adam._state[name]])
            # amsgrad switched on mid-run: the max starts at zero (torch.optim.Adam would raise a KeyError).
            if group["amsgrad"] and lists["max_exp_avg_sqs"][i] is None:
                self.state[p]["max_exp_avg_sq"] = _zeros_state(p)
                lists["max_exp_avg_sqs"][i] = local(self.state[p]["max_exp_avg_sq"])


class AdamW(Adam):
    """torch.optim.AdamW plus fused penalties: decoupled decay p *= 1 - lr*wd before the Adam step (so
    `elastic_net`'s weight_decay is not scikit-learn's L2 term here; use Adam or SGD for that)."""
    _defaults = dict(Adam._defaults, decoupled_weight_decay=True)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 l1=0.0, l1_mode="prox", l0=0.0, nonneg=False, group_l1=0.0, group_dim=0, maximize=False,
                 backend="auto", master_weights=False, stochastic_rounding=False, foreach=None, capturable=False,
                 differentiable=False, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, l1=l1, l1_mode=l1_mode, l0=l0,
                         nonneg=nonneg, group_l1=group_l1, group_dim=group_dim, maximize=maximize,
                         backend=backend, master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                         foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)

    def __setstate__(self, state):
        # As torch.optim.AdamW: whatever a loaded state says, AdamW's decay is decoupled.
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


class Adagrad(_Fused):
    """torch.optim.Adagrad plus fused penalties. With l1/l2 (and eps=0) it is TensorFlow's
    ProximalAdagradOptimizer: threshold eta*l1 and division by 1 + eta*l2, eta = lr/sqrt(acc); the accumulator
    starts at initial_accumulator_value. group_l1 is the group-lasso prox in the same metric (see Adam).
    l1_mode="decoupled": l1 and group_l1 with the scalar step clr = lr/(1 + (t-1)*lr_decay) alone (see Adam); l2
    and l0 keep the element's step clr/(sqrt(sum) + eps)."""
    _defaults = dict(lr_decay=0.0, initial_accumulator_value=0.0, maximize=False, l2=0.0)
    _op = "adagrad_"
    _state = dict(state_sums="sum", state_steps="step")
    _keys = ("step", "sum")

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10,
                 foreach=None, *, l1=0.0, l2=0.0, l1_mode="prox", l0=0.0, nonneg=False, group_l1=0.0, group_dim=0,
                 maximize=False, backend="auto", master_weights=False, stochastic_rounding=False,
                 differentiable=False, fused=None):
        self.backend = backend
        F.check_nonneg("initial_accumulator_value", initial_accumulator_value)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                                      initial_accumulator_value=initial_accumulator_value, maximize=maximize,
                                      l1=l1, l2=l2, l1_mode=l1_mode, l0=l0, nonneg=nonneg, group_l1=group_l1,
                                      group_dim=group_dim, master_weights=master_weights,
                                      stochastic_rounding=stochastic_rounding, foreach=foreach,
                                      differentiable=differentiable, fused=fused))
        # torch.optim.Adagrad creates its state eagerly, with the accumulator at its initial value.
        for group in self.param_groups:
            self._init_group(group, group["params"])

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if hasattr(self, "backend"):
            self._init_group(self.param_groups[-1], self.param_groups[-1]["params"])

    def _state_keys(self, group):
        return self._keys, ()

    def _init_group(self, group, params, lists=None):
        # State is made at construction; a param loaded without it starts from initial_accumulator_value.
        for i, p in enumerate(params):
            st = self.state[p]
            if any(k in st for k in self._keys) if lists is None else lists["state_sums"][i] is not None:
                continue
            st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            init = group["initial_accumulator_value"]
            # As torch.optim.Adagrad: a complex param's re and im accumulators both start at the value.
            st["sum"] = torch.full_like(p, complex(init, init) if p.is_complex() else init, dtype=opmath(p.dtype),
                                        memory_format=torch.preserve_format)
            if lists is not None:
                lists["state_sums"][i], lists["state_steps"][i] = local(st["sum"]), local(st["step"])


class Ftrl(_Fused):
    """FTRL-Proximal (McMahan et al., KDD 2013) as TensorFlow's FtrlOptimizer / Keras's Ftrl, fused. Per element,
    with the accumulator n (from initial_accumulator_value) and the linear term z (from 0):

        g_s = g + 2*l2_shrinkage*w;  n' = n + g^2;  sigma = (n'^(-lr_power) - n^(-lr_power)) / lr;
        z += g_s - sigma*w;  w = 0 if |z| <= l1 else -(z - sign(z)*l1) / ((beta + n'^(-lr_power))/lr + 2*l2)

    l1 and l2 are FTRL's own (TensorFlow's l1_/l2_regularization_strength: the penalty l1*sum|w| + l2*sum w^2,
    applied by the closed form); l2_shrinkage is l2_shrinkage_regularization_strength, beta Keras's beta.
    l1_mode="subgradient" adds l1*sign(w) to g instead (then the closed form's l1 is 0); l1_mode="decoupled" is
    refused (ValueError), FTRL's l1 being its own; l0 and nonneg are the
    exact argmin of the same per-element objective (w = 0 where |w| <= sqrt(2*l0/q), q the denominator above;
    w = max(w, 0)). group_l1 adds group_l1*sqrt(|g|)*||w_g|| (groups as in the other classes) to that objective;
    with l1 and l2 its exact argmin is the group prox, in the metric q, of the w above (per-element step 1/q:
    FTRL's penalties are not scaled by lr), applied after l0 and nonneg as the other classes order them.
    lr_power = -0.5 is Adagrad's step (from w = 0 with no penalties the same steps as torch.optim.Adagrad with
    eps=0), 0 plain SGD's. State per param, in opmath: "accumulator" (n) and "linear" (z), made on the param's
    first step. lr = 0 takes no step (TensorFlow needs lr > 0; FTRL divides by it), which is what
    torch.distributed.checkpoint's state initialization (an lr = 0 step) needs."""
    _defaults = dict(lr_power=-0.5, initial_accumulator_value=0.1, beta=0.0, l2=0.0, l2_shrinkage=0.0,
                     maximize=False)
    _op = "ftrl_"
    _state = dict(accumulators="accumulator", linears="linear")
    _keys = ("accumulator", "linear")

    def __init__(self, params, lr=1e-3, lr_power=-0.5, initial_accumulator_value=0.1, beta=0.0, *, l1=0.0,
                 l2=0.0, l2_shrinkage=0.0, l1_mode="prox", l0=0.0, nonneg=False, group_l1=0.0, group_dim=0,
                 maximize=False, backend="auto", master_weights=False, stochastic_rounding=False, foreach=None,
                 differentiable=False, fused=None):
        self.backend = backend
        super().__init__(params, dict(lr=lr, lr_power=lr_power, initial_accumulator_value=initial_accumulator_value,
                                      beta=beta, l1=l1, l2=l2, l2_shrinkage=l2_shrinkage, l1_mode=l1_mode, l0=l0,
                                      nonneg=nonneg, group_l1=group_l1, group_dim=group_dim, maximize=maximize,
                                      master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                                      foreach=foreach, differentiable=differentiable, fused=fused))

    def _check(self, group, scalars=None):
        F.check_nonneg("initial_accumulator_value", group["initial_accumulator_value"])
        # TensorFlow's Ftrl is real-only and torch has none to follow; the complex path (re and im as two real
        # elements, l1 as group lasso on the pairs) does not fit FTRL's accumulator or its closed form.
        if any(p.is_complex() for p in group.get("params", ())):
            raise ValueError("Ftrl takes real floating-point params only, not complex ones")
        super()._check(group, scalars)

    def _state_keys(self, group):
        return self._keys, ()

    def _init_group(self, group, params, lists):
        for i, p in enumerate(params):
            if lists["accumulators"][i] is None:
                st = self.state[p]
                st["accumulator"] = torch.full_like(p, group["initial_accumulator_value"], dtype=opmath(p.dtype),
                                                    memory_format=torch.preserve_format)
                st["linear"] = _zeros_state(p)
                lists["accumulators"][i], lists["linears"][i] = local(st["accumulator"]), local(st["linear"])


class Lion(_Fused):
    """Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023) as lion-pytorch's Lion, fused, plus
    penalties. Per element, with the state "exp_avg" m (in opmath, from 0 on a param's first step):

        p *= 1 - lr*wd;  p -= lr*sign(beta1*m + (1-beta1)*g);  m = beta2*m + (1-beta2)*g

    The signature, group keys and state are lion-pytorch's, so state_dicts load both ways. decoupled_weight_decay=True
    divides weight_decay by the initial lr, as lion-pytorch does. use_triton is accepted for lion-pytorch's
    signature and changes nothing: `backend` chooses the kernel (backend="triton" for Triton).
    The penalties take the scalar step lr, as in SGD (Lion's update has no per-element step): l1_mode="decoupled"
    (the default) soft-thresholds by lr*l1 after the update, "subgradient" adds l1*sign(w) to g first; "prox" is
    refused (ValueError). l0, nonneg and group_l1 (the closed form w_g*max(0, 1 - lr*group_l1*sqrt(|g|)/||w_g||)
    over rows or columns, see `group_dim`) as in SGD. Sparse grads and complex params are refused
    (lion-pytorch's sign of a complex number is z/|z|, not the elementwise step on (re, im))."""
    _defaults = dict(maximize=False, l1_mode="decoupled")
    _op = "lion_"
    _state = dict(exp_avgs="exp_avg")
    _keys = ("exp_avg",)

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, use_triton=False,
                 decoupled_weight_decay=False, *, l1=0.0, l1_mode="decoupled", l0=0.0, nonneg=False, group_l1=0.0,
                 group_dim=0, maximize=False, backend="auto", master_weights=False, stochastic_rounding=False,
                 foreach=None, differentiable=False, fused=None):
        self.backend = backend
        # lion-pytorch keeps these on the optimizer, not in the groups: its state_dicts do not carry them.
        self._init_lr = lr
        self.decoupled_wd = bool(decoupled_weight_decay)
        if self.decoupled_wd and not float(lr) > 0:
            raise ValueError(f"Invalid lr value: {lr} (decoupled_weight_decay divides weight_decay by it: must be "
                             f"> 0)")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize, l1=l1,
                                      l1_mode=l1_mode, l0=l0, nonneg=nonneg, group_l1=group_l1, group_dim=group_dim,
                                      master_weights=master_weights, stochastic_rounding=stochastic_rounding,
                                      foreach=foreach, differentiable=differentiable, fused=fused))

    def __getstate__(self):
        return {**super().__getstate__(), "_init_lr": self._init_lr, "decoupled_wd": self.decoupled_wd}

    def _extra(self, group):
        beta1, beta2 = group["betas"]
        wd = group["weight_decay"]
        return dict(beta1=beta1, beta2=beta2, weight_decay=wd / float(self._init_lr) if self.decoupled_wd else wd)

    def _check(self, group, scalars=None):
        if any(p.is_complex() for p in group.get("params", ())):
            raise ValueError("Lion takes real floating-point params only, not complex ones: lion-pytorch's sign of "
                             "a complex number is z/|z|, which the elementwise kernels do not compute")
        super()._check(group, scalars)

    def _state_keys(self, group):
        return self._keys, ()

    def _init_group(self, group, params, lists):
        for i, p in enumerate(params):
            if lists["exp_avgs"][i] is None:
                self.state[p]["exp_avg"] = _zeros_state(p)
                lists["exp_avgs"][i] = local(self.state[p]["exp_avg"])


class Muon(_Fused):
    """torch.optim.Muon plus fused penalties. Per 2-D param (torch's order): buf = lerp(buf, g, 1 - momentum);
    u = lerp(g, buf, momentum) with nesterov, else buf; O = Newton-Schulz(u) in bfloat16 (torch's iteration:
    ns_coefficients, ns_steps, eps); p *= 1 - lr*weight_decay; p -= lr*ratio*O, ratio = sqrt(max(1, A/B))
    (adjust_lr_fn None or "original") or 0.2*sqrt(max(A, B)) ("match_rms_adamw"). Then the penalties with the
    scalar step lr (Muon has no per-element metric, so they are SGD's): l1 soft-thresholds by lr*l1 (l1_mode
    "decoupled", the default; "subgradient" adds l1*sign(w) to g before the momentum; "prox" is refused: there is
    no diagonal metric for it to use), l0 zeroes |w| <= sqrt(2*lr*l0), nonneg projects, and group_l1 is the
    closed-form group prox with step lr over rows (group_dim=0) or columns (1). Two fused ops run around the
    orthogonalization (fusedreg._ops: muon_momentum_, muon_); the orthogonalization itself is torch's matmuls.
    2-D params only, real only, dense grads, as torch.optim.Muon; DTensor params are refused (the orthogonalization
    needs the whole matrix). State: "momentum_buffer" (opmath), made at a param's first step.

    AdamW groups (KellerJordan/Muon's MuonWithAuxAdam): a param group with use_muon=False is stepped by
    fusedreg.AdamW's math in the same step() (embeddings, head, norms, biases: any shape), with AdamW's keys and
    defaults (lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, l1_mode="prox") and its own
    penalties; its state is AdamW's ("step", "exp_avg", "exp_avg_sq")."""
    _defaults = dict(momentum=0.95, nesterov=True, ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5,
                     adjust_lr_fn=None, maximize=False, l1_mode="decoupled")
    _op = "muon_momentum_"
    _ops = ("muon_momentum_", "muon_")
    _state = dict(momentum_buffers="momentum_buffer")
    _keys = ("momentum_buffer",)
    _orthogonalization = ("ns_coefficients", "ns_steps", "eps", "adjust_lr_fn")
    # The keys an AdamW group (use_muon=False) takes when it names none: AdamW's defaults, not Muon's.
    _adamw_defaults = dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, l1_mode="prox",
                           decoupled_weight_decay=True)

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=(3.4445, -4.775, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None, *, l1=0.0,
                 l1_mode="decoupled", l0=0.0, nonneg=False, group_l1=0.0, group_dim=0, maximize=False,
                 backend="auto", master_weights=False, stochastic_rounding=False):
        self.backend = backend
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps,
                                      adjust_lr_fn=adjust_lr_fn, maximize=maximize, l1=l1, l1_mode=l1_mode, l0=l0,
                                      nonneg=nonneg, group_l1=group_l1, group_dim=group_dim,
                                      master_weights=master_weights, stochastic_rounding=stochastic_rounding))

    def add_param_group(self, param_group):
        if isinstance(param_group, dict) and not param_group.get("use_muon", True):
            param_group = {**self._adamw_defaults, **param_group, "decoupled_weight_decay": True}
        super().add_param_group(param_group)

    def _kind(self, group):
        return ("adam_", Adam._state, Adam._keys) if _adamw(group) else super()._kind(group)

    def _extra(self, group):
        return Adam._extra(self, group) if _adamw(group) else {}

    def _scalars(self, group):
        if _adamw(group):
            return super()._scalars(group)
        # Both ops' scalars and the orthogonalization's keys; _run hands each op its own.
        kw = {a.name: group[a.name] for op in self._ops for a in _ops.ARGS[op] if not a.role and a.name in group}
        kw.update(F.l1_flags(group["l1_mode"]))
        kw.update({k: group[k] for k in self._orthogonalization})
        return kw

    def _check(self, group, scalars=None):
        if _adamw(group):
            return super()._check(group, scalars)
        # torch.optim.Muon's errors in its words (its tests match them)
        if group.get("l1_mode") == "prox":
            raise ValueError("l1_mode='prox' is not defined for Muon: its update has no per-element step for the "
                             "threshold to take; use l1_mode='decoupled' (the default: soft-threshold by lr*l1 "
                             "after the step) or 'subgradient'")
        if group.get("adjust_lr_fn") not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"Adjust learning rate function {group['adjust_lr_fn']} is not supported")
        if len(group["ns_coefficients"]) != 3:
            raise ValueError("Coefficients must be a tuple of exactly 3 values")
        steps = group["ns_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps < 100:
            raise ValueError(f"Number of steps must be an int in [0, 100) (less than 100 for computational "
                             f"efficiency), got {steps!r}")
        dtensor = _dtensor_type()
        for p in group.get("params", ()):
            if p.ndim != 2:
                raise ValueError(f"Muon only supports 2D parameters whereas we found a parameter with size: "
                                 f"{p.size()}")
            if dtensor is not None and isinstance(p, dtensor):
                raise ValueError("fusedreg.Muon does not take DTensor params: its orthogonalization needs each "
                                 "whole matrix (torch.optim.Muon runs it through DTensor's ops)")
            if scalars is not None and p.is_complex():  # torch.optim.Muon refuses them at the step
                raise RuntimeError("Muon does not support complex parameters")
        super()._check(group, scalars)

    def _state_keys(self, group):
        return Adam._state_keys(self, group) if _adamw(group) else (self._keys, ())

    def _init_group(self, group, params, lists):
        if _adamw(group):
            return Adam._init_group(self, group, params, lists)
        # torch.optim.Muon's buffers start at zero
        for i, p in enumerate(params):
            if lists["momentum_buffers"][i] is None:
                self.state[p]["momentum_buffer"] = _zeros_state(p)
                lists["momentum_buffers"][i] = local(self.state[p]["momentum_buffer"])

    def _run(self, params, names, lists, scalars, grad_scale, found_inf):
        if "beta1" in scalars:  # an AdamW group (_scalars)
            return F.launch("adam_", names, lists, grad_scale, found_inf, **scalars)
        mine = [{a.name: scalars[a.name] for a in _ops.ARGS[op] if not a.role and a.name in scalars}
                for op in self._ops]
        ps, bufs = lists["params"], lists["momentum_buffers"]
        nesterov = scalars["nesterov"]
        updates = [torch.empty_like(b) for b in bufs] if nesterov else []
        F.launch("muon_momentum_", names, {"params": ps, "grads": lists["grads"], "momentum_buffers": bufs,
                                            "updates": updates}, grad_scale, found_inf, **mine[0])
        # With found_inf set the buffers are unchanged and this runs on stale input; muon_ then skips (no sync).
        coefficients, steps, eps = scalars["ns_coefficients"], scalars["ns_steps"], scalars["eps"]
        orthogonal = [newton_schulz(u, coefficients=coefficients, steps=steps, eps=eps).to(
            p.dtype, memory_format=torch.contiguous_format) for p, u in zip(ps, updates or bufs)]
        by_ratio = {}
        for i, p in enumerate(ps):
            by_ratio.setdefault(lr_ratio(p.shape, scalars["adjust_lr_fn"]), []).append(i)
        for ratio, idx in by_ratio.items():
            F.launch("muon_", names, {"params": [ps[i] for i in idx], "grads": [orthogonal[i] for i in idx]}, None,
                     found_inf, lr_ratio=ratio, **mine[1])


def _adamw(group):
    """Whether a Muon param group is an AdamW group (use_muon=False)."""
    return group is not None and not group.get("use_muon", True)


def newton_schulz(u, *, coefficients, steps, eps):
    """torch.optim.Muon's orthogonalization of a matrix u, in bfloat16: the quintic Newton-Schulz iteration
    X <- a*X + (b*A + c*A@A)@X, A = X@X^T, from X = u/||u|| (||u|| at least eps), on the wide orientation."""
    a, b, c = coefficients
    x = u.bfloat16()  # a copy: u is opmath
    tall = u.size(0) > u.size(1)
    if tall:
        x = x.T
    x.div_(x.norm().clamp(min=eps))
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def lr_ratio(shape, adjust_lr_fn):
    """torch.optim.Muon's adjusted lr over lr for a param of `shape` (A, B): sqrt(max(1, A/B)) ("original", None)
    or 0.2*sqrt(max(A, B)) ("match_rms_adamw", Moonshot's: the update's RMS of AdamW's)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols))


def _zeros_state(p):
    return torch.zeros_like(p, dtype=opmath(p.dtype), memory_format=torch.preserve_format)
