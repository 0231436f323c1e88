#!/usr/bin/env bash
# Create .venv/ in the repo root from the lock file and install this package into it (editable,
# so `.venv/bin/r2p1d` runs the checkout). Idempotent: a venv whose stamp matches the lock and
# pyproject.toml is reused, after checking that this checkout is still installed in it (anything
# that uninstalled it, e.g. a `pip install` of another copy, is repaired here).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3.11}"
command -v "$py" >/dev/null || py=python3
stamp=".venv/.lock-sha256"
want="$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)"
install_self() {
  # The package itself, its dependencies already pinned: no resolver run.
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  if [ ! -x .venv/bin/r2p1d ] || ! .venv/bin/python -m pip show -q r2p1d-batch >/dev/null 2>&1; then
    echo "[install] .venv lacks r2p1d-batch: installing this checkout into it again" >&2
    install_self
  fi
  exit 0
fi
echo "[install] creating .venv from requirements.lock (torch is large: a few minutes)" >&2
"$py" -m venv .venv
.venv/bin/python -m pip install -q -r requirements.lock 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
install_self
echo "$want" > "$stamp"
