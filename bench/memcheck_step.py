"""A few steps of every op for compute-sanitizer memcheck (bench/gpu.sh): sizes off the vector width, views at a
misaligned storage offset, a tensor over one chunk, 2-D and 3-D params with group lasso on rows and on columns,
grad scaling, found_inf clear and set.

    python bench/memcheck_step.py [cuda|cpu]     (cpu: the same calls on the CPU kernels, run by the tests so
                                                  that this script keeps up with the op schemas)
"""
import sys

import torch

import fusedreg._ops  # noqa: F401
import fusedreg._C  # noqa: F401

ops = torch.ops.fusedreg
dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
SHAPES = [(1,), (3,), (5,), (4097,), (65536 + 3,)] + [(7,)] * 40 + [(33, 65), (65, 33), (4, 3, 5)]


def fresh(dtype, offset, positive=False):
    out = []
    for s in SHAPES:
        buf = torch.randn(torch.Size(s).numel() + offset, device=dev).to(dtype)
        out.append((buf.abs() if positive else buf)[offset:].view(s))
    return out


for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    od = torch.float64 if dtype == torch.float64 else torch.float32
    for offset in (0, 1):
        for group_l1, group_dim in ((0.0, 0), (1e-2, 0), (1e-2, 1)):
            p, g, s1 = fresh(dtype, offset), fresh(dtype, offset), fresh(od, offset)
            s2, s3 = fresh(od, offset, positive=True), fresh(od, offset, positive=True)
            steps = [torch.zeros((), device=dev) for _ in SHAPES]
            gs, fi = torch.tensor(2.0, device=dev), torch.tensor(0.0, device=dev)
            for found in (0.0, 1.0):
                fi.fill_(found)
                ops.sgd_(p, g, s1, 0.1, 0.9, 0.0, 1e-2, True, False, False, 1e-3, False, 1e-3, 1e-4, False,
                         group_l1, group_dim, gs, fi)
                ops.adam_(p, g, s1, s2, s3, steps, 1e-3, 0.9, 0.999, 1e-8, 1e-2, True, True, False, 1e-3, False,
                          1e-3, 1e-4, True, group_l1, group_dim, gs, fi)
                ops.adagrad_(p, g, s2, steps, 0.1, 0.01, 1e-2, 1e-10, False, 1e-3, True, 0.0, 0.0, False,
                             group_l1, group_dim, gs, fi)
            assert all(bool(torch.isfinite(t.float()).all()) for t in p), "non-finite params after the steps"
if dev == "cuda":
    torch.cuda.synchronize()
print("memcheck step script done")
