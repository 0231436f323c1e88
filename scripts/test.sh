#!/usr/bin/env bash
# One command: OS packages, .venv from the lock file, lint, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_os_deps.sh   # Debian's Chromium for the report test (tests/test_curate.py)
bash scripts/install.sh
.venv/bin/ruff check .
# Two xdist workers: one runs the tests that share the session's Ray, in order; the other runs
# the rest beside it (tests/helpers/markers.py). The 20 slowest tests at the end: where the
# suite's time goes, in every CI log.
exec .venv/bin/python -m pytest -q -n 2 --dist loadgroup --durations=20 "$@"
