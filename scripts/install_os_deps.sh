#!/usr/bin/env bash
# OS packages the tests need besides .venv/: Debian's headless Chromium, which renders the HTML
# report in tests/test_curate.py. Installs only when /usr/bin/chromium is missing (root or sudo).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
/usr/bin/chromium --version
