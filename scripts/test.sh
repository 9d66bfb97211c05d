#!/usr/bin/env bash
# Set up ./.venv, then run the test suite (extra args go to pytest). The native CPU backend must be there:
# a broken build fails the run instead of quietly testing only the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FUSEDREG_REQUIRE=${FUSEDREG_REQUIRE:-cpp}
# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors, so the suites cover them too.
if .venv/bin/python -c "import sys, torch; sys.exit(torch.cuda.is_available())"; then
    export TRITON_INTERPRET=1 FUSEDREG_REQUIRE="$FUSEDREG_REQUIRE,triton"
fi
exec .venv/bin/python -m pytest tests "$@"
