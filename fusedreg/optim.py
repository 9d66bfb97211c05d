"""Drop-in replacements for torch.optim.SGD / Adam / AdamW / Adagrad with fused penalties.

The classes keep torch.optim's signatures, group keys and state layout (so state_dicts move both ways) and
delegate every update to fusedreg.functional. Penalty keys (l1, l1_mode, ...) may differ per param group.
"""
import torch

from . import functional as F
from .reference import opmath

# Penalty group keys every optimizer accepts, with their defaults.
PENALTIES = dict(l1=0.0, l1_mode="prox", l0=0.0, nonneg=False)


class _Fused(torch.optim.Optimizer):
    # GradScaler hands us grad_scale/found_inf instead of unscaling and checking the grads itself.
    _step_supports_amp_scaling = True
    _defaults = {}

    def __init__(self, params, defaults):
        self._check(defaults)
        super().__init__(params, {**PENALTIES, **defaults})

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in {**PENALTIES, **self._defaults}.items():
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

    def _step_group(self, group, grad_scale, found_inf):
        raise NotImplementedError

    def _grads(self, group):
        return [p for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            self._check(group)
            params = self._grads(group)
            F.check_tensors(params, grads=[p.grad for p in params])
        for group in self.param_groups:
            self._step_group(group, grad_scale, found_inf)
        return loss

    def load_state_dict(self, state_dict):
        # torch casts floating state to the param's dtype, which would round fp32 moments of bf16 params down;
        # keep the saved values and put them in opmath on the param's device instead.
        saved = state_dict["state"]
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        super().load_state_dict(state_dict)
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            if i in saved:
                self.state[p] = {k: _state_value(p, k, v) for k, v in saved[i].items()}


def _state_value(p, key, value):
    if not torch.is_tensor(value):
        return value
    if key == "step":
        return value.detach().to(device=p.device, dtype=torch.float32).clone()
    return value.detach().to(device=p.device, dtype=opmath(p.dtype)).clone()


def _check_common(group):
    F.check_nonneg("lr", group["lr"])
    F.check_penalties(group["l1"], group["l1_mode"], group.get("l2", 0.0), group["l0"], group["weight_decay"])


def _penalty_args(group, backend):
    return dict(l1=group["l1"], l1_mode=group["l1_mode"], l0=group["l0"], nonneg=group["nonneg"], backend=backend)


class SGD(_Fused):
    """torch.optim.SGD plus fused penalties: `l1` (prox soft-threshold by lr*l1, or subgradient), `l0`,
    `nonneg`. weight_decay is torch's coupled L2 (g += wd*p)."""
    _defaults = dict(momentum=0.0, dampening=0.0, nesterov=False, maximize=False)

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False, *, l1=0.0,
                 l1_mode="prox", l0=0.0, nonneg=False, maximize=False, backend="auto"):
        self.backend = backend
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize, l1=l1, l1_mode=l1_mode, l0=l0,
                                      nonneg=nonneg))

    def _check(self, group):
        _check_common(group)
        F.check_nonneg("momentum", group["momentum"])
        F.check_nonneg("dampening", group["dampening"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _step_group(self, group, grad_scale, found_inf):
        params = self._grads(group)
        kw = dict(lr=group["lr"], momentum=group["momentum"], dampening=group["dampening"],
                  weight_decay=group["weight_decay"], nesterov=group["nesterov"], maximize=group["maximize"],
                  grad_scale=grad_scale, found_inf=found_inf, **_penalty_args(group, self.backend))
        if group["momentum"] == 0:
            F.sgd(params, [p.grad for p in params], [], **kw)
            return
        # torch's first step copies the gradient into a new buffer: run new and old buffers apart.
        new = [p for p in params if self.state[p].get("momentum_buffer") is None]
        old = [p for p in params if self.state[p].get("momentum_buffer") is not None]
        bufs = [torch.zeros_like(p, dtype=opmath(p.dtype), memory_format=torch.preserve_format) for p in new]
        for first, ps, bs in ((True, new, bufs), (False, old, [self.state[p]["momentum_buffer"] for p in old])):
            if ps:
                F.sgd(ps, [p.grad for p in ps], bs, first_step=first, **kw)
        # Only keep new buffers when the step was taken, so a skipped (inf) step leaves state untouched.
        if found_inf is None or not bool(found_inf.item()):
            for p, b in zip(new, bufs):
                self.state[p]["momentum_buffer"] = b


class Adam(_Fused):
    """torch.optim.Adam plus fused penalties. The prox threshold uses Adam's per-element step:
    t = lr*l1 / (sqrt(v_hat) + eps), which converges to the lasso solution. weight_decay is coupled."""
    _decoupled = False
    _defaults = dict(amsgrad=False, maximize=False)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *, l1=0.0,
                 l1_mode="prox", l0=0.0, nonneg=False, maximize=False, backend="auto"):
        self.backend = backend
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize, l1=l1, l1_mode=l1_mode, l0=l0,
                                      nonneg=nonneg))

    def _check(self, group):
        _check_common(group)
        F.check_nonneg("eps", group["eps"])
        for i, b in enumerate(group["betas"]):
            if not 0.0 <= float(b) < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b} (must be in [0, 1))")

    def _step_group(self, group, grad_scale, found_inf):
        params = self._grads(group)
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, dtype=opmath(p.dtype), memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
            if group["amsgrad"] and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
        st = [self.state[p] for p in params]
        F.adam(params, [p.grad for p in params], [s["exp_avg"] for s in st], [s["exp_avg_sq"] for s in st],
               [s["max_exp_avg_sq"] for s in st] if group["amsgrad"] else [], [s["step"] for s in st],
               lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"],
               weight_decay=group["weight_decay"], decoupled=self._decoupled, amsgrad=group["amsgrad"],
               maximize=group["maximize"], grad_scale=grad_scale, found_inf=found_inf,
               **_penalty_args(group, self.backend))


class AdamW(Adam):
    """torch.optim.AdamW plus fused penalties: decoupled decay p *= 1 - lr*wd before the Adam step."""
    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 l1=0.0, l1_mode="prox", l0=0.0, nonneg=False, maximize=False, backend="auto"):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, l1=l1, l1_mode=l1_mode, l0=l0,
                         nonneg=nonneg, maximize=maximize, backend=backend)


class Adagrad(_Fused):
    """torch.optim.Adagrad plus fused penalties. With l1/l2 (and eps=0) it is TensorFlow's
    ProximalAdagradOptimizer: threshold eta*l1 and division by 1 + eta*l2, eta = lr/sqrt(acc)."""
    _defaults = dict(lr_decay=0.0, initial_accumulator_value=0.0, maximize=False, l2=0.0)

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10, *,
                 l1=0.0, l2=0.0, l1_mode="prox", l0=0.0, nonneg=False, maximize=False, backend="auto"):
        self.backend = backend
        F.check_nonneg("initial_accumulator_value", initial_accumulator_value)
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                                      initial_accumulator_value=initial_accumulator_value, maximize=maximize,
                                      l1=l1, l2=l2, l1_mode=l1_mode, l0=l0, nonneg=nonneg))
        # torch.optim.Adagrad creates its state eagerly, with the accumulator at its initial value.
        for group in self.param_groups:
            self._init_group(group)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if hasattr(self, "backend"):
            self._init_group(self.param_groups[-1])

    def _init_group(self, group):
        for p in group["params"]:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["sum"] = torch.full_like(p, group["initial_accumulator_value"], dtype=opmath(p.dtype),
                                               memory_format=torch.preserve_format)

    def _check(self, group):
        _check_common(group)
        F.check_nonneg("lr_decay", group["lr_decay"])
        F.check_nonneg("eps", group["eps"])

    def _step_group(self, group, grad_scale, found_inf):
        params = self._grads(group)
        st = [self.state[p] for p in params]
        F.adagrad(params, [p.grad for p in params], [s["sum"] for s in st], [s["step"] for s in st],
                  lr=group["lr"], lr_decay=group["lr_decay"], weight_decay=group["weight_decay"], eps=group["eps"],
                  maximize=group["maximize"], l2=group["l2"], grad_scale=grad_scale, found_inf=found_inf,
                  **_penalty_args(group, self.backend))
