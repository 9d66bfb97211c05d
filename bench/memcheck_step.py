"""A few steps of every op for compute-sanitizer memcheck (bench/gpu.sh): sizes off the vector width, views at a
misaligned storage offset, a tensor over one chunk, 2-D and 3-D params with group lasso on rows and on columns,
grad scaling, found_inf clear and set, and sparse grads (rows) in SGD, Adagrad and Ftrl. The calls come from the tests'
op-case builder (tests/cases.py).

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
# Every option that adds a path through a kernel, across the ops.
HP = {"sgd_": dict(momentum=0.9, weight_decay=1e-2, nesterov=True, l1=1e-3, l2=1e-3, l0=1e-4),
      "adam_": dict(lr=1e-3, weight_decay=1e-2, decoupled=True, amsgrad=True, l1=1e-3, l2=1e-3, l0=1e-4,
                    nonneg=True),
      "adagrad_": dict(lr_decay=0.01, weight_decay=1e-2, l1=1e-3, l1_subgradient=True),
      "ftrl_": dict(lr_power=-0.6, beta=0.1, l2_shrinkage=1e-3, l1=1e-3, l2=1e-3, l0=1e-4, nonneg=True),
      "muon_momentum_": dict(momentum=0.9, maximize=True, l1=1e-3, l1_subgradient=True),
      "muon_": dict(lr_ratio=1.5, weight_decay=1e-2, l1=1e-3, l2=1e-3, l0=1e-4, nonneg=True)}
# Ftrl refuses group lasso; muon_momentum_ has none (and no lr).
GROUPS = {op: ((0.0, 0),) if op == "ftrl_" else ((0.0, 0), (1e-2, 0), (1e-2, 1)) for op in OPS
          if op != "muon_momentum_"}

for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    for op in OPS:
        base = build(op, SHAPES, dtype, scale=2.0, init={"state_steps": 0.0}, **HP[op])
        for offset in (0, 1):
            for group_l1, group_dim in GROUPS.get(op, ((0.0, 0),)):
                case = base.clone(device=dev, offset=offset)
                if op in GROUPS:
                    case.kw.update(group_l1=group_l1, group_dim=group_dim)
                for found in (0.0, 1.0):
                    case.kw["found_inf"].fill_(found)
                    case.call(getattr(torch.ops.fusedreg, op))
                assert all(bool(torch.isfinite(t.float()).all()) for t in case.params), \
                    f"non-finite params after the {op} steps"
# Sparse grads in the ops that take them (rows): about half the rows of every param, in random order.
gen = torch.Generator().manual_seed(0)
ROWS = [torch.randperm(s[0], generator=gen)[:(s[0] + 1) // 2].tolist() for s in SHAPES]
for dtype in (torch.float32, torch.bfloat16, torch.float64):
    for op in [op for op in OPS if "rows" in fusedreg._ops.defaults(op)]:
        base = build(op, SHAPES, dtype, scale=2.0, init={"state_steps": 0.0}, rows=ROWS, **HP[op])
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
