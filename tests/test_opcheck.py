"""torch.library.opcheck (schema mutations, fake kernel, autograd registration, AOT dispatch) of every fusedreg op
on every kernel registered for it: the C++ CPU kernels, the CUDA kernels where there is a GPU, and the Triton
custom ops fusedreg::triton_*. The only place opcheck runs; its calls come from tests/cases.py.
"""
import pytest
import torch

import fusedreg
from fusedreg import _ops
from cases import OPS, build

TARGETS = ("cpu", "cuda", "triton")

# Per op, hyperparameters that switch on every option at least once (AMP tensors: the amp axis below).
VARIANTS = {
    "sgd_": {"plain": dict(weight_decay=1e-2, l1=0.1, l2=0.01, group_l1=0.05),
             "momentum": dict(momentum=0.9, weight_decay=0.01, nesterov=True, l1=0.01, l1_subgradient=True,
                              nonneg=True),
             # sparse grads: the rows of each param of cases.SHAPES the grads hold
             "rows": dict(momentum=0.9, l1=0.1, l2=0.01, rows=[[0, 3], [2, 5, 6], []])},
    "adam_": {"adamw": dict(lr=1e-3, weight_decay=1e-2, decoupled=True, l1=0.1, l2=0.01, l0=0.001, nonneg=True,
                            group_l1=0.05, group_dim=1),
              "amsgrad": dict(amsgrad=True, maximize=True, l1=0.01, l2=0.02, l0=0.001, group_l1=0.03),
              "decoupled_l1": dict(decoupled=True, weight_decay=1e-2, l1=0.1, l1_decoupled=True, l0=0.001,
                                   group_l1=0.05)},
    "adagrad_": {"plain": dict(lr_decay=0.01, weight_decay=1e-2, maximize=True, l1=0.1, l1_subgradient=True,
                               group_l1=0.05),
                 # a step that found_inf skips
                 "found_inf": dict(l1=0.01, l2=0.02, l0=0.001, group_l1=0.03, group_dim=1,
                                   found_inf=torch.tensor(1.0)),
                 "rows": dict(lr_decay=0.01, l1=0.1, l0=0.001, nonneg=True, rows=[[1, 2, 4], [0], []]),
                 "decoupled_rows": dict(l1=0.1, l1_decoupled=True, l2=0.01, rows=[[1, 2, 4], [0], []]),
                 "decoupled_group": dict(l1=0.1, l1_decoupled=True, group_l1=0.05, group_dim=1)},
    "ftrl_": {"plain": dict(beta=0.5, l2_shrinkage=0.01, l1=0.1, l2=0.02, l0=0.001, nonneg=True, group_l1=0.5),
              "power_max_subgrad": dict(lr_power=-0.7, maximize=True, l1=0.01, l1_subgradient=True, group_l1=0.5,
                                        group_dim=1),
              "rows": dict(lr_power=-0.6, l2_shrinkage=0.01, l1=0.1, l2=0.02, rows=[[0, 2, 3], [6, 1], []])},
    "lion_": {"plain": dict(weight_decay=0.1, l1=0.1, l1_decoupled=True, l2=0.01, l0=0.001, nonneg=True,
                            group_l1=0.05),
              "betas_max_subgrad": dict(beta1=0.5, beta2=0.9, maximize=True, l1=0.01, l1_subgradient=True,
                                        group_l1=0.05, group_dim=1)},
    "muon_momentum_": {"nesterov_subgrad": dict(momentum=0.9, l1=0.1, l1_subgradient=True),
                       "plain_max": dict(nesterov=False, maximize=True, l1=0.1)},
    "muon_": {"group_rows": dict(lr_ratio=1.5, weight_decay=0.1, l1=0.1, l2=0.01, l0=0.001, nonneg=True,
                                 group_l1=0.05),
              "group_cols_subgrad": dict(l1=0.1, l1_subgradient=True, group_l1=0.05, group_dim=1)},
}
CASES = [(op, name) for op in VARIANTS for name in VARIANTS[op]]


def why_not(target):
    if target == "triton":
        why = fusedreg.backends.explain()["triton"]
        if why == "available" and not all(hasattr(torch.ops.fusedreg, f"triton_{op}") for op in OPS):
            why = "the Triton custom ops fusedreg::triton_* did not register"
    else:
        why = fusedreg.backends.explain()["cpp" if target == "cpu" else "cuda"]
    return "" if why == "available" else why


def params():
    rows = []
    for target in TARGETS:
        why = why_not(target)
        for op, name in CASES:
            # Triton's interpreter is slow, and its custom ops share one implementation across dtypes
            for dtype in (torch.float32, torch.bfloat16) if target != "triton" else (torch.float32,):
                for amp in (False, True):
                    rows.append(pytest.param(target, op, name, dtype, amp,
                                             marks=pytest.mark.skipif(bool(why), reason=f"{target}: {why}"),
                                             id=f"{target}-{op}{name}-{str(dtype)[6:]}-{'amp' if amp else 'plain'}"))
    return rows


@pytest.mark.parametrize("target,op,name,dtype,amp", params())
def test_opcheck(target, op, name, dtype, amp):
    device = "cuda" if target == "cuda" or (target == "triton" and torch.cuda.is_available()) else "cpu"
    hp = dict(VARIANTS[op][name])
    if amp:  # grad_scale, found_inf and lr_tensor: the tensor arguments that are None in a plain call
        hp.setdefault("found_inf", torch.tensor(0.0))
        hp.update(grad_scale=torch.tensor(2.0))
        if "lr_tensor" in _ops.defaults(op):  # muon_momentum_ has no lr
            hp.update(lr_tensor=torch.tensor(0.02, dtype=torch.float64))
    case = build(op, dtype=dtype, device=device, gen=torch.Generator().manual_seed(3), **hp)
    fn = getattr(torch.ops.fusedreg, op if target != "triton" else f"triton_{op}")
    torch.library.opcheck(fn.default, *case.args())


def test_every_op_is_covered():
    assert set(OPS) == set(_ops.SCHEMAS) == {op for op, _ in CASES}
