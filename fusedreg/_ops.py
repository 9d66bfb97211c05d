"""The op schemas, defined once.

The C++ extension registers CPU and CUDA kernels under these names (csrc/), the pure-PyTorch reference is the
"default" kernel for any other device, and the fake kernels let torch.compile trace through a step. Every op
updates its tensors in place and returns nothing.

Per-element order inside every op (torch.optim's, then ours):
  g = grad / grad_scale  ->  g = -g if maximize  ->  g += l1*sign(p) if l1_subgradient  ->  g += wd*p (coupled)
  -> optimizer update (AdamW: p *= 1 - lr*wd first)  ->  proximal penalties with the element's step t:
  soft-threshold by t*l1 (unless subgradient), divide by 1 + t*l2, zero where |p| <= sqrt(2*t*l0), max(p, 0).
  t = lr for SGD, lr/denom for Adam (denom = sqrt(v_hat) + eps), clr/(sqrt(sum) + eps) for Adagrad.
Then, when group_l1 > 0, the group-lasso prox on every param with dim >= 2 (groups: rows for group_dim 0,
columns for 1), in the same metric (reference.group_prox), applied to the param as just written.
When found_inf is given and nonzero, nothing changes and no step counter advances.
lr_tensor (optional, last): a one-element floating tensor that replaces the float lr. The CUDA kernels read it on
the device (no host sync, so a step can be captured in a CUDA graph); the other kernels read it on the host.
"""
import torch

LIB = "fusedreg"

_PENALTY = ("float l1, bool l1_subgradient, float l2, float l0, bool nonneg, float group_l1, int group_dim, "
            "Tensor? grad_scale, Tensor? found_inf, Tensor? lr_tensor=None")

SCHEMAS = {
    "sgd_": "sgd_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, float lr, float momentum, "
            "float dampening, float weight_decay, bool nesterov, bool maximize, bool first_step, "
            + _PENALTY + ") -> ()",
    "adam_": "adam_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
             "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps, float lr, float beta1, float beta2, "
             "float eps, float weight_decay, bool decoupled, bool amsgrad, bool maximize, "
             + _PENALTY + ") -> ()",
    "adagrad_": "adagrad_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state_sums, Tensor(c!)[] state_steps, "
                "float lr, float lr_decay, float weight_decay, float eps, bool maximize, "
                + _PENALTY + ") -> ()",
}

for _name, _schema in SCHEMAS.items():
    torch.library.define(f"{LIB}::{_schema.split('(', 1)[0]}", "(" + _schema.split("(", 1)[1])
    # No outputs, so the fake kernel has nothing to allocate: the mutations are declared in the schema.
    torch.library.register_fake(f"{LIB}::{_name}")(lambda *args, **kwargs: None)
