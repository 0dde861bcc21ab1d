#!/usr/bin/env bash
# The checks that need a GPU, as one prepared script for a lent device (at most 12 minutes of
# it, in two commands since one may run 10 minutes at most; the machine stays warm between them):
#   here:   bash scripts/gpu_wheels.sh                      # once: .whl/ with the wheel it needs
#   device: run(command="bash scripts/gpu_checks.sh embed", carry=[".whl"], timeout_s=280)
#           run(command="bash scripts/gpu_checks.sh sae", carry=[".whl"], timeout_s=520)
#           run(command="bash scripts/gpu_checks.sh engines", carry=[".whl"], timeout_s=400)
#   bash scripts/gpu_checks.sh [embed|sae|all|engines] [OUT] # OUT: default $OUT, else gpu-results/
# writes OUT/*.txt; with `all`, goes on to the SAE check when the embedding check fails.
# 1. embedding throughput at 224 px, both encoders (random weights: the arithmetic is the hub's):
#    ours end to end vs the bf16 forward-only limit and vs the seed's approach (targets: >= 80% of
#    the limit, >= 3x the seed), and the input pipeline's own limit (is decoding the bound?)
# 2. SAE training at the seed's config on 140k x 640 (target: >= 5x the seed's loop): 2 epochs of
#    each loop step by step, the 200-epoch times extrapolated from them, then our full 200-epoch
#    run's measured wall time
# 3. (engines, not in all) SAE steps/s with torchrun over the machine's GPUs (nccl) vs one process,
#    at the seed's size; with one GPU, nccl has no second rank, so 2 gloo processes on its CPUs;
#    and embed --engine ray with one GPU actor vs the plain loop, where Ray is installed
# Python: the project's .venv when there is one, else the machine's python3 with .whl/ on top.
set -uo pipefail
cd "$(dirname "$0")/.."
PART="${1:-all}"
case "$PART" in embed|sae|all|engines) ;; *) echo "usage: gpu_checks.sh [embed|sae|all|engines] [OUT]"; exit 2 ;; esac
OUT="${2:-${OUT:-gpu-results}}"
mkdir -p "$OUT"
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
    if compgen -G ".whl/*.whl" > /dev/null; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/galsae-site .whl/*.whl || exit 1
        export PYTHONPATH="/tmp/galsae-site${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! $PY -c "import galsae_lake.train, galsae_lake.encoders, galsae_lake.sources.synthetic, torchvision" \
        2> "$OUT/imports.txt"; then
    echo "the checks cannot import their code with $PY (run scripts/gpu_wheels.sh here and carry .whl):"
    tail -3 "$OUT/imports.txt"
    exit 1
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
if [ "$PART" = engines ]; then
    GPUS=$(nvidia-smi --list-gpus | wc -l)
    if [ "$GPUS" -ge 2 ]; then
        timeout 300 $PY scripts/bench_engines.py ddp --device cuda --nproc "$GPUS" --rows 140000 --dim 640
    else
        timeout 300 $PY scripts/bench_engines.py ddp --device cpu --nproc 2 --threads 4 --rows 140000 --dim 640
    fi 2>&1 | tee "$OUT/engines_ddp.txt"
    if $PY -c "import ray" 2>/dev/null; then
        timeout 90 $PY scripts/bench_engines.py ray --device cuda --n 4096 2>&1 | tee "$OUT/engines_ray.txt"
    else
        echo "ray is not installed here: no Ray check" | tee "$OUT/engines_ray.txt"
    fi
    exit 0
fi
[ "$PART" = sae ] || timeout 240 $PY scripts/bench_embed.py --device cuda --encoder zoobot-euclid,mae-euclid \
    --n 4096 --source-size 224 --image-format jpeg --repeats 3 --json "$OUT/embed.json" \
    2>&1 | tee "$OUT/embed.txt" || echo "bench_embed stopped with status $?" | tee -a "$OUT/embed.txt"
[ "$PART" = embed ] || timeout 480 $PY scripts/bench_sae.py --device cuda --rows 140000 --epochs 2 --full \
    2>&1 | tee "$OUT/sae.txt" || echo "bench_sae stopped with status $?" | tee -a "$OUT/sae.txt"
