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

# 2. The test suite (the cuda rows of tests/test_kernels.py and tests/test_cuda.py run here; the rest runs too).
"$PY" -m pytest tests -q -p no:randomly -p no:cacheprovider --benchmark-disable --junitxml="$OUT/pytest.xml" \
    > "$OUT/pytest.log" 2>&1
status pytest $?
tail -5 "$OUT/pytest.log"

# 3. compute-sanitizer memcheck on a few steps of every op (bench/memcheck_step.py: sizes off the vector width,
#    misaligned views, group lasso on rows and columns, found_inf).
if command -v compute-sanitizer > /dev/null; then
    compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" bench/memcheck_step.py cuda > "$OUT/memcheck.log" 2>&1
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
