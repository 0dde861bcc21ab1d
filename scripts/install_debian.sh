#!/usr/bin/env bash
# Install Debian packages a test needs unless COMMAND is already on the PATH:
#   bash scripts/install_debian.sh COMMAND PACKAGE...
# e.g. chromium for the feature-browser test (install_chromium.sh), java for the Spark test
# (default-jre-headless). Idempotent; needs root (or sudo).
set -euo pipefail

COMMAND="$1"; shift
if command -v "$COMMAND" >/dev/null 2>&1; then
    echo "$COMMAND already installed: $(command -v "$COMMAND")"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install_debian.sh: needs root or sudo to apt-get install $*" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
echo "installed $COMMAND: $(command -v "$COMMAND")"
