#!/usr/bin/env bash
# The whole test suite: sets up .venv on first use, then runs pytest on all cores.
# Extra arguments go to pytest, e.g. ./test.sh -k sgd
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
# loadgroup: tests marked xdist_group("NAME") run on one worker (two-process tests share a launch)
exec python -m pytest -n auto --dist loadgroup "$@"
