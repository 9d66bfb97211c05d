"""CUDA kernels of fusedreg._C: every op x dtype x size (sizes off the vector width, chunk boundaries, many
tensors per launch, storage offsets that break 16-byte alignment), CUDA vs the CPU kernel, found_inf skip with
no host sync, opcheck. Skips without a CUDA device or without the CUDA build."""
import pytest
import torch

import fusedreg  # the schemas, before the kernels register
from tolerances import STEP, TRAJECTORY, rel_err

try:
    import fusedreg._C  # noqa: F401
    HAVE_CUDA_KERNELS = all(torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedreg::{op}", "CUDA")
                            for op in fusedreg._ops.SCHEMAS)
except ImportError:
    HAVE_CUDA_KERNELS = False

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and HAVE_CUDA_KERNELS),
                                reason="needs a CUDA device and fusedreg._C built with CUDA")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SIZES = {
    "1": [(1,)], "3": [(3,)], "5": [(5,)], "4097": [(4097,)], "2d": [(33, 65)],
    "chunk_edge": [(65536,), (65536 + 3,), (2 * 65536 - 1,)],
    "many": [(n,) for n in (0, 1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 100, 1000, 4099)] * 5 + [(7, 9)] * 20,
    "over_320_chunks": [(330 * 65536 + 5,), (3,)],
}
OFFSETS = [0, 1]  # 1: every tensor a view at storage offset 1 (misaligned for vector loads)


def opmath(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def at_offset(t, offset):
    if offset == 0:
        return t.clone()
    buf = torch.empty(t.numel() + offset, dtype=t.dtype, device=t.device)
    view = buf[offset:].view(t.shape)
    view.copy_(t)
    return view


def make(op, shapes, dtype, gen, amp=False):
    od = opmath(dtype)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype) for s in shapes]
    grads = [(torch.randn(s, generator=gen, dtype=torch.float64) * (1024 if amp else 1)).to(dtype)
             for s in shapes]
    pos = lambda: [torch.rand(s, generator=gen, dtype=torch.float64).to(od) * 0.1 for s in shapes]  # noqa: E731
    steps = [torch.tensor(float(i % 3)) for i in range(len(shapes))]
    amp_args = [torch.tensor(1024.0), torch.tensor(0.0)] if amp else [None, None]
    if op == "sgd_":
        lists = [params, grads, pos()]
        scalars = [0.1, 0.9, 0.1, 1e-2, False, False, False, 0.5, False, 0.1, 0.01, False, 0.05, 0]
    elif op == "adam_":
        v = pos()
        lists = [params, grads, pos(), v, [x * 1.5 for x in v], steps]
        scalars = [1e-2, 0.9, 0.999, 1e-8, 1e-2, True, True, False, 0.7, False, 0.3, 0.1, False, 0.05, 1]
    else:
        lists = [params, grads, pos(), steps]
        scalars = [0.1, 0.01, 1e-2, 1e-10, True, 0.7, False, 0.3, 0.0, True, 0.05, 0]
    return lists, scalars, amp_args


def to_device(lists, amp_args, device, offset=0):
    moved = [[at_offset(t.to(device), offset) if t.dim() else t.to(device) for t in lst] for lst in lists]
    return moved, [a.to(device) if a is not None else None for a in amp_args]


def compare(cuda_lists, cpu_lists, dtype):
    for li, (a_list, b_list) in enumerate(zip(cuda_lists, cpu_lists)):
        for i, (a, b) in enumerate(zip(a_list, b_list)):
            a = a.cpu()
            where = f"list {li} [{i}]"
            if a.numel() == 0:
                continue
            assert torch.equal(a == 0, b == 0), f"{where}: zero pattern differs"
            tol = STEP.get(a.dtype, torch.finfo(a.dtype).eps)  # reduced params: one ulp of their dtype
            assert rel_err(a, b) <= tol, f"{where}: {rel_err(a, b)}"


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", ["sgd_", "adam_", "adagrad_"])
def test_cuda_matches_cpu_kernel(op, dtype, size, offset):
    if size == "over_320_chunks" and (dtype == torch.float64 or offset):
        pytest.skip("one dtype is enough for the large launch split")
    gen = torch.Generator().manual_seed(0)
    lists, scalars, amp = make(op, SIZES[size], dtype, gen, amp=(size == "many"))
    fn = getattr(torch.ops.fusedreg, op)
    cpu_lists, cpu_amp = to_device(lists, amp, "cpu")
    cuda_lists, cuda_amp = to_device(lists, amp, "cuda", offset)
    for _ in range(3):
        fn(*cpu_lists, *scalars, *cpu_amp)
        fn(*cuda_lists, *scalars, *cuda_amp)
    torch.cuda.synchronize()
    compare(cuda_lists, cpu_lists, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", ["sgd_", "adam_", "adagrad_"])
def test_found_inf_skips_on_device(op, dtype):
    gen = torch.Generator().manual_seed(1)
    lists, scalars, amp = make(op, SIZES["many"], dtype, gen, amp=True)
    cuda_lists, (gs, _) = to_device(lists, amp, "cuda")
    before = [[t.clone() for t in lst] for lst in cuda_lists]
    found_inf = torch.ones((), device="cuda")
    getattr(torch.ops.fusedreg, op)(*cuda_lists, *scalars, gs, found_inf)
    torch.cuda.synchronize()
    for a_list, b_list in zip(cuda_lists, before):
        for a, b in zip(a_list, b_list):
            assert torch.equal(a, b)


@pytest.mark.parametrize("op", ["sgd_", "adam_", "adagrad_"])
def test_float64_grad_scale_and_found_inf_read_like_the_cpu(op):
    # fp64 params: a scale float32 cannot hold is used in full (as on CPU), and a nonzero found_inf below
    # float32's range still skips the step.
    gen = torch.Generator().manual_seed(5)
    lists, scalars, _ = make(op, SIZES["many"], torch.float64, gen, amp=True)
    amp = [torch.tensor(1000.1234567, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)]
    fn = getattr(torch.ops.fusedreg, op)
    cpu_lists, cpu_amp = to_device(lists, amp, "cpu")
    cuda_lists, cuda_amp = to_device(lists, amp, "cuda")
    fn(*cpu_lists, *scalars, *cpu_amp)
    fn(*cuda_lists, *scalars, *cuda_amp)
    compare(cuda_lists, cpu_lists, torch.float64)
    before = [[t.clone() for t in lst] for lst in cuda_lists]
    fn(*cuda_lists, *scalars, cuda_amp[0], torch.tensor(1e-300, dtype=torch.float64, device="cuda"))
    for a_list, b_list in zip(cuda_lists, before):
        assert all(torch.equal(a, b) for a, b in zip(a_list, b_list))


@pytest.mark.parametrize("op", ["sgd_", "adam_", "adagrad_"])
def test_device_lr_tensor_steps_like_the_float_lr(op):
    gen = torch.Generator().manual_seed(6)
    lists, scalars, amp = make(op, SIZES["many"] + [(33, 65)], torch.float32, gen, amp=True)
    fn = getattr(torch.ops.fusedreg, op)
    cpu_lists, cpu_amp = to_device(lists, amp, "cpu")
    cuda_lists, cuda_amp = to_device(lists, amp, "cuda")
    lr = torch.tensor(scalars[0], dtype=torch.float64, device="cuda")
    for _ in range(3):
        fn(*cpu_lists, *scalars, *cpu_amp)
        fn(*cuda_lists, float("nan"), *scalars[1:], *cuda_amp, lr)
    torch.cuda.synchronize()
    compare(cuda_lists, cpu_lists, torch.float32)


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


def test_steps_advance_on_device_once_per_call():
    lists, scalars, amp = make("adam_", SIZES["over_320_chunks"] + SIZES["many"], torch.float32,
                               torch.Generator().manual_seed(2))
    cuda_lists, cuda_amp = to_device(lists, amp, "cuda")
    steps0 = [s.clone() for s in cuda_lists[-1]]
    torch.ops.fusedreg.adam_(*cuda_lists, *scalars, *cuda_amp)
    for s, s0 in zip(cuda_lists[-1], steps0):
        assert s.device.type == "cuda" and s.item() == s0.item() + 1


@pytest.mark.parametrize("op", ["sgd_", "adam_", "adagrad_"])
def test_opcheck_cuda(op):
    lists, scalars, amp = make(op, [(5, 4), (7,), (0,)], torch.float32, torch.Generator().manual_seed(3), amp=True)
    cuda_lists, cuda_amp = to_device(lists, amp, "cuda")
    torch.library.opcheck(getattr(torch.ops.fusedreg, op), (*cuda_lists, *scalars, *cuda_amp))


@pytest.mark.slow
def test_a_tensor_of_more_than_2_31_elements():
    # 64-bit indexing: the elements past 2^31 are stepped like the CPU kernel steps them (~17 GB of GPU memory).
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs a GPU with 40 GB")
    n = 2**31 + 5
    p = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    buf = torch.randn(n, device="cuda") * 0.1
    scalars = (0.1, 0.9, 0.0, 1e-2, True, False, False, 1e-2, False, 1e-3, 0.0, False, 0.0, 0, None, None)
    where = [slice(0, 8), slice(2**31 - 4, n)]
    before = [(p[s].cpu(), g[s].cpu(), buf[s].cpu()) for s in where]
    torch.ops.fusedreg.sgd_([p], [g], [buf], *scalars)
    torch.cuda.synchronize()
    for s, (pc, gc, bc) in zip(where, before):
        torch.ops.fusedreg.sgd_([pc], [gc], [bc], *scalars)
        compare([[p[s]], [buf[s]]], [[pc], [bc]], torch.bfloat16)


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
