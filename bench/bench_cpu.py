"""CPU benchmark of the fused kernels against torch.optim, on one optimizer step of a 25.2M-parameter model.

Workload: 25.2M fp32 params in 34 tensors (16 x 1024x1024, 16 x 1024, 2 x 4096x1024), random grads, all threads.

    .venv/bin/python -m pytest bench/bench_cpu.py --benchmark-json=bench/cpu.json -p no:randomly
    .venv/bin/python bench/bench_cpu.py bench/cpu.json      # the markdown table of bench/README.md

pytest-benchmark times; nothing here asserts a time. The roofline is a streaming `a += b` (torch._foreach_add_)
over the same tensors; effective bandwidth = bytes/param x params / median (SGD 12, SGD-momentum 20, Adam 28 B).
The group_lasso group times the same ops with group lasso on rows / columns of the 18 matrices, and (torch_pass)
the way fusedreg applied it before it was in the kernels.
"""
import json
import sys

import pytest
import torch

SHAPES = [(1024, 1024)] * 16 + [(1024,)] * 16 + [(4096, 1024)] * 2
NUMEL = sum(torch.Size(s).numel() for s in SHAPES)
LR, WD, L1 = 1e-3, 1e-2, 1e-4
BYTES = {"adam": 28, "sgd_momentum": 20, "sgd": 12, "copy": 12}


def _ops():
    import fusedreg._ops  # noqa: F401
    import fusedreg._C  # noqa: F401
    return torch.ops.fusedreg


def tensors(n_states=0, requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_(requires_grad) for s in SHAPES]
    grads = [torch.randn(s, generator=gen) for s in SHAPES]
    states = [[torch.zeros(s) for s in SHAPES] for _ in range(n_states)]
    return params, grads, states


def run(benchmark, fn, rounds=30):
    with torch.no_grad():
        fn()  # warm-up (lazily created state)
    benchmark.extra_info["params"] = NUMEL
    benchmark.pedantic(torch.no_grad()(fn), rounds=rounds, warmup_rounds=1, iterations=1)


# ---- Adam family: bytes/param 28 -----------------------------------------------------------------------------

@pytest.mark.benchmark(group="adamw")
def test_fusedreg_adamw_l1_l2(benchmark):
    ops = _ops()
    params, grads, (m, v) = tensors(2)
    steps = [torch.zeros((), dtype=torch.float32) for _ in params]
    benchmark.extra_info["bytes_per_param"] = BYTES["adam"]
    run(benchmark, lambda: ops.adam_(params, grads, m, v, [], steps, LR, 0.9, 0.999, 1e-8, WD, True, False, False,
                                     L1, False, 0.0, 0.0, False, 0.0, 0, None, None))


def _torch_adamw(benchmark, rounds=30, **kw):
    params, grads, _ = tensors(requires_grad=True)
    for p, g in zip(params, grads):
        p.grad = g
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


@pytest.mark.benchmark(group="adamw")
def test_seeds_way_l1_in_loss(benchmark):
    """The seeds' way: loss += l1*sum(|p|): the abs-sum forward, its backward into p.grad, then torch's fused
    AdamW step (the fastest torch step; the penalty's gradient never gives exact zeros)."""
    params, grads, _ = tensors(requires_grad=True)
    for p, g in zip(params, grads):
        p.grad = g
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, fused=True)

    def step():
        with torch.enable_grad():
            penalty = L1 * torch.stack([p.abs().sum() for p in params]).sum()
            penalty.backward()
        opt.step()

    benchmark.extra_info["bytes_per_param"] = BYTES["adam"]
    run(benchmark, step)


# ---- SGD with momentum: bytes/param 20; plain SGD 12 --------------------------------------------------------

@pytest.mark.benchmark(group="sgd")
def test_fusedreg_sgd_momentum_l1(benchmark):
    ops = _ops()
    params, grads, (bufs,) = tensors(1)
    benchmark.extra_info["bytes_per_param"] = BYTES["sgd_momentum"]
    run(benchmark, lambda: ops.sgd_(params, grads, bufs, LR, 0.9, 0.0, WD, False, False, False,
                                    L1, False, 0.0, 0.0, False, 0.0, 0, None, None))


def _torch_sgd(benchmark, momentum=0.9, **kw):
    params, grads, _ = tensors(requires_grad=True)
    for p, g in zip(params, grads):
        p.grad = g
    opt = torch.optim.SGD(params, lr=LR, momentum=momentum, weight_decay=WD, **kw)
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
    ops = _ops()
    params, grads, _ = tensors()
    benchmark.extra_info["bytes_per_param"] = BYTES["sgd"]
    run(benchmark, lambda: ops.sgd_(params, grads, [], LR, 0.0, 0.0, WD, False, False, False,
                                    L1, False, 0.0, 0.0, False, 0.0, 0, None, None))


@pytest.mark.benchmark(group="sgd")
def test_torch_sgd_fused(benchmark):
    _torch_sgd(benchmark, momentum=0.0, fused=True)


# ---- the roofline ------------------------------------------------------------------------------------------

@pytest.mark.benchmark(group="roofline")
def test_roofline_a_plus_eq_b(benchmark):
    a, b, _ = tensors()
    benchmark.extra_info["bytes_per_param"] = BYTES["copy"]
    run(benchmark, lambda: torch._foreach_add_(a, b))


# ---- group lasso (rows: group_dim 0, columns: 1) on the same step; the ratio is to the same call without it ----

GROUP_L1 = 1e-4


def _group_adamw(group_l1, group_dim, torch_pass=False):
    """AdamW + L1 with group lasso in the op, or (torch_pass) the op without it followed by the reference's group
    prox in PyTorch (how fusedreg applied group lasso before it was in the kernels)."""
    from fusedreg import reference
    ops = _ops()
    params, grads, (m, v) = tensors(2)
    steps = [torch.zeros((), dtype=torch.float32) for _ in params]
    op_group = 0.0 if torch_pass else group_l1

    def step():
        ops.adam_(params, grads, m, v, [], steps, LR, 0.9, 0.999, 1e-8, WD, True, False, False, L1, False, 0.0, 0.0,
                  False, op_group, group_dim, None, None)
        if torch_pass and group_l1:
            bc2 = 1 - 0.999 ** steps[0].item()
            for p, vv in zip(params, v):
                if p.dim() >= 2:
                    reference._group(p, LR, (vv / bc2).sqrt() + 1e-8, group_l1, group_dim, 0.0)
    return step


def _group_sgd(group_l1, group_dim):
    ops = _ops()
    params, grads, (bufs,) = tensors(1)
    return lambda: ops.sgd_(params, grads, bufs, LR, 0.9, 0.0, WD, False, False, False, L1, False, 0.0, 0.0, False,
                            group_l1, group_dim, None, None)


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


# ---- the table of bench/README.md from a --benchmark-json file ----------------------------------------------

def table(path):
    data = json.load(open(path))
    rows = {b["name"].removeprefix("test_"): b for b in data["benchmarks"]}

    def med(name):
        return rows[name]["stats"]["median"]

    roof = "roofline_a_plus_eq_b"
    roof_bw = BYTES["copy"] * NUMEL / med(roof) if roof in rows else float("nan")
    base = {"adamw": "torch_adamw_fused", "sgd": "torch_sgd_momentum_fused", "roofline": None,
            "group_lasso": "group_adamw_l1[none]"}
    out = [f"threads: {torch.get_num_threads()}, params: {NUMEL:,} fp32 in {len(SHAPES)} tensors", "",
           "| benchmark | median (ms) | vs baseline | bytes/param | effective GB/s | of roofline |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, b in rows.items():
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
    return "\n".join(out)


if __name__ == "__main__":
    print(table(sys.argv[1] if len(sys.argv) > 1 else "bench/cpu.json"))
