#!/usr/bin/env bash
# The seed's full study on the real data (Wu & Walmsley 2025), online, as one recipe.
#
#   bash scripts/reproduce_paper.sh [LAKE]        # default LAKE=paper-lake
#
# Needs the Hugging Face hub (datasets and timm weights) and, for the embedding and SAE steps,
# a CUDA GPU (the commands fall back to the CPU, much slower). What it does:
#   1. ingest mwalmsley/gz_euclid: galaxies, images and volunteer votes (train and test splits)
#   2. embed them with the Zoobot-Euclid encoder (ConvNeXt-nano, 640-d) from the hub
#   3. ingest the precomputed MAE embeddings (ViT-S/8, 384-d) of mwalmsley/euclid_q1_embeddings
#   4. train an SAE on each with the seed's configs (2,048 latents, k=64, 200 epochs)
#   5. fit the 64-component PCA baseline on each
#   6. analyze SAE and PCA on the test split (Spearman with every label, novelty, null)
#   7. draw the figures and the feature browsers
# Each step is idempotent: re-running skips embeddings already made and replaces the rest.
set -euo pipefail

LAKE="${1:-paper-lake}"
GALSAE="${GALSAE:-galsae-lake}"
run() { echo "+ galsae-lake --lake $LAKE $*" >&2; "$GALSAE" --lake "$LAKE" "$@"; }
last_word() { tail -n 1 | awk '{print $NF}'; }

run ingest hf --dataset mwalmsley/gz_euclid --splits train,test
run embed --encoder zoobot-euclid --weights hub
# The seed's SSL input: block-11 pooled features; ids crossmatch the gz_euclid galaxies.
run ingest hf-embeddings --dataset mwalmsley/euclid_q1_embeddings \
    --column pooled_features_block_11 --encoder mae-euclid

for encoder in zoobot-euclid mae-euclid; do
    config=zoobot
    [ "$encoder" = mae-euclid ] && config=mae
    sae_id=$(run train-sae --encoder "$encoder" --config "$config" | last_word)
    pca_id=$(run pca --encoder "$encoder" --n-components 64 | last_word)
    run analyze --model "$sae_id" --split test
    run analyze --model "$pca_id" --split test
    run figures --model "$sae_id" --image-format html,png,svg
    run figures --model "$pca_id" --image-format html,png
done
run tables
