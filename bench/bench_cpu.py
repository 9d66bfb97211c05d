"""CPU benchmark of the fused kernels against torch.optim, on one optimizer step of a 25.2M-parameter model.

Workload: 25.2M fp32 params in 34 tensors (16 x 1024x1024, 16 x 1024, 2 x 4096x1024), random grads, all threads.

    .venv/bin/python -m pytest bench/bench_cpu.py --benchmark-json=bench/cpu.json -p no:randomly
    .venv/bin/python bench/bench_cpu.py bench/cpu.json      # the markdown table of bench/README.md

pytest-benchmark times; nothing here asserts a time. The roofline is a streaming `a += b` (torch._foreach_add_)
over the same tensors; effective bandwidth = bytes/param x params / median (SGD 12, SGD-momentum 20, Adam 28 B,
FTRL 28, Adagrad 20, Lion 20: FTRL is timed against torch's fused Adagrad, torch.optim having no FTRL, and Lion
against torch's fused SGD with momentum, torch.optim having no Lion).
fusedreg is timed as its optimizer classes (`fusedreg.AdamW(...).step()`, as users call it) and, in the `_op`
rows, as the bare op. The paired group alternates fusedreg and torch's fused step in one loop and keeps the
median of the per-pair time ratios, which drifts far less with this VM's memory bandwidth than a ratio of two
medians taken minutes apart.
The group_lasso group times the same ops with group lasso on rows / columns of the 18 matrices, and (torch_pass)
the way fusedreg applied it before it was in the kernels; test_group_paired alternates each grouped step with the
same step without group lasso (own tensors each) and keeps the per-round ratio, as the paired group does.
Sparse grads (issue #17): an embedding table of 1M x 64 fp32 rows with a sparse COO grad of 4,096 distinct rows
per step (uncoalesced, in random order, as nn.Embedding(sparse=True) makes them); the paired rows `sparse_*`
against torch.optim's sparse step (Ftrl's against torch's sparse Adagrad, and against a dense Ftrl step on the
same table; the sparse_bag_* pairs the same on an nn.EmbeddingBag(sparse=True) whose backward makes the grads),
and the sparse_scaling group times fusedreg.Adagrad + L1 + L2, fusedreg.Ftrl + L1 (EmbeddingBag grads) and
torch's Adagrad over table sizes and rows touched:

    .venv/bin/python -m pytest bench/bench_cpu.py -k sparse --benchmark-json=bench/results/sparse.json
"""
import itertools
import json
import statistics
import sys
import time

import pytest
import torch

SHAPES = [(1024, 1024)] * 16 + [(1024,)] * 16 + [(4096, 1024)] * 2
NUMEL = sum(torch.Size(s).numel() for s in SHAPES)
LR, WD, L1 = 1e-3, 1e-2, 1e-4
# FTRL: p, n and z read and written, g read (28); Adagrad: p and sum read and written, g read (20).
BYTES = {"adam": 28, "sgd_momentum": 20, "sgd": 12, "copy": 12, "ftrl": 28, "adagrad": 20,
         "muon": 32}  # Muon: muon_momentum_ reads p, g and buf, writes buf and the update (20); muon_ 12


def _ops():
    import fusedreg._ops  # noqa: F401
    import fusedreg._C  # noqa: F401
    return torch.ops.fusedreg


def scalars(op, **kw):
    """Every scalar argument of `op` by keyword: the schema's defaults, lr = LR, then `kw`."""
    from fusedreg import _ops
    return {**_ops.defaults(op), "lr": LR, **kw}


def tensors(n_states=0, requires_grad=False, realistic=False):
    """Params and grads ~N(0, 1), or (realistic) a trained network's scales: weights N(0, 0.02^2), grads
    N(0, 1e-6)."""
    gen = torch.Generator().manual_seed(0)
    ps, gs = (0.02, 1e-3) if realistic else (1.0, 1.0)
    params = [(torch.randn(s, generator=gen) * ps).requires_grad_(requires_grad) for s in SHAPES]
    grads = [torch.randn(s, generator=gen) * gs for s in SHAPES]
    states = [[torch.zeros(s) for s in SHAPES] for _ in range(n_states)]
    return params, grads, states


def run(benchmark, fn, rounds=30):
    with torch.no_grad():
        fn()  # warm-up (lazily created state)
    benchmark.extra_info["params"] = NUMEL
    benchmark.pedantic(torch.no_grad()(fn), rounds=rounds, warmup_rounds=1, iterations=1)


# ---- Adam family: bytes/param 28 -----------------------------------------------------------------------------

def _with_grads():
    params, grads, _ = tensors(requires_grad=True)
    for p, g in zip(params, grads):
        p.grad = g
    return params


def _fusedreg_adamw():
    import fusedreg
    return fusedreg.AdamW(_with_grads(), lr=LR, weight_decay=WD, l1=L1, backend="cpp").step


def _fusedreg_sgd(momentum):
    import fusedreg
    return fusedreg.SGD(_with_grads(), lr=LR, momentum=momentum, weight_decay=WD, l1=L1, backend="cpp").step


def _fusedreg_lion(**kw):
    import fusedreg
    return fusedreg.Lion(_with_grads(), lr=LR, weight_decay=WD, l1=L1, backend="cpp", **kw).step


def _torch_sgd_momentum_fused():
    return torch.optim.SGD(_with_grads(), lr=LR, momentum=0.9, weight_decay=WD, fused=True).step


@pytest.mark.benchmark(group="adamw")
def test_fusedreg_adamw_l1_l2(benchmark):
    benchmark.extra_info["bytes_per_param"] = BYTES["adam"]
    run(benchmark, _fusedreg_adamw())


@pytest.mark.benchmark(group="adamw")
def test_fusedreg_adamw_l1_l2_op(benchmark):
    ops = _ops()
    params, grads, (m, v) = tensors(2)
    steps = [torch.zeros((), dtype=torch.float32) for _ in params]
    benchmark.extra_info["bytes_per_param"] = BYTES["adam"]
    kw = scalars("adam_", weight_decay=WD, decoupled=True, l1=L1)
    run(benchmark, lambda: ops.adam_(params, grads, m, v, [], steps, **kw))


def _torch_adamw(benchmark, rounds=30, **kw):
    params = _with_grads()
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, **kw)
    benchmark.extra_info["bytes_per_param"] = BYTES["adam"]
    run(benchmark, opt.step, rounds)
    return params, opt


@pytest.mark.benchmark(group="adamw")
def test_torch_adamw_fused(benchmark):
    _torch_adamw(benchmark, fused=True)


@pytest.mark.benchmark(group="adamw")
def test_torch_adamw_foreach(benchmark):
    _torch_adamw(benchmark, foreach=True)


@pytest.mark.benchmark(group="adamw")
def test_torch_adamw_forloop(benchmark):
    _torch_adamw(benchmark, rounds=10, foreach=False)


@pytest.mark.benchmark(group="adamw")
def test_torch_adamw_fused_then_soft_threshold(benchmark):
    """torch fused AdamW, then a separate L1 soft-threshold pass: p -= clamp(p, -t, t)."""
    params, grads, _ = tensors(requires_grad=True)
    for p, g in zip(params, grads):
        p.grad = g
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, fused=True)
    t = LR * L1

    def step():
        opt.step()
        torch._foreach_sub_(params, [p.clamp(-t, t) for p in params])

    benchmark.extra_info["bytes_per_param"] = BYTES["adam"]
    run(benchmark, step)


def _seeds_step(**kw):
    """The seeds' way: loss += l1*sum(|p|): the abs-sum forward, its backward into p.grad, then torch's AdamW
    step (the penalty's gradient never gives exact zeros)."""
    params = _with_grads()
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, **kw)

    def step():
        with torch.enable_grad():
            penalty = L1 * torch.stack([p.abs().sum() for p in params]).sum()
            penalty.backward()
        opt.step()
    return step


def _seeds_way(benchmark, **kw):
    benchmark.extra_info["bytes_per_param"] = BYTES["adam"]
    run(benchmark, _seeds_step(**kw), rounds=30 if kw else 10)


@pytest.mark.benchmark(group="adamw")
def test_seeds_way_l1_in_loss(benchmark):
    """With torch.optim.AdamW as constructed by default (on CPU tensors torch picks its for-loop step)."""
    _seeds_way(benchmark)


@pytest.mark.benchmark(group="adamw")
def test_seeds_way_l1_in_loss_fused(benchmark):
    """With torch's fused AdamW, the fastest torch step."""
    _seeds_way(benchmark, fused=True)


# ---- SGD with momentum: bytes/param 20; plain SGD 12 --------------------------------------------------------

@pytest.mark.benchmark(group="sgd")
def test_fusedreg_sgd_momentum_l1(benchmark):
    benchmark.extra_info["bytes_per_param"] = BYTES["sgd_momentum"]
    run(benchmark, _fusedreg_sgd(0.9))


@pytest.mark.benchmark(group="sgd")
def test_fusedreg_sgd_momentum_l1_op(benchmark):
    ops = _ops()
    params, grads, (bufs,) = tensors(1)
    benchmark.extra_info["bytes_per_param"] = BYTES["sgd_momentum"]
    kw = scalars("sgd_", momentum=0.9, weight_decay=WD, l1=L1)
    run(benchmark, lambda: ops.sgd_(params, grads, bufs, **kw))


def _torch_sgd(benchmark, momentum=0.9, **kw):
    opt = torch.optim.SGD(_with_grads(), lr=LR, momentum=momentum, weight_decay=WD, **kw)
    benchmark.extra_info["bytes_per_param"] = BYTES["sgd_momentum" if momentum else "sgd"]
    run(benchmark, opt.step)


@pytest.mark.benchmark(group="sgd")
def test_torch_sgd_momentum_fused(benchmark):
    _torch_sgd(benchmark, fused=True)


@pytest.mark.benchmark(group="sgd")
def test_torch_sgd_momentum_foreach(benchmark):
    _torch_sgd(benchmark, foreach=True)


@pytest.mark.benchmark(group="sgd")
def test_fusedreg_sgd_l1(benchmark):
    benchmark.extra_info["bytes_per_param"] = BYTES["sgd"]
    run(benchmark, _fusedreg_sgd(0.0))


@pytest.mark.benchmark(group="sgd")
def test_fusedreg_sgd_l1_op(benchmark):
    ops = _ops()
    params, grads, _ = tensors()
    benchmark.extra_info["bytes_per_param"] = BYTES["sgd"]
    kw = scalars("sgd_", weight_decay=WD, l1=L1)
    run(benchmark, lambda: ops.sgd_(params, grads, [], **kw))


@pytest.mark.benchmark(group="sgd")
def test_torch_sgd_fused(benchmark):
    _torch_sgd(benchmark, momentum=0.0, fused=True)


# ---- FTRL: bytes/param 28, against torch's fused Adagrad (20; torch.optim has no FTRL) --------------------

def _fusedreg_ftrl():
    import fusedreg
    return fusedreg.Ftrl(_with_grads(), lr=LR, l1=L1, backend="cpp").step


def _torch_adagrad_fused():
    return torch.optim.Adagrad(_with_grads(), lr=LR, initial_accumulator_value=0.1, fused=True).step


@pytest.mark.benchmark(group="ftrl")
def test_fusedreg_ftrl_l1(benchmark):
    benchmark.extra_info["bytes_per_param"] = BYTES["ftrl"]
    run(benchmark, _fusedreg_ftrl())


@pytest.mark.benchmark(group="ftrl")
def test_fusedreg_ftrl_l1_op(benchmark):
    ops = _ops()
    params, grads, (n, z) = tensors(2)
    for t in n:
        t.fill_(0.1)
    benchmark.extra_info["bytes_per_param"] = BYTES["ftrl"]
    kw = scalars("ftrl_", l1=L1)
    run(benchmark, lambda: ops.ftrl_(params, grads, n, z, **kw))


@pytest.mark.benchmark(group="ftrl")
def test_torch_adagrad_fused(benchmark):
    benchmark.extra_info["bytes_per_param"] = BYTES["adagrad"]
    run(benchmark, _torch_adagrad_fused())


# ---- sparse grads: an embedding table, a few thousand rows per step ----------------------------------------

TABLE, DIM, TOUCHED = 1_000_000, 64, 4096
SPARSE_L1, SPARSE_L2 = 1e-4, 1e-4


def _sparse_step(make_opt, table=TABLE, touched=TOUCHED, pool=8):
    """A step of make_opt([w]) on a table w (table x DIM fp32) whose grad is, in turn, one of `pool` sparse COO
    grads of `touched` distinct rows (uncoalesced, random order, as nn.Embedding(sparse=True) makes them)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(table, DIM, generator=gen).requires_grad_()
    grads = [torch.sparse_coo_tensor(torch.randperm(table, generator=gen)[:touched][None],
                                     torch.randn(touched, DIM, generator=gen), (table, DIM)) for _ in range(pool)]
    opt = make_opt([w])
    turn = itertools.count()

    def step():
        w.grad = grads[next(turn) % pool]
        opt.step()
    return step


def _bag_step(make_opt, table=TABLE, touched=TOUCHED, pool=8, bag=8):
    """A step of make_opt on an nn.EmbeddingBag(table, DIM, mode="sum", sparse=True) whose grad is, in turn, one
    of `pool` grads made by its own backward: `touched` distinct rows per batch, in bags of `bag`."""
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.EmbeddingBag(table, DIM, mode="sum", sparse=True)
    grads = []
    for _ in range(pool):
        idx = torch.randperm(table, generator=gen)[:touched]
        emb(idx, torch.arange(0, touched, bag)).pow(2).sum().backward()
        grads.append(emb.weight.grad)
        emb.weight.grad = None
    opt = make_opt(emb.parameters())
    turn = itertools.count()

    def step():
        emb.weight.grad = grads[next(turn) % pool]
        opt.step()
    return step


def _dense_table_step(make_opt, table=TABLE):
    """A step of make_opt([w]) on the same table with a dense grad: what a sparse step saves."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(table, DIM, generator=gen).requires_grad_()
    w.grad = torch.randn(table, DIM, generator=gen)
    return make_opt([w]).step


def _fusedreg(name, **kw):
    import fusedreg
    return lambda params: getattr(fusedreg, name)(params, lr=0.1, backend="cpp", **kw)


def _torch(name):
    return lambda params: getattr(torch.optim, name)(params, lr=0.1)


SPARSE_PAIRS = {
    "sparse_sgd_l1": (_fusedreg("SGD", l1=SPARSE_L1), _torch("SGD")),
    "sparse_adagrad_l1_l2": (_fusedreg("Adagrad", l1=SPARSE_L1, l2=SPARSE_L2), _torch("Adagrad")),
    "sparse_sgd": (_fusedreg("SGD"), _torch("SGD")),
    "sparse_adagrad": (_fusedreg("Adagrad"), _torch("Adagrad")),
    "sparse_ftrl_l1_vs_adagrad": (_fusedreg("Ftrl", l1=SPARSE_L1), _torch("Adagrad")),
}

# (table rows, rows touched per step): the cost follows the rows touched, not the table.
SCALING = [(100_000, TOUCHED), (TABLE, TOUCHED), (4_000_000, TOUCHED), (TABLE, 1024), (TABLE, 16384)]


@pytest.fixture
def one_thread():
    # A step of ~1 ms on a shared machine: with 2 threads, a parallel region waits out whole scheduler slices for
    # a descheduled thread (8-16 ms medians under load), which hides what the step itself costs.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.benchmark(group="sparse_scaling")
@pytest.mark.parametrize("table,touched", SCALING, ids=[f"{t}x{r}" for t, r in SCALING])
def test_sparse_scaling_fusedreg_adagrad_l1_l2(benchmark, table, touched, one_thread):
    benchmark.extra_info.update(table=table, touched=touched, threads=1)
    run(benchmark, _sparse_step(_fusedreg("Adagrad", l1=SPARSE_L1, l2=SPARSE_L2), table, touched), rounds=100)


@pytest.mark.benchmark(group="sparse_scaling")
@pytest.mark.parametrize("table,touched", SCALING, ids=[f"{t}x{r}" for t, r in SCALING])
def test_sparse_scaling_fusedreg_ftrl_l1(benchmark, table, touched, one_thread):
    benchmark.extra_info.update(table=table, touched=touched, threads=1)
    run(benchmark, _bag_step(_fusedreg("Ftrl", l1=SPARSE_L1), table, touched), rounds=100)


@pytest.mark.benchmark(group="sparse_scaling")
@pytest.mark.parametrize("table,touched", SCALING, ids=[f"{t}x{r}" for t, r in SCALING])
def test_sparse_scaling_torch_adagrad(benchmark, table, touched, one_thread):
    benchmark.extra_info.update(table=table, touched=touched, threads=1)
    run(benchmark, _sparse_step(_torch("Adagrad"), table, touched), rounds=100)


# ---- Muon: fusedreg.Muon + L1 + group lasso / torch.optim.Muon (no penalties) ---------------------------------

# The bench's matrices at an eighth of each side: both steps run the same Newton-Schulz in bf16 matmuls, which a CPU
# without bf16 units takes minutes over for one 1024x1024 matrix; the ratio is that of the whole steps.
MUON_SHAPES = [(128, 128)] * 16 + [(512, 128)] * 2
MUON_NUMEL = sum(torch.Size(s).numel() for s in MUON_SHAPES)


def _matrices():
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in MUON_SHAPES]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    return params


def _fusedreg_muon():
    import fusedreg
    return fusedreg.Muon(_matrices(), lr=0.02, l1=L1, group_l1=L1, backend="cpp").step


def _torch_muon():
    return torch.optim.Muon(_matrices(), lr=0.02).step


# ---- paired: fusedreg's step / another step, alternated in one loop -----------------------------------------

PAIRS = {
    "adamw_l1_l2": (_fusedreg_adamw, lambda: torch.optim.AdamW(_with_grads(), lr=LR, weight_decay=WD,
                                                               fused=True).step),
    "sgd_momentum_l1": (lambda: _fusedreg_sgd(0.9), lambda: torch.optim.SGD(_with_grads(), lr=LR, momentum=0.9,
                                                                            weight_decay=WD, fused=True).step),
    "sgd_l1": (lambda: _fusedreg_sgd(0.0), lambda: torch.optim.SGD(_with_grads(), lr=LR, weight_decay=WD,
                                                                   fused=True).step),
    "ftrl_l1_vs_adagrad": (_fusedreg_ftrl, _torch_adagrad_fused),
    # Lion (p, g read, p and m written, m read: 20 bytes/param) against torch's fused SGD with momentum, the same
    # bytes; with group lasso on the rows / columns of the 18 matrices
    "lion_l1_vs_sgd_momentum": (_fusedreg_lion, _torch_sgd_momentum_fused),
    "lion_l1_group_rows_vs_sgd_momentum": (lambda: _fusedreg_lion(group_l1=GROUP_L1, group_dim=0),
                                           _torch_sgd_momentum_fused),
    "lion_l1_group_cols_vs_sgd_momentum": (lambda: _fusedreg_lion(group_l1=GROUP_L1, group_dim=1),
                                           _torch_sgd_momentum_fused),
    "adamw_l1_l2_vs_seeds_way": (_fusedreg_adamw, _seeds_step),
    "adamw_l1_l2_vs_seeds_way_fused": (_fusedreg_adamw, lambda: _seeds_step(fused=True)),
    **{name: (lambda a=a: _sparse_step(a), lambda b=b: _sparse_step(b)) for name, (a, b) in SPARSE_PAIRS.items()},
    # the sparse Ftrl step against a dense Ftrl step on the same table (4,096 of 1M rows: the cost of the rows)
    "sparse_ftrl_l1_vs_dense_ftrl": (lambda: _sparse_step(_fusedreg("Ftrl", l1=SPARSE_L1)),
                                     lambda: _dense_table_step(_fusedreg("Ftrl", l1=SPARSE_L1))),
    # the same two on an nn.EmbeddingBag(sparse=True), its grads made by its own backward (issue #18)
    "sparse_bag_ftrl_l1_vs_adagrad": (lambda: _bag_step(_fusedreg("Ftrl", l1=SPARSE_L1)),
                                      lambda: _bag_step(_torch("Adagrad"))),
    "sparse_bag_ftrl_l1_vs_dense_ftrl": (lambda: _bag_step(_fusedreg("Ftrl", l1=SPARSE_L1)),
                                         lambda: _dense_table_step(_fusedreg("Ftrl", l1=SPARSE_L1))),
    "muon_l1_group_vs_muon": (_fusedreg_muon, _torch_muon),
}


@pytest.mark.benchmark(group="paired")
@pytest.mark.parametrize("pair", list(PAIRS))
def test_paired(benchmark, pair):
    """One round = fusedreg's step and the other one (torch's fused step without L1, or the seeds' way), in
    alternating order; extra_info keeps the median and quartiles of the per-round ratio fusedreg / other."""
    ours, theirs = (make() for make in PAIRS[pair])
    ratios = []

    def both():
        flip = len(ratios) % 2
        times = {}
        for name, fn in ((("torch", theirs), ("ours", ours)) if flip else (("ours", ours), ("torch", theirs))):
            t0 = time.perf_counter()
            fn()
            times[name] = time.perf_counter() - t0
        ratios.append(times["ours"] / times["torch"])

    benchmark.extra_info["bytes_per_param"] = 2 * BYTES["adam" if "adam" in pair else "ftrl" if "ftrl" in pair else
                                                     "muon" if "muon" in pair else
                                                     "sgd_momentum" if "momentum" in pair else "sgd"]
    # Many short rounds: the per-round ratio scatters by +-5% here, so the median of 200 moves by < 1%. A sparse
    # step takes about a millisecond: more rounds.
    run(benchmark, both, rounds=(40 if "seeds" in pair or "dense" in pair else 1000 if "sparse" in pair else
                                 6 if "muon" in pair else 200))
    if "muon" in pair:
        benchmark.extra_info["params"] = MUON_NUMEL
    ratios = ratios[2:]  # the warm-ups
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    benchmark.extra_info.update(ratio_median=med, ratio_q1=q1, ratio_q3=q3, pairs=len(ratios))


# ---- the roofline ------------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="roofline")
def test_roofline_a_plus_eq_b(benchmark):
    a, b, _ = tensors()
    benchmark.extra_info["bytes_per_param"] = BYTES["copy"]
    run(benchmark, lambda: torch._foreach_add_(a, b))


# ---- group lasso (rows: group_dim 0, columns: 1) on the same step; the ratio is to the same call without it ----

GROUP_L1 = 1e-4


def _group_adamw(group_l1, group_dim, torch_pass=False, l1_decoupled=False):
    """AdamW + L1 with group lasso in the op, or (torch_pass) the op without it followed by the reference's group
    prox in PyTorch (how fusedreg applied group lasso before it was in the kernels). l1_decoupled: l1_mode=
    "decoupled" (threshold lr*l1, the group prox in closed form), on params and grads of realistic scales."""
    from fusedreg import reference
    ops = _ops()
    params, grads, (m, v) = tensors(2, realistic=l1_decoupled)
    steps = [torch.zeros((), dtype=torch.float32) for _ in params]
    kw = scalars("adam_", weight_decay=WD, decoupled=True, l1=L1, group_l1=0.0 if torch_pass else group_l1,
                 group_dim=group_dim, **({"l1_decoupled": True} if l1_decoupled else {}))

    def step():
        ops.adam_(params, grads, m, v, [], steps, **kw)
        if torch_pass and group_l1:
            bc2 = 1 - 0.999 ** steps[0].item()
            for p, vv in zip(params, v):
                if p.dim() >= 2:
                    reference._group(p, LR, (vv / bc2).sqrt() + 1e-8, group_l1, group_dim, 0.0)
    return step


def _group_sgd(group_l1, group_dim):
    ops = _ops()
    params, grads, (bufs,) = tensors(1)
    kw = scalars("sgd_", momentum=0.9, weight_decay=WD, l1=L1, group_l1=group_l1, group_dim=group_dim)
    return lambda: ops.sgd_(params, grads, bufs, **kw)


GROUPS = {"none": (0.0, 0), "rows": (GROUP_L1, 0), "cols": (GROUP_L1, 1)}


@pytest.mark.benchmark(group="group_lasso")
@pytest.mark.parametrize("group", list(GROUPS))
def test_group_adamw_l1(benchmark, group):
    benchmark.extra_info["bytes_per_param"] = BYTES["adam"]
    run(benchmark, _group_adamw(*GROUPS[group]), rounds=15)


@pytest.mark.benchmark(group="group_lasso")
@pytest.mark.parametrize("group", ["rows", "cols"])
def test_group_adamw_l1_torch_pass(benchmark, group):
    benchmark.extra_info["bytes_per_param"] = BYTES["adam"]
    run(benchmark, _group_adamw(*GROUPS[group], torch_pass=True), rounds=3)


@pytest.mark.benchmark(group="group_lasso")
@pytest.mark.parametrize("group", list(GROUPS))
def test_group_sgd_momentum_l1(benchmark, group):
    benchmark.extra_info["bytes_per_param"] = BYTES["sgd_momentum"]
    run(benchmark, _group_sgd(*GROUPS[group]), rounds=15)


GROUP_MAKERS = {"adamw_l1": _group_adamw, "sgd_momentum_l1": _group_sgd,
                "adamw_l1_decoupled": lambda g, d: _group_adamw(g, d, l1_decoupled=True)}


@pytest.mark.benchmark(group="paired")
@pytest.mark.parametrize("pair", [f"{opt}[{g}]" for opt in GROUP_MAKERS for g in ("rows", "cols")])
def test_group_paired(benchmark, pair):
    """One round = the step with group lasso and the same step without it (own tensors each), in alternating
    order; extra_info keeps the median and quartiles of the per-round ratio grouped / plain.
    adamw_l1_decoupled: l1_mode="decoupled" in both (its group prox is the closed form), realistic scales."""
    opt, group = pair[:-1].split("[")
    make = GROUP_MAKERS[opt]
    ours, theirs = make(*GROUPS[group]), make(*GROUPS["none"])
    ratios = []

    def both():
        flip = len(ratios) % 2
        times = {}
        for name, fn in ((("plain", theirs), ("ours", ours)) if flip else (("ours", ours), ("plain", theirs))):
            t0 = time.perf_counter()
            fn()
            times[name] = time.perf_counter() - t0
        ratios.append(times["ours"] / times["plain"])

    benchmark.extra_info["bytes_per_param"] = 2 * BYTES["adam" if opt.startswith("adamw") else "sgd_momentum"]
    run(benchmark, both, rounds=60)
    ratios = ratios[2:]  # the warm-ups
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    benchmark.extra_info.update(ratio_median=med, ratio_q1=q1, ratio_q3=q3, pairs=len(ratios))


# ---- the table of bench/README.md from a --benchmark-json file ----------------------------------------------

def table(path):
    data = json.load(open(path))
    rows = {b["name"].removeprefix("test_"): b for b in data["benchmarks"]}

    def med(name):
        return rows[name]["stats"]["median"]

    roof = "roofline_a_plus_eq_b"
    roof_bw = BYTES["copy"] * NUMEL / med(roof) if roof in rows else float("nan")
    base = {"adamw": "torch_adamw_fused", "sgd": "torch_sgd_momentum_fused", "roofline": None,
            "group_lasso": "group_adamw_l1[none]", "paired": None, "ftrl": "torch_adagrad_fused",
            "sparse_scaling": None}
    out = [f"threads: {torch.get_num_threads()}, params: {NUMEL:,} fp32 in {len(SHAPES)} tensors", "",
           "| benchmark | median (ms) | vs baseline | bytes/param | effective GB/s | of roofline |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    paired, scaling = [], []
    for name, b in rows.items():
        if b["group"] == "sparse_scaling":
            x = b["extra_info"]
            scaling.append(f"| {name.split('[')[0].removeprefix('sparse_scaling_')} | {x['table']:,} | "
                           f"{x['touched']:,} | {med(name) * 1e6:.0f} | {med(name) * 1e9 / x['touched']:.0f} |")
            continue
        if b["group"] == "paired":
            x = b["extra_info"]
            paired.append(f"| {name} | {x['ratio_median']:.3f}x | {x['ratio_q1']:.3f}-{x['ratio_q3']:.3f}x "
                          f"| {x['pairs']} |")
            continue
        ref = base[b["group"]]
        if b["group"] == "sgd" and "momentum" not in name:
            ref = "torch_sgd_fused"
        if b["group"] == "group_lasso" and "sgd" in name:
            ref = "group_sgd_momentum_l1[none]"
        if ref not in rows:
            ref = None
        bpp = b["extra_info"]["bytes_per_param"]
        bw = bpp * NUMEL / med(name)
        ratio = f"{med(name) / med(ref):.2f}x" if ref else ""
        out.append(f"| {name} | {med(name) * 1e3:.1f} | {ratio} | {bpp} | {bw / 1e9:.1f} | {bw / roof_bw:.2f} |")
    if paired:
        out += ["", "| paired: fusedreg / torch fused (or / the seeds' way; group_paired: / the step without group "
                "lasso), per round | median | quartiles | rounds |",
                "| --- | ---: | ---: | ---: |"] + paired
    if scaling:
        out += ["", "| sparse step | table rows | rows touched | median (us) | ns per row touched |",
                "| --- | ---: | ---: | ---: | ---: |"] + scaling
    ours = "fusedreg_adamw_l1_l2"
    seeds = [n for n in ("seeds_way_l1_in_loss", "seeds_way_l1_in_loss_fused") if n in rows]
    if ours in rows and seeds:
        out += [""] + [f"{n} / {ours}: {med(n) / med(ours):.2f}x" for n in seeds]
    return "\n".join(out)


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else "bench/cpu.json"))
