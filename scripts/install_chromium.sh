#!/usr/bin/env bash
# Install Debian's chromium for the feature-browser test (tests/test_figures.py drives it with
# Playwright; we never run `playwright install`, which downloads browsers from the internet).
# Idempotent: does nothing when chromium is already on the PATH. Needs root (or sudo).
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install_chromium.sh: needs root or sudo to apt-get install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "installed chromium: $(command -v chromium)"
