"""The optimizer classes on CUDA tensors with backend="cuda": a step with a device lr has no host sync and replays
in a CUDA graph, and 20-step trajectories follow the reference backend (with penalties) and torch.optim (without).
The CUDA kernels themselves (against the reference and the CPU kernel) are in test_kernels.py, their opcheck in
test_opcheck.py. Skips without a CUDA device or without the CUDA build."""
import pytest
import torch

import fusedreg
from tolerances import TRAJECTORY, rel_err

WHY = fusedreg.backends.explain()["cuda"]
pytestmark = pytest.mark.skipif(WHY != "available", reason=f"cuda: {WHY}")


@pytest.mark.parametrize("name,kw", [("SGD", dict(momentum=0.9)), ("AdamW", {}), ("Adagrad", dict(lr_decay=0.01))])
def test_step_with_a_device_lr_has_no_host_sync_and_replays_in_a_cuda_graph(name, kw):
    gen = torch.Generator().manual_seed(8)
    shapes = [(33, 65), (7,), (4097,)]
    init = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen).cuda() for s in shapes]
    ps = [x.cuda().requires_grad_() for x in init]
    ref = [x.cuda().requires_grad_() for x in init]
    kw = dict(kw, l1=1e-3, group_l1=1e-2, backend="cuda")
    lr = torch.tensor(0.01, device="cuda")
    opt = getattr(fusedreg, name)(ps, lr=lr, **kw)
    opt_ref = getattr(fusedreg, name)(ref, lr=0.01, **kw)
    for p, r, g in zip(ps, ref, grads):
        p.grad, r.grad = g.clone(), g.clone()
    opt.step()  # the first step creates the state (SGD reads found_inf on the host only then)
    opt_ref.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    opt_ref.step()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(side):
        opt.step()  # warm-up on the capture stream, as torch.cuda.graphs asks
        opt_ref.step()
        with torch.cuda.graph(graph, stream=side):
            opt.step()
    torch.cuda.current_stream().wait_stream(side)
    for new_lr in (0.01, 0.01, 0.005):
        lr.fill_(new_lr)
        opt_ref.param_groups[0]["lr"] = new_lr
        graph.replay()
        opt_ref.step()
    torch.cuda.synchronize()
    for p, r in zip(ps, ref):
        assert rel_err(p.detach().cpu(), r.detach().cpu()) <= 1e-6
    assert any(bool((p == 0).any()) for p in ps)  # the prox ran (exact zeros)


# The optimizer classes with backend="cuda" on CUDA tensors against the reference backend on CPU: fixed grads
# (not computed from the params), fp64, so only the kernels' arithmetic can differ.
OPTIMIZERS = [
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2, l1=1.0)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, l1=0.5, group_l1=2.0, group_dim=1)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=1e-2, l1=2.0, group_l1=2.0)),
    ("AdamW", dict(lr=0.01, l1=2.0, l0=1e-4, maximize=True)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.01, l1=1.0, l2=1e-2, group_l1=1.0, group_dim=1)),
]


def _trajectory(name, kw, device, backend, steps=20, torch_optim=False):
    gen = torch.Generator().manual_seed(9)
    shapes = [(16, 8), (8,), (4, 16), (3, 5, 2)]
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(steps)]
    ps = [x.to(device).requires_grad_() for x in init]
    if torch_optim:
        opt = getattr(torch.optim, name)(ps, **kw, foreach=False)
    else:
        opt = getattr(fusedreg, name)(ps, **kw, backend=backend)
    for k in range(steps):
        for p, g in zip(ps, grads[k]):
            p.grad = g.to(device)
        opt.step()
    return [p.detach().cpu() for p in ps]


@pytest.mark.parametrize("name,kw", OPTIMIZERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(OPTIMIZERS)])
def test_optimizer_on_cuda_follows_the_reference(name, kw):
    cuda = _trajectory(name, kw, "cuda", "cuda")
    ref = _trajectory(name, kw, "cpu", "torch")
    for a, b in zip(cuda, ref):
        assert torch.equal(a == 0, b == 0)
        assert rel_err(a, b) <= TRAJECTORY[torch.float64]
    assert any(bool((a == 0).any()) for a in ref) and not all(bool((a == 0).all()) for a in ref)


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-2)),
                                     ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=1e-2)),
                                     ("AdamW", dict(lr=0.01, weight_decay=1e-2)),
                                     ("Adagrad", dict(lr=0.05, lr_decay=0.01))], ids=str)
def test_optimizer_on_cuda_without_penalties_follows_torch_optim(name, kw):
    ours = _trajectory(name, kw, "cuda", "cuda")
    theirs = _trajectory(name, kw, "cuda", None, torch_optim=True)
    for a, b in zip(ours, theirs):
        assert rel_err(a, b) <= TRAJECTORY[torch.float64]
