"""Does discovery work? Planted factors, dead latents and discovery ranks per representation and SAE.

Builds (or reuses, with --lake) a synthetic lake, embeds it with each encoder, and for each option
``ENCODER|OVERRIDES`` trains the SAE with --seeds different seeds (the first is analyzed; the others
give each latent its stability), fits a PCA, runs ``analyze --control truth`` on both, and prints:

* the dead fraction (latents that never fire on the train split) and the training seconds;
* per planted factor: the best SAE feature's |rho| with the truth, the precision among its 50 most
  active test galaxies, its novelty (with the control) and its discovery_rank; the best PCA
  component's |rho| and top-50 precision beside it;
* the validation of ``discovery_rank``: where the best features of the factors outside the Galaxy
  Zoo tree (ring, dust lane, lensing arc) land (percentile among live features; target: top 10%),
  and where the nuisance features land (live features whose best-matching planted factor is flux,
  size, axis ratio, PSF or sky with |rho| >= 0.3: share of them in the top 10%; target: none).

    OMP_NUM_THREADS=1 python scripts/bench_discovery.py --n 8000 \\
        --option "zoobot-synth|" --option "polar-fourier@polar|aux_penalty=1.0"
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from galsae_lake.lake import Lake  # noqa: E402

OUTSIDE = ("ring", "dust_lane", "lens_arc")
#: nuisance factors (axis_ratio is already a row of the demo's planted table)
NUISANCE = ("flux", "radius", "axis_ratio", "psf_fwhm", "sky_noise")
NUISANCE_ROWS = (("flux", "flux (nuisance)", False), ("radius", "size (nuisance)", False),
                 ("psf_fwhm", "PSF (nuisance)", False), ("sky_noise", "sky (nuisance)", False))


def parse_option(text: str) -> tuple[str, str, list[str]]:
    """``ENCODER[@CONFIG]|key=value,...`` -> (encoder, config name, overrides)."""
    encoder, _, overrides = text.partition("|")
    encoder, _, config = encoder.partition("@")
    parts, depth, current = [], 0, ""
    for ch in overrides:  # split on commas outside brackets
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current:
        parts.append(current)
    return encoder.strip(), config.strip() or "demo", [p.strip() for p in parts if p.strip()]


def existing_run(lake: Lake, encoder: str, config: str, overrides: list[str]) -> str | None:
    """The run id train_sae would write for these settings, if that run is in the lake."""
    from galsae_lake.sae import load_config
    from galsae_lake.train import read_embeddings, run_id_for

    settings = load_config(config, overrides, encoder=encoder)
    ids, X = read_embeddings(lake, encoder)["train"]
    if settings.input_dim is None:
        settings.input_dim = X.shape[1]
    run_id = run_id_for(encoder, settings, "train", ids, X)
    return run_id if (lake.model_dir("sae", run_id) / "model.safetensors").exists() else None


def nuisance_validation(lake: Lake, sae_id: str, split: str = "test") -> dict:
    """Discovery-rank percentiles of the features whose best planted factor is a nuisance."""
    from galsae_lake.analysis import read_codes, split_ids
    from galsae_lake.numpy_engine import spearman
    from galsae_lake.models import resolve_model
    from galsae_lake.demo import PLANTED, _truth_matrix

    factors = [f for f, _, _ in PLANTED] + [f for f, _, _ in NUISANCE_ROWS]
    model = resolve_model(lake, sae_id)
    ids = split_ids(lake, model.encoder, split)
    truth = _truth_matrix(lake, ids, split, factors)
    codes = read_codes(lake, model, split, np.arange(len(ids), dtype=np.int64), ids, lake.connect(["truth"]))
    rho = np.abs(spearman(codes, truth)[0])
    summary = lake.read("feature_summary", model_id=sae_id, split=split).filter(
        (pl.col("method") == "sae") & (pl.col("frequency") > 0)).sort("feature")
    live = summary["feature"].to_numpy()
    # percentile among live features: discovery_rank counts every latent, dead ones score 0 and
    # sort last, so the rank among live features is the same number
    rank = summary["discovery_rank"].to_numpy()
    nuisance_cols = [factors.index(f) for f in NUISANCE]
    best_factor = rho[live].argmax(axis=1)
    best_rho = rho[live].max(axis=1)
    is_nuisance = np.isin(best_factor, nuisance_cols) & (best_rho >= 0.3)
    top10 = rank < 0.1 * len(live)
    return {"live": int(len(live)), "nuisance_features": int(is_nuisance.sum()),
            "nuisance_in_top10pct": int((is_nuisance & top10).sum()),
            "nuisance_median_rank_pct": float(np.median(rank[is_nuisance]) / len(live) * 100)
            if is_nuisance.any() else None,
            "top10_median_best_rho": float(np.median(best_rho[top10])) if top10.any() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lake", default=None, help="reuse this lake (synthesized if empty)")
    parser.add_argument("--option", action="append", default=None,
                        help="ENCODER[@CONFIG]|key=value,... (a shipped SAE config, default demo, "
                             "and overrides); repeatable")
    parser.add_argument("--seeds", type=int, default=3, help="SAE seeds per option (stability)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--reuse", action="store_true",
                        help="reuse SAE runs already in the lake (same settings): re-analyze only")
    args = parser.parse_args()
    options = [parse_option(o) for o in (args.option or ["zoobot-synth|", "mae-synth|",
                                                          "polar-fourier@polar|"])]

    from galsae_lake.analysis import analyze
    from galsae_lake.demo import PLANTED, planted_factors
    from galsae_lake.encoders import embed
    from galsae_lake.pca import fit_pca
    from galsae_lake.sources.synthetic import synthesize
    from galsae_lake.train import train_sae

    lake = Lake(args.lake or tempfile.mkdtemp(prefix="galsae-discovery-"))
    if not lake.exists("images"):
        t = time.perf_counter()
        synthesize(lake, args.n, seed=args.seed)
        print(f"synth {args.n}: {time.perf_counter() - t:.1f} s", flush=True)
    results = []
    for encoder, config, overrides in options:
        if not lake.exists("embeddings", encoder=encoder):
            t = time.perf_counter()
            embed(lake, encoder, progress=False, log=lambda *_: None)
            print(f"embed {encoder}: {time.perf_counter() - t:.1f} s", flush=True)
        runs, seconds = [], []
        for s in range(args.seeds):
            t = time.perf_counter()
            settings = overrides + [f"random_seed={42 + s}"]
            done = existing_run(lake, encoder, config, settings) if args.reuse else None
            runs.append(done or train_sae(lake, encoder, config_path=config, overrides=settings,
                                          progress=False).run_id)
            if not done:
                seconds.append(time.perf_counter() - t)
        pca_id = fit_pca(lake, encoder)
        t = time.perf_counter()
        analyze(lake, runs[0], skip_empty_labels=True, control="truth")
        analyze(lake, pca_id, skip_empty_labels=True, control="truth")
        analyze_s = time.perf_counter() - t
        # stability came from every run of this encoder and size in the lake: name them
        metrics = json.loads(lake.read("sae_runs").filter(pl.col("run_id") == runs[0])["metrics"][0])
        table = planted_factors(lake, runs[0], pca_id, planted=PLANTED + NUISANCE_ROWS)
        check = nuisance_validation(lake, runs[0])
        live = check["live"]
        print(f"\n== {encoder} | config {config} {','.join(overrides)} | run {runs[0]} "
              f"(+{args.seeds - 1} seeds) ==")
        print(f"dead fraction {metrics['dead_fraction']:.3f}, live {live}; train-sae median "
              f"{np.median(seconds) if seconds else float('nan'):.1f} s per seed (nan: reused); "
              f"analyze SAE+PCA {analyze_s:.1f} s")
        with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                       float_precision=2, tbl_width_chars=200, tbl_rows=40, tbl_cols=-1):
            print(table.select("factor", "sae_feature", "sae_abs_rho", "sae_top_precision",
                               "pca_abs_rho", "pca_top_precision", "sae_novelty",
                               "sae_discovery_rank"))
        outside = table.filter(pl.col("factor").is_in(list(OUTSIDE)))
        pct = {row["factor"]: (None if row["sae_discovery_rank"] is None
                               else round(100 * row["sae_discovery_rank"] / live, 1))
               for row in outside.iter_rows(named=True)}
        print(f"discovery_rank percentile of the best out-of-tree features (target < 10): {pct}")
        print(f"nuisance features (best factor a nuisance, |rho| >= 0.3): "
              f"{check['nuisance_features']}, in the top 10%: {check['nuisance_in_top10pct']}, "
              f"median rank percentile {check['nuisance_median_rank_pct']}; median best |rho| "
              f"with any planted factor in the top 10%: {check['top10_median_best_rho']}", flush=True)
        results.append({"encoder": encoder, "config": config, "overrides": overrides, "runs": runs,
                        "dead_fraction": metrics["dead_fraction"], "train_seconds": seconds,
                        "factors": table.to_dicts(), "outside_rank_pct": pct, **check})
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
