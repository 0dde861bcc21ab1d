#!/usr/bin/env bash
# The seed's study (Wu & Walmsley 2025, github.com/jwuphysics/euclid-galaxy-morphology-saes) on
# the real Euclid data, online, step by step as the seed runs it; then our extensions.
#
#   bash scripts/reproduce_paper.sh [ROOT]          # default ROOT=paper-lake
#   LIMIT=500 bash scripts/reproduce_paper.sh /tmp/smoke    # a quick trial: 500 galaxies per split
#   Q1_CATALOGUE=morphology_catalogue.parquet bash scripts/reproduce_paper.sh
#
# Needs the Hugging Face hub (datasets and timm weights), Zenodo for the Q1 catalogue (or the file
# given as $Q1_CATALOGUE), and preferably a CUDA GPU for the embed and train-sae steps (they fall
# back to the CPU, much slower). The two paths use different galaxies (gz_euclid vs euclid_q1), so
# each gets its own lake: ROOT/zoobot and ROOT/mae. Sizes are printed by the steps themselves;
# where a public source states one, it is named below (docs/sources.md has the sources).
#
# The seed's supervised path (src/create_embeddings.py, train_matryoshka_sae.py, analyze_pca.py,
# make_figures.py):
#   Z1 ingest mwalmsley/gz_euclid, train and test: galaxies, images, volunteer votes
#      (galaxy-datasets' README: ~100k galaxies; its gz_euclid notebook copied 87,374 train and
#      3,646 test images at one point; `ingest hf` prints the real counts)
#   Z2 embed with hf_hub:mwalmsley/zoobot-encoder-euclid (ConvNeXt-nano): the head's output, 640-d
#   Z3 train the SAE with the seed's config (src/config/matryoshka_sae_config.toml)
#   Z4 the 64-component PCA baseline
#   Z5 analyze SAE and PCA on the test split against the volunteers' vote fractions; figures
# The seed's self-supervised path (create_mae_embeddings.py, train_matryoshka_sae_ssl.py,
# make_figures.py):
#   M1 ingest mwalmsley/euclid_q1, configuration v1-gz_arcsinh_vis_y: galaxies and images
#   M2 ingest mwalmsley/euclid_q1_embeddings, column pooled_features_block_11 (384-d), inner-joined
#      to euclid_q1 on id_str split by split, as the seed's MAEEmbeddingDataset does
#   M3 ingest the Euclid Q1 morphology catalogue (Zenodo record 15020547): Zoobot's predicted
#      fractions, a votes catalog of their own (zoobot-predictions); ids matched across '-'/NEG
#   M4 train the SAE with the seed's MAE config (src/config/mae_matryoshka_sae_config.toml); PCA
#   M5 analyze SAE and PCA on the test split against the catalogue's fractions; figures
# Our extensions:
#   X1 embed euclid_q1's images with the MAE encoder ourselves (block 11's patch-token mean, the
#      hub's quantity on a deterministic view) and compare with the hub's vectors
#   X2 the MAE SAE against the volunteers' votes too (gz_euclid's votes, ids matched across the
#      release prefix), and the Zoobot SAE against the Q1 catalogue's predictions
# Each step is idempotent: re-running skips embeddings already made and replaces the rest.
#
# Every online input can be pointed elsewhere (a local copy in the same shape; this is how the
# script was run offline, on the inputs scripts/make_euclid_fixtures.py writes): GZ_EUCLID, EUCLID_Q1, EUCLID_Q1_EMBEDDINGS (dataset name or
# folder), ZOOBOT_WEIGHTS, MAE_WEIGHTS (hub or a hub-layout folder), Q1_CATALOGUE (a file);
# SAE_SET="epochs=2" adds --set overrides to both SAEs, PCA_COMPONENTS (64) the PCA's size.
set -euo pipefail

ROOT="${1:-paper-lake}"
ZOOBOT="$ROOT/zoobot"
MAE="$ROOT/mae"
GALSAE="${GALSAE:-galsae-lake}"
PYTHON="${PYTHON:-python3}"
GZ_EUCLID="${GZ_EUCLID:-mwalmsley/gz_euclid}"
EUCLID_Q1="${EUCLID_Q1:-mwalmsley/euclid_q1}"
EUCLID_Q1_EMBEDDINGS="${EUCLID_Q1_EMBEDDINGS:-mwalmsley/euclid_q1_embeddings}"
ZOOBOT_WEIGHTS="${ZOOBOT_WEIGHTS:-hub}"
MAE_WEIGHTS="${MAE_WEIGHTS:-hub}"
PCA_COMPONENTS="${PCA_COMPONENTS:-64}"
LIMIT_ARGS=()
[ -n "${LIMIT:-}" ] && LIMIT_ARGS=(--limit "$LIMIT")
SAE_ARGS=()
for item in ${SAE_SET:-}; do SAE_ARGS+=(--set "$item"); done
Q1_CATALOGUE="${Q1_CATALOGUE:-$ROOT/morphology_catalogue.parquet}"
# the file name is the seed's (data/morphology_catalogue.parquet); Zenodo's own name is not verified
Q1_URL="${Q1_URL:-https://zenodo.org/records/15020547/files/morphology_catalogue.parquet?download=1}"

run() { local lake="$1"; shift; echo "+ galsae-lake --lake $lake $*" >&2; "$GALSAE" --lake "$lake" "$@"; }
last_word() { tail -n 1 | awk '{print $NF}'; }
mkdir -p "$ROOT"

# ---- the seed's supervised path: Zoobot on gz_euclid, volunteer votes
run "$ZOOBOT" ingest hf --dataset "$GZ_EUCLID" --splits train,test ${LIMIT_ARGS[@]+"${LIMIT_ARGS[@]}"}   # Z1
run "$ZOOBOT" embed --encoder zoobot-euclid --weights "$ZOOBOT_WEIGHTS"                                      # Z2
zoobot_sae=$(run "$ZOOBOT" train-sae --encoder zoobot-euclid --config zoobot \
    ${SAE_ARGS[@]+"${SAE_ARGS[@]}"} | last_word)                                              # Z3
zoobot_pca=$(run "$ZOOBOT" pca --encoder zoobot-euclid --n-components "$PCA_COMPONENTS" | last_word)  # Z4
for model in "$zoobot_sae" "$zoobot_pca"; do                                                   # Z5
    run "$ZOOBOT" analyze --model "$model" --split test --catalog volunteers
done
for model in "$zoobot_sae" "$zoobot_pca"; do run "$ZOOBOT" figures --model "$model" --image-format html,png; done

# ---- the seed's self-supervised path: the MAE's hub embeddings of euclid_q1, Q1 catalogue labels
run "$MAE" ingest hf --dataset "$EUCLID_Q1" --config v1-gz_arcsinh_vis_y \
    --splits train,test --no-votes ${LIMIT_ARGS[@]+"${LIMIT_ARGS[@]}"}                                        # M1
run "$MAE" ingest hf-embeddings --dataset "$EUCLID_Q1_EMBEDDINGS" \
    --column pooled_features_block_11 --encoder mae-euclid --join inner                      # M2
if [ ! -f "$Q1_CATALOGUE" ]; then
    echo "+ fetching the Q1 morphology catalogue from $Q1_URL" >&2
    curl -fL --retry 3 -o "$Q1_CATALOGUE" "$Q1_URL" || {
        echo "Error: could not fetch the Q1 morphology catalogue (Zenodo record 15020547); download" \
             "it by hand and pass its path as Q1_CATALOGUE=..." >&2; exit 1; }
fi
run "$MAE" ingest votes "$Q1_CATALOGUE" --catalog zoobot-predictions                          # M3
mae_sae=$(run "$MAE" train-sae --encoder mae-euclid --config mae \
    ${SAE_ARGS[@]+"${SAE_ARGS[@]}"} | last_word)                                              # M4
mae_pca=$(run "$MAE" pca --encoder mae-euclid --n-components "$PCA_COMPONENTS" | last_word)
for model in "$mae_sae" "$mae_pca"; do                                                         # M5
    run "$MAE" analyze --model "$model" --split test --catalog zoobot-predictions
done
for model in "$mae_sae" "$mae_pca"; do run "$MAE" figures --model "$model" --image-format html,png; done

# ---- extensions
# X1: our own MAE embeddings of the same images, next to the hub's (cosine per galaxy)
run "$MAE" embed --encoder mae-euclid --weights "$MAE_WEIGHTS" --as mae-euclid-ours
run "$MAE" sql "SELECT split, count(*) AS galaxies,
    round(avg(array_cosine_similarity(hub.embedding, ours.embedding)), 4) AS mean_cosine,
    round(min(array_cosine_similarity(hub.embedding, ours.embedding)), 4) AS min_cosine
    FROM embeddings hub JOIN embeddings ours USING (id_str, split)
    WHERE hub.encoder = 'mae-euclid' AND ours.encoder = 'mae-euclid-ours' GROUP BY split"
# X2: the volunteers' votes in the MAE lake (one row per galaxy, as ingest votes reads them) ...
labels=$("$PYTHON" -c "from galsae_lake import gz; print(', '.join(repr(l + '_fraction') for l in gz.LABEL_NAMES))")
run "$ZOOBOT" sql "PIVOT (SELECT id_str, label || '_fraction' AS name, fraction FROM votes
    WHERE catalog = 'volunteers') ON name IN ($labels) USING first(fraction) GROUP BY id_str" \
    --format parquet --output "$ROOT/gz_euclid_volunteers.parquet"
run "$MAE" ingest votes "$ROOT/gz_euclid_volunteers.parquet" --catalog volunteers
run "$MAE" analyze --model "$mae_sae" --split test --catalog volunteers
# ... and the Q1 catalogue's predictions in the Zoobot lake
run "$ZOOBOT" ingest votes "$Q1_CATALOGUE" --catalog zoobot-predictions
run "$ZOOBOT" analyze --model "$zoobot_sae" --split test --catalog zoobot-predictions
run "$ZOOBOT" analyze --model "$zoobot_sae" --split test --catalog volunteers --with-pca
run "$MAE" analyze --model "$mae_sae" --split test --catalog zoobot-predictions --with-pca
run "$ZOOBOT" tables
run "$MAE" tables
