#!/usr/bin/env bash
# The checks that need a GPU, as one short script for a lent device (about 15 minutes of it):
#   bash scripts/gpu_checks.sh [OUT]          # writes OUT/*.txt (default $OUT, else gpu-results/)
# 1. embedding throughput at 224 px, both encoders (random weights: the arithmetic is the hub's):
#    ours end to end vs the bf16 forward-only limit and vs the seed's approach (targets: >= 80% of
#    the limit, >= 3x the seed)
# 2. SAE training at the seed's config on 140k x 640 (target: >= 5x the seed's loop): 2 epochs of
#    each loop step by step, then our full 200-epoch run's wall time
# Needs the project's .venv (make setup) on the device machine.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-gpu-results}}"
mkdir -p "$OUT"
PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 240 $PY scripts/bench_embed.py --device cuda --encoder zoobot-euclid,mae-euclid \
    --n 4096 --source-size 224 --format jpeg --repeats 3 --json "$OUT/embed.json" \
    2>&1 | tee "$OUT/embed.txt"
timeout 480 $PY scripts/bench_sae.py --device cuda --rows 140000 --epochs 2 --full \
    2>&1 | tee "$OUT/sae.txt"
