#!/usr/bin/env bash
# The main job: sets up .venv on first use, then runs `sgdlab` (default: `sgdlab compare`, the default race).
# Any arguments are passed to the sgdlab command, e.g. ./run.sh compare --task digits
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
if [ $# -eq 0 ]; then set -- compare; fi
exec sgdlab "$@"
