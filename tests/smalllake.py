"""A small real lake (synth, embed, train-sae, pca, analyze), for the tests that read every table
from other engines (Spark, LSDB)."""

from __future__ import annotations

from pathlib import Path

SAE_SET = ["epochs=3", "group_sizes=[16,16,32]", "top_k=4", "batch_size=64"]


def build_small_lake(root: Path, n: int = 300):
    """Returns (lake, sae run id, pca id): every table of the pipeline holds data."""
    import torch

    from galsae_lake.analysis import analyze
    from galsae_lake.encoders import embed
    from galsae_lake.lake import Lake
    from galsae_lake.pca import fit_pca
    from galsae_lake.sources.synthetic import synthesize
    from galsae_lake.train import train_sae

    lake = Lake(root)
    synthesize(lake, n, seed=0)
    embed(lake, "zoobot-synth", workers=0, precision="fp32", progress=False, log=lambda _: None)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_id = train_sae(lake, "zoobot-synth", config_path="demo", overrides=SAE_SET,
                           progress=False).run_id
    finally:
        torch.set_num_threads(before)
    pca_id = fit_pca(lake, "zoobot-synth", n_components=8)
    for model in (run_id, pca_id):
        analyze(lake, model, skip_empty_labels=True, permutations=2)
    return lake, run_id, pca_id
