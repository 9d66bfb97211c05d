#!/usr/bin/env bash
# Creates (or reuses) ./.venv with torch and everything the demo and tests need, and builds fusedreg into it.
#
# What it installs: torch==2.13.0 (FUSEDREG_TORCH names another requirement, e.g. "torch==2.14.1"), in a pip
# call of its own, then numpy, scikit-learn, matplotlib, tqdm, pytest, pytest-benchmark, hypothesis, expecttest,
# accelerate, ninja, pybind11, triton, setuptools and wheel. Which torch build that is depends on where pip finds it:
#   - from PyPI on Linux x86_64: the CUDA build, with its nvidia-* wheels; a venv with it takes about 5.5 GB
#     (measured with torch 2.14.1). It runs on CPU-only machines too.
#   - the CPU-only build: set FUSEDREG_TORCH_INDEX=https://download.pytorch.org/whl/cpu (PyTorch's own wheel
#     index, passed to pip as --index-url for the torch install only; the rest still comes from PyPI). The venv
#     then takes about 2.3 GB: torch 0.75 GB, triton 1.0 GB (the Triton backend; on CPU the tests run its
#     interpreter), the rest 0.5 GB. CI's machine finds the CPU wheel (torch-2.13.0+cpu) in pip's local
#     find-links folder, so it gets the CPU build without the variable.
# After installing it prints the torch build it got and the venv's size.
# Prints one line per stage, so a first run (several minutes: torch download, C++ build) is not silent.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FUSEDREG_VENV:-.venv}
torch_req=${FUSEDREG_TORCH:-torch==2.13.0}
torch_index=${FUSEDREG_TORCH_INDEX:-}
say() { echo "setup: $*" >&2; }

if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    python3 -m venv "$venv"
fi
py="$venv/bin/python"
# torch first, pinned, in its own call (so FUSEDREG_TORCH_INDEX reaches it alone); the rest cannot then pull a
# second torch, nor can the build (no build isolation).
deps="numpy scikit-learn matplotlib tqdm pytest pytest-benchmark hypothesis expecttest accelerate ninja pybind11 triton setuptools wheel"
want="$torch_req${torch_index:+ --index-url $torch_index} $deps"
stamp="$venv/.fusedreg-deps"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    if [ -n "$torch_index" ]; then
        say "installing $torch_req from $torch_index into $venv"
    else
        say "installing $torch_req from pip's configured sources (PyPI by default) into $venv; on Linux x86_64"
        say "  PyPI's torch is the CUDA build (with its nvidia-* wheels the venv takes about 5.5 GB); for the"
        say "  CPU-only build (about 2.3 GB) run with FUSEDREG_TORCH_INDEX=https://download.pytorch.org/whl/cpu"
    fi
    "$py" -m pip install -q --upgrade pip
    # shellcheck disable=SC2086
    "$py" -m pip install -q ${torch_index:+--index-url "$torch_index"} "$torch_req"
    say "installing the other dependencies (a few minutes the first time): $deps"
    # shellcheck disable=SC2086
    "$py" -m pip install -q "$torch_req" $deps
    echo "$want" > "$stamp"
    say "installed: torch $("$py" -c 'import torch; print(torch.__version__, "(CUDA " + torch.version.cuda + " build)" if torch.version.cuda else "(CPU-only build)")'); $venv takes $(du -sh "$venv" | cut -f1)"
else
    say "dependencies up to date in $venv ($torch_req${torch_index:+ from $torch_index})"
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
