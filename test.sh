#!/usr/bin/env bash
# The whole test suite: sets up .venv on first use, then runs pytest on all cores.
# Extra arguments go to pytest, e.g. ./test.sh -k sgd
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
exec python -m pytest -n auto "$@"
