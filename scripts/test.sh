#!/usr/bin/env bash
# Set up ./.venv, then run the tests. Without arguments: the whole suite (pyproject's testpaths = tests).
# Arguments go to pytest; files, folders or node ids among them narrow the run to those
# (bash scripts/test.sh tests/test_select.py -x). The native CPU backend must be there: a broken build fails
# the run instead of quietly testing only the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FUSEDREG_REQUIRE=${FUSEDREG_REQUIRE:-cpp}
# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors, so the suites cover them too.
if .venv/bin/python -c "import sys, torch; sys.exit(torch.cuda.is_available())"; then
    export TRITON_INTERPRET=1 FUSEDREG_REQUIRE="$FUSEDREG_REQUIRE,triton"
fi
# pytest reads testpaths only when no path is given, so paths narrow the run and options alone keep the suite.
exec .venv/bin/python -m pytest "$@"
