#!/usr/bin/env bash
# One command: OS packages, .venv from the lock file, lint, then the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_os_deps.sh   # Debian's Chromium for the report test (tests/test_curate.py)
bash scripts/install.sh
.venv/bin/ruff check .
# The 20 slowest tests at the end: where the suite's time goes, in every CI log.
exec .venv/bin/python -m pytest -q --durations=20 "$@"
