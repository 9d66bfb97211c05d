#!/usr/bin/env bash
# Set up ./.venv, then run the test suite (extra args go to pytest). The native CPU backend must be there:
# a broken build fails the run instead of quietly testing only the reference.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FUSEDREG_REQUIRE=${FUSEDREG_REQUIRE:-cpp}
exec .venv/bin/python -m pytest tests "$@"
