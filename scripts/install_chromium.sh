#!/usr/bin/env bash
# Install Debian's chromium for the feature-browser test (tests/test_figures.py drives it with
# Playwright; we never run `playwright install`, which downloads browsers from the internet).
# Idempotent: does nothing when chromium is already on the PATH. Needs root (or sudo).
exec bash "$(dirname "$0")/install_debian.sh" chromium chromium fonts-dejavu-core
