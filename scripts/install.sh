#!/usr/bin/env bash
# Create .venv/ in the repo root from the lock file and install this package into it (editable,
# so `.venv/bin/r2p1d` runs the checkout). Idempotent: a venv whose stamp matches the lock and
# pyproject.toml is reused as is.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
stamp=".venv/.lock-sha256"
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[install] creating .venv from requirements.lock (torch is large: a few minutes)" >&2
"$py" -m venv .venv
.venv/bin/python -m pip install -q -r requirements.lock 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# The package itself, its dependencies already pinned above: no resolver run.
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "$want" > "$stamp"
