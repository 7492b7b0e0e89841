#!/usr/bin/env bash
# Creates .venv in the repository root on first use and keeps it in sync with requirements-dev.txt.
# Sourced by run.sh and test.sh; safe to call repeatedly (reinstalls only when the requirements change).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.sgdlab-installed"
want="$(cat "$root/requirements-dev.txt" "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
    echo "sgdlab: creating $venv" >&2
    python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "sgdlab: installing dependencies into $venv (first run takes a minute)" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip >&2
    (cd "$root" && "$venv/bin/python" -m pip install --quiet -r requirements-dev.txt >&2)
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
