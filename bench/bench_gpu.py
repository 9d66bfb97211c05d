"""GPU benchmark: one optimizer step over ~168M params in transformer-like shapes, fp32 and bf16 params.

    python bench/bench_gpu.py --out bench_gpu.json      (bench/gpu.sh runs it on the lent GPU machine)

Times are CUDA-event medians over --iters steps after --warmup steps. Compared, per dtype: fusedreg adam_ (CUDA
kernels; and Triton where fusedreg.backends has it) with decoupled wd + L1 + L2, and the fusedreg.AdamW /
SGD classes' step (wd + L1; what users call, Python checks included), vs torch AdamW
fused/foreach, torch fused + a foreach soft-threshold pass, the seeds' way (loss += l1*sum|p|: abs-sum forward,
backward, then torch fused AdamW or the AdamW torch builds by default); fusedreg sgd_ (momentum, L1, wd) vs torch SGD fused/foreach; device-to-device
copy and a += b for the bandwidth roofline. fusedreg lion_ (wd + L1, op and class) is held against torch's fused
SGD with momentum, which moves the same bytes.
"""
import argparse
import json
import statistics

import torch

import fusedreg
import fusedreg._C  # noqa: F401
from fusedreg import _ops

LAYERS, D, FF, VOCAB = 16, 1024, 4096, 32768
SHAPES = ([(VOCAB, D)] + [(FF, D), (D, FF), (3 * D, D), (D, D)] * LAYERS + [(FF,), (D,), (D,), (D,)] * LAYERS)
LR, WD, L1, L2 = 1e-3, 1e-2, 1e-4, 1e-3
DEVICE = "cuda"  # tests/test_backends.py builds and steps every case once on CPU with small SHAPES


def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def setup(dtype, n_states, requires_grad=False):
    torch.manual_seed(0)
    params = [torch.randn(s, device=DEVICE, dtype=dtype).requires_grad_(requires_grad) for s in SHAPES]
    grads = [torch.randn(s, device=DEVICE, dtype=dtype) for s in SHAPES]
    od = torch.float64 if dtype == torch.float64 else torch.float32
    states = [[torch.zeros(s, device=DEVICE, dtype=od) for s in SHAPES] for _ in range(n_states)]
    return params, grads, states


def torch_opt(cls, dtype, **kw):
    params, grads, _ = setup(dtype, 0, requires_grad=True)
    for p, g in zip(params, grads):
        p.grad = g
    return params, cls(params, **kw)


def cases(dtype):
    """name -> (make() -> step fn, bytes/param for the bandwidth column)."""
    ops = torch.ops.fusedreg
    esz = torch.finfo(dtype).bits // 8
    adam_bytes = 3 * esz + 16 if dtype != torch.float32 else 28  # p, g read; p written; m, v read+written fp32
    sgd_bytes = 3 * esz + 8

    def fused_adam(fn):
        def make():
            p, g, (m, v) = setup(dtype, 2)
            steps = [torch.zeros((), device=DEVICE) for _ in p]
            kw = {**_ops.defaults("adam_"), "lr": LR, "weight_decay": WD, "decoupled": True, "l1": L1, "l2": L2}
            return lambda: fn(p, g, m, v, [], steps, **kw)
        return make

    def adamw(**kw):
        def make():
            _, opt = torch_opt(torch.optim.AdamW, dtype, lr=LR, weight_decay=WD, **kw)
            return opt.step
        return make

    def fused_then_threshold():
        params, opt = torch_opt(torch.optim.AdamW, dtype, lr=LR, weight_decay=WD, fused=True)
        t = LR * L1

        def step():
            opt.step()
            with torch.no_grad():
                torch._foreach_sub_(params, torch._foreach_clamp_max(torch._foreach_clamp_min(params, -t), t))
        return step

    def seeds_way(**kw):
        def make():
            params, opt = torch_opt(torch.optim.AdamW, dtype, lr=LR, weight_decay=WD, **kw)

            def step():
                penalty = L1 * torch.stack([p.abs().sum() for p in params]).sum()
                penalty.backward()
                opt.step()
            return step
        return make

    def optimizer(cls, backend, **kw):
        # As users call it: the class's step (its Python checks included), wd + L1.
        def make():
            _, opt = torch_opt(getattr(fusedreg, cls), dtype, lr=LR, weight_decay=WD, l1=L1,
                               backend=backend if DEVICE == "cuda" else "auto", **kw)
            return opt.step
        return make

    def fused_sgd():
        p, g, (b,) = setup(dtype, 1)
        kw = {**_ops.defaults("sgd_"), "lr": LR, "momentum": 0.9, "weight_decay": WD, "l1": L1}
        return lambda: ops.sgd_(p, g, b, **kw)

    def sgd(**kw):
        def make():
            _, opt = torch_opt(torch.optim.SGD, dtype, lr=LR, momentum=0.9, weight_decay=WD, **kw)
            return opt.step
        return make

    def ftrl(fn):
        def make():
            p, g, (n, z) = setup(dtype, 2)
            for t in n:
                t.fill_(0.1)
            kw = {**_ops.defaults("ftrl_"), "lr": LR, "l1": L1}
            return lambda: fn(p, g, n, z, **kw)
        return make

    def lion(fn):
        def make():
            p, g, (m,) = setup(dtype, 1)
            kw = {**_ops.defaults("lion_"), "lr": LR, "weight_decay": WD, "l1": L1, "l1_decoupled": True}
            return lambda: fn(p, g, m, **kw)
        return make

    def ftrl_class(backend):
        def make():
            _, opt = torch_opt(fusedreg.Ftrl, dtype, lr=LR, l1=L1, backend=backend if DEVICE == "cuda" else "auto")
            return opt.step
        return make

    def adagrad(**kw):
        def make():
            _, opt = torch_opt(torch.optim.Adagrad, dtype, lr=LR, initial_accumulator_value=0.1, **kw)
            return opt.step
        return make

    def muon(cls, **kw):
        # Muon takes the matrices only; both steps run the same Newton-Schulz (bf16 matmuls)
        def make():
            _, opt = torch_opt(lambda ps, **k: cls([p for p in ps if p.dim() == 2], **k), dtype, lr=LR, **kw)
            return opt.step
        return make

    def copy():
        a, b, _ = setup(dtype, 0)
        return lambda: torch._foreach_copy_(a, b)

    def add():
        a, b, _ = setup(dtype, 0)
        return lambda: torch._foreach_add_(a, b)

    ftrl_bytes = 3 * esz + 16 if dtype != torch.float32 else 28  # p, g read; p written; n, z read+written fp32
    adagrad_bytes = 3 * esz + 8 if dtype != torch.float32 else 20
    out = {"fusedreg_cuda_adamw_l1_l2": (fused_adam(ops.adam_), adam_bytes),
           "fusedreg_cuda_adamw_class_l1": (optimizer("AdamW", "cuda"), adam_bytes),
           "fusedreg_cuda_ftrl_l1": (ftrl(ops.ftrl_), ftrl_bytes),
           "fusedreg_cuda_ftrl_class_l1": (ftrl_class("cuda"), ftrl_bytes),
           "fusedreg_cuda_lion_l1": (lion(ops.lion_), sgd_bytes),  # p, g read; p written; m read+written
           "fusedreg_cuda_lion_class_l1": (optimizer("Lion", "cuda"), sgd_bytes)}
    try:
        why = fusedreg.backends.explain()["triton"]
        if why != "available":
            raise RuntimeError(why)
        out["fusedreg_triton_adamw_l1_l2"] = (fused_adam(fusedreg.backends.kernel("triton", "adam_")), adam_bytes)
        out["fusedreg_triton_adamw_class_l1"] = (optimizer("AdamW", "triton"), adam_bytes)
        out["fusedreg_triton_ftrl_l1"] = (ftrl(fusedreg.backends.kernel("triton", "ftrl_")), ftrl_bytes)
        out["fusedreg_triton_lion_l1"] = (lion(fusedreg.backends.kernel("triton", "lion_")), sgd_bytes)
    except Exception as e:  # noqa: BLE001  (Triton is optional)
        print(f"triton: not benchmarked ({type(e).__name__}: {e})")
    out.update({
        "torch_adamw_fused": (adamw(fused=True), adam_bytes),
        "torch_adamw_foreach": (adamw(foreach=True), adam_bytes),
        "torch_adamw_fused_then_foreach_soft_threshold": (fused_then_threshold, adam_bytes),
        "seeds_way_l1_in_loss_fused_adamw": (seeds_way(fused=True), adam_bytes),
        "seeds_way_l1_in_loss_default_adamw": (seeds_way(), adam_bytes),
        "fusedreg_cuda_sgd_momentum_l1": (fused_sgd, sgd_bytes),
        "fusedreg_cuda_sgd_class_momentum_l1": (optimizer("SGD", "cuda", momentum=0.9), sgd_bytes),
        "torch_sgd_momentum_fused": (sgd(fused=True), sgd_bytes),
        "torch_sgd_momentum_foreach": (sgd(foreach=True), sgd_bytes),
        "torch_adagrad_fused": (adagrad(fused=True), adagrad_bytes),
        # p, g, buf read, buf and the update written (muon_momentum_); p read and written, the update read (muon_)
        "fusedreg_cuda_muon_class_l1_group": (muon(fusedreg.Muon, l1=L1, group_l1=L1, backend="cuda"
                                                   if DEVICE == "cuda" else "auto"), 5 * esz + 12),
        "torch_muon": (muon(torch.optim.Muon), 5 * esz + 12),
        "copy_d2d": (copy, 2 * esz),
        "a_plus_eq_b": (add, 3 * esz),
    })
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_gpu.json")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    numel = sum(torch.Size(s).numel() for s in SHAPES)
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
              "params": numel, "tensors": len(SHAPES), "results": {}}
    for dtype in (torch.float32, torch.bfloat16):
        rows = {}
        for name, (make, bpp) in cases(dtype).items():
            try:
                fn = make()
                sec = timed(fn, args.warmup, args.iters)
                rows[name] = {"median_ms": sec * 1e3, "bytes_per_param": bpp, "GBps": bpp * numel / sec / 1e9}
            except Exception as e:  # noqa: BLE001  (record and go on: one failure must not lose the others)
                rows[name] = {"error": f"{type(e).__name__}: {e}"}
            finally:
                fn = None
                torch.cuda.empty_cache()
        result["results"][str(dtype).removeprefix("torch.")] = rows
    json.dump(result, open(args.out, "w"), indent=1)

    print(f"{result['device']}, torch {result['torch']}, {numel:,} params in {len(SHAPES)} tensors")
    for dt, rows in result["results"].items():
        base = rows.get("torch_adamw_fused", {}).get("median_ms")
        sbase = rows.get("torch_sgd_momentum_fused", {}).get("median_ms")
        fbase = rows.get("torch_adagrad_fused", {}).get("median_ms")
        print(f"\n### {dt}\n\n| case | median (ms) | vs torch fused (FTRL: vs fused Adagrad) | GB/s |\n"
              "| --- | ---: | ---: | ---: |")
        for name, r in rows.items():
            if "error" in r:
                print(f"| {name} | error: {r['error'][:80]} | | |")
                continue
            ref = sbase if "sgd" in name or "lion" in name else fbase if ("ftrl" in name or "adagrad" in name) else base
            ratio = f"{r['median_ms'] / ref:.2f}x" if ref and any(k in name for k in ("adam", "sgd", "seeds", "ftrl",
                                                                                    "lion")) \
                else ""
            print(f"| {name} | {r['median_ms']:.2f} | {ratio} | {r['GBps']:.0f} |")


if __name__ == "__main__":
    main()
