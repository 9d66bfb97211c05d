#!/usr/bin/env bash
# Everything that needs a GPU, in one run on the lent GPU machine (no network there):
#   build the extension with CUDA, the whole test suite on CUDA, compute-sanitizer memcheck on a short step
#   script, the GPU benchmarks. Writes every log and result under $OUT (default ./out).
# Usage (repo root): bash bench/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python3 || command -v python)}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)"}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
status() { echo "$1: rc=$2" | tee -a "$OUT/summary.txt"; }
: > "$OUT/summary.txt"

{ nvidia-smi; "$PY" -c 'import torch, sys; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())'; nvcc --version; } > "$OUT/env.txt" 2>&1

# 1. Build (in place: -e). A failed build ends the run.
"$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1
rc=$?; status build $rc
if [ $rc -ne 0 ]; then tail -40 "$OUT/build.log"; exit 1; fi
"$PY" - > "$OUT/kernels.txt" 2>&1 <<'PY'
import torch, fusedreg._ops as o, fusedreg._C  # noqa: F401
for op in o.SCHEMAS:
    print(op, {k: torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedreg::{op}", k) for k in ("CPU", "CUDA")})
PY
cat "$OUT/kernels.txt"

# 2. The test suite (tests/test_cuda.py runs here; the rest runs too).
"$PY" -m pytest tests -q -p no:randomly -p no:cacheprovider --benchmark-disable --junitxml="$OUT/pytest.xml" \
    > "$OUT/pytest.log" 2>&1
status pytest $?
tail -5 "$OUT/pytest.log"

# 3. compute-sanitizer memcheck on a few steps of every op (sizes off the vector width, misaligned views,
#    a launch split, found_inf).
cat > "$OUT/memcheck_step.py" <<'PY'
import torch
import fusedreg._ops  # noqa: F401
import fusedreg._C  # noqa: F401
ops = torch.ops.fusedreg
dev = "cuda"
for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    od = torch.float64 if dtype == torch.float64 else torch.float32
    sizes = [1, 3, 5, 4097, 65536 + 3] + [7] * 40
    def fresh(dt, offset=0):
        out = []
        for n in sizes:
            buf = torch.randn(n + offset, device=dev).to(dt)
            out.append(buf[offset:])
        return out
    for offset in (0, 1):
        p, g = fresh(dtype, offset), fresh(dtype, offset)
        s1, s2, s3 = (fresh(od, offset) for _ in range(3))
        s2 = [x.abs() for x in s2]; s3 = [x.abs() for x in s3]
        steps = [torch.zeros((), device=dev) for _ in sizes]
        gs, fi = torch.tensor(2.0, device=dev), torch.tensor(0.0, device=dev)
        for found in (0.0, 1.0):
            fi.fill_(found)
            ops.sgd_(p, g, s1, 0.1, 0.9, 0.0, 1e-2, True, False, False, 1e-3, False, 1e-3, 1e-4, False, gs, fi)
            ops.adam_(p, g, s1, s2, s3, steps, 1e-3, 0.9, 0.999, 1e-8, 1e-2, True, True, False, 1e-3, False,
                      1e-3, 1e-4, True, gs, fi)
            ops.adagrad_(p, g, s2, steps, 0.1, 0.01, 1e-2, 1e-10, False, 1e-3, True, 0.0, 0.0, False, gs, fi)
torch.cuda.synchronize()
print("memcheck step script done")
PY
if command -v compute-sanitizer > /dev/null; then
    compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" "$OUT/memcheck_step.py" > "$OUT/memcheck.log" 2>&1
    status memcheck $?
else
    echo "compute-sanitizer not found" > "$OUT/memcheck.log"; status memcheck 127
fi
tail -3 "$OUT/memcheck.log"

# 4. Benchmarks.
"$PY" bench/bench_gpu.py --out "$OUT/bench_gpu.json" > "$OUT/bench_gpu.md" 2>&1
status bench_gpu $?
cat "$OUT/bench_gpu.md"

cat "$OUT/summary.txt"
! grep -qv "rc=0" "$OUT/summary.txt"
