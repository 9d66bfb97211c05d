#!/usr/bin/env bash
# The main job: set up ./.venv, then train the demo models and print the table (extra args go to the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m fusedreg demo "$@"
