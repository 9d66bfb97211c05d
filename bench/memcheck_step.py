"""A few steps of every op for compute-sanitizer memcheck (bench/gpu.sh): sizes off the vector width, views at a
misaligned storage offset, a tensor over one chunk, 2-D and 3-D params with group lasso on rows and on columns,
every elementwise penalty and mode of l1, grad scaling, found_inf clear and set, and sparse grads (rows) in the ops
that take them. The calls come from the tests' op-case builder (tests/cases.py).

    python bench/memcheck_step.py [cuda|cpu]     (cpu: the same calls on the CPU kernels, run by the tests so
                                                  that this script keeps up with the op schemas)
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import fusedreg._ops  # noqa: E402,F401
import fusedreg._C  # noqa: E402,F401  (the native kernels, or fail: this script checks nothing else)
from cases import OPS, build  # noqa: E402

dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
SHAPES = [(1,), (3,), (5,), (4097,), (65536 + 3,)] + [(7,)] * 40 + [(33, 65), (65, 33), (4, 3, 5)]
# An op's own options that add a path through its kernel (an op not listed: its defaults).
OPTIONS = {"sgd_": dict(momentum=0.9, weight_decay=1e-2, nesterov=True),
           "adam_": dict(lr=1e-3, weight_decay=1e-2, decoupled=True, amsgrad=True),
           "adagrad_": dict(lr_decay=0.01, weight_decay=1e-2),
           "ftrl_": dict(lr_power=-0.6, beta=0.1, l2_shrinkage=1e-3),
           "lion_": dict(beta1=0.8, beta2=0.95, weight_decay=1e-2, maximize=True),
           "muon_momentum_": dict(momentum=0.9, maximize=True),
           "muon_": dict(lr_ratio=1.5, weight_decay=1e-2)}
# Every elementwise penalty and mode of l1 (the modes exclude each other); a set an op's contract refuses (Ftrl's
# decoupled l1), or names an argument it lacks (muon_momentum_ takes only subgradient l1), is left out for it.
PENALTIES = [dict(l1=1e-3, l2=1e-3, l0=1e-4, nonneg=True), dict(l1=1e-3, l1_subgradient=True),
             dict(l1=1e-3, l1_decoupled=True)]
GROUPS = ((0.0, 0), (1e-2, 0), (1e-2, 1))


def accepts(op, pen):
    try:
        case = build(op, [(2,)], **pen)
        fusedreg._ops.check(op, **case.lists, **case.kw)
    except (RuntimeError, TypeError):
        return False
    return True


for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    for op in OPS:
        for pen in [p for p in PENALTIES if accepts(op, p)]:
            base = build(op, SHAPES, dtype, scale=2.0, init={"state_steps": 0.0}, **OPTIONS.get(op, {}), **pen)
            for offset in (0, 1):
                for group_l1, group_dim in GROUPS if "group_dim" in base.kw else GROUPS[:1]:
                    case = base.clone(device=dev, offset=offset)
                    if "group_dim" in base.kw:  # muon_momentum_ has no group lasso
                        case.kw.update(group_l1=group_l1, group_dim=group_dim)
                    for found in (0.0, 1.0):
                        case.kw["found_inf"].fill_(found)
                        case.call(getattr(torch.ops.fusedreg, op))
                    assert all(bool(torch.isfinite(t.float()).all()) for t in case.params), \
                        f"non-finite params after the {op} steps with {pen}"
# Sparse grads in the ops that take them (rows): about half the rows of every param, in random order.
gen = torch.Generator().manual_seed(0)
ROWS = [torch.randperm(s[0], generator=gen)[:(s[0] + 1) // 2].tolist() for s in SHAPES]
for dtype in (torch.float32, torch.bfloat16, torch.float64):
    for op in [op for op in OPS if "rows" in fusedreg._ops.defaults(op)]:
        base = build(op, SHAPES, dtype, scale=2.0, init={"state_steps": 0.0}, rows=ROWS, **OPTIONS.get(op, {}),
                     **PENALTIES[0])
        for offset in (0, 1):
            case = base.clone(device=dev, offset=offset)
            for found in (0.0, 1.0):
                case.kw["found_inf"].fill_(found)
                case.call(getattr(torch.ops.fusedreg, op))
            assert all(bool(torch.isfinite(t.float()).all()) for t in case.params), \
                f"non-finite params after the sparse {op} steps"
if dev == "cuda":
    torch.cuda.synchronize()
print("memcheck step script done")
