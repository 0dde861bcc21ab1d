#!/usr/bin/env bash
# Run HERE (a machine with pip and a registry), before scripts/gpu_checks.sh runs on a lent GPU
# machine: that machine's python3 has torch, timm, torchvision, pyarrow, numpy, pillow,
# safetensors and tqdm but no polars, and reaches no registry. This saves the one wheel the
# checks' imports need into .whl/ (ignored by git), for the device tool's `carry: [".whl"]`.
# polars 1.20 (the oldest this project supports) is one 33 MB wheel; polars 2 is two wheels of
# 55 MB together, and the whole carried tree must stay under 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "polars==1.20.0"
ls -l .whl
