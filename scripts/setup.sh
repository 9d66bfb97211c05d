#!/usr/bin/env bash
# Creates (or reuses) ./.venv with torch and everything the demo and tests need, and builds fusedreg into it.
# torch is pinned to the CPU wheel unless FUSEDREG_TORCH names another requirement (e.g. "torch==2.14.1").
# Prints one line per stage, so a first run (several minutes: torch download, C++ build) is not silent.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FUSEDREG_VENV:-.venv}
torch_req=${FUSEDREG_TORCH:-torch==2.13.0}
say() { echo "setup: $*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
# Installing torch first, pinned, keeps the build from pulling a second (CUDA, 5 GB) torch.
want="$torch_req numpy scikit-learn matplotlib tqdm pytest pytest-benchmark hypothesis expecttest ninja pybind11 triton setuptools wheel"
stamp="$venv/.fusedreg-deps"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing $torch_req and the other dependencies into $venv (a few minutes the first time)"
    "$py" -m pip install -q --upgrade pip
    # shellcheck disable=SC2086
    "$py" -m pip install -q $want
    echo "$want" > "$stamp"
else
    say "dependencies up to date in $venv"
fi
# Rebuild the extension only when its sources changed.
src=$(cat setup.py pyproject.toml $(find csrc -type f 2>/dev/null | sort) 2>/dev/null | sha1sum | cut -c1-40)
if [ "$(cat "$venv/.fusedreg-build" 2>/dev/null)" != "$src" ] || ! "$py" -c "import fusedreg._C" 2>/dev/null; then
    say "building the C++ extension (about 2 minutes on 2 cores)"
    "$py" -m pip install -q --no-build-isolation --no-deps -e .
    echo "$src" > "$venv/.fusedreg-build"
else
    say "C++ extension up to date"
fi
say "ready"
