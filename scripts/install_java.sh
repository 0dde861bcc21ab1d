#!/usr/bin/env bash
# Install Debian's headless Java runtime for the Spark test (tests/test_spark.py: pyspark needs a
# JVM, Java 17+ for Spark 4). Idempotent: does nothing when java is already on the PATH.
set -euo pipefail

if command -v java >/dev/null 2>&1; then
    echo "java already installed: $(command -v java)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install_java.sh: needs root or sudo to apt-get install default-jre-headless" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends default-jre-headless >/dev/null
echo "installed java: $(command -v java)"
