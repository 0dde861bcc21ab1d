"""The main job, offline: build a whole lake from the synthetic world and say what it found.

``run_demo(lake)`` synthesizes Euclid-like galaxies with planted morphology and simulated Galaxy
Zoo votes, embeds them with both stand-in encoders (``zoobot-synth``, supervised on the votes;
``mae-synth``, a masked autoencoder) and the hand-designed, not learned, ``polar-fourier``
representation, trains Matryoshka BatchTopK SAEs (two seeds each, for the features' stability)
and a PCA on each, analyzes both against the votes with novelty controlled for flux, size, axis
ratio, PSF and sky (``--control truth``), draws the figures (with galleries of the top
discoveries) and the feature browser, and returns a summary: per encoder the SAE's and the PCA's
alignment with the labels, the top SAE features, the top discoveries by ``discovery_rank``, and
how well each planted factor (from ``truth``) is found by the best SAE feature and the best PCA
component (|rho|, precision among the top 50, novelty and discovery rank).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import polars as pl

from galsae_lake.lake import Lake

#: the two learned stand-ins (supervised, self-supervised) and a hand-designed representation
ENCODERS = ("zoobot-synth", "mae-synth", "polar-fourier")
#: the shipped SAE config per encoder (galsae_lake/configs/<name>_sae.toml)
SAE_CONFIGS = {"polar-fourier": "polar"}
#: SAEs trained per encoder with different seeds: the first is analyzed, the others give each
#: of its latents a stability (galsae_lake.discovery)
SAE_SEEDS = 2
DEFAULT_N = 10000

#: planted factors reported in the summary: (factor, what it is, asked by the Galaxy Zoo tree?)
PLANTED: tuple[tuple[str, str, bool], ...] = (
    ("smooth", "smooth (elliptical)", True),
    ("edge_on", "edge-on disk", True),
    ("spiral", "spiral arms", True),
    ("arm_count", "number of arms", True),
    ("bar", "bar", True),
    ("bulge_fraction", "bulge size", True),
    ("axis_ratio", "roundness (axis ratio)", True),
    ("clumps", "clumps", True),
    ("merger", "merger", True),
    ("central_star", "star", True),
    ("satellite_trail", "satellite trail", True),
    ("ring", "ring", False),
    ("dust_lane", "dust lane (edge-on)", False),
    ("lens_arc", "lensing arc", False),
)


@dataclass
class DemoResult:
    """What the demo built: model ids per encoder, figure folders, and the summary tables."""

    n: int
    seconds: dict[str, float] = field(default_factory=dict)
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    figures: dict[str, str] = field(default_factory=dict)
    alignment: pl.DataFrame | None = None
    top_features: dict[str, pl.DataFrame] = field(default_factory=dict)
    planted: dict[str, pl.DataFrame] = field(default_factory=dict)
    discoveries: dict[str, pl.DataFrame] = field(default_factory=dict)


def run_demo(lake: Lake, n: int = DEFAULT_N, seed: int = 0, image_size: int = 64,
             formats: tuple[str, ...] = ("html", "png"), log: Callable[[str], Any] = print
             ) -> DemoResult:
    """Run the whole pipeline on ``n`` synthetic galaxies into ``lake``; returns a DemoResult."""
    from galsae_lake.analysis import analyze
    from galsae_lake.encoders import embed
    from galsae_lake.figures import make_figures
    from galsae_lake.pca import fit_pca
    from galsae_lake.sources.synthetic import synthesize
    from galsae_lake.train import train_sae

    result = DemoResult(n=n)
    steps = 2 + 5 * len(ENCODERS)
    step = 0

    def stage(name: str, action: Callable[[], Any]) -> Any:
        nonlocal step
        step += 1
        log(f"[{step}/{steps}] {name} ...")
        started = time.perf_counter()
        value = action()
        result.seconds[name] = time.perf_counter() - started
        log(f"[{step}/{steps}] {name}: {result.seconds[name]:.1f} s")
        return value

    stage(f"synth {n} galaxies", lambda: synthesize(lake, n, image_size=image_size, seed=seed,
                                                    progress=True))
    for encoder in ENCODERS:
        stage(f"embed {encoder}", lambda: embed(lake, encoder, progress=True, log=log))
    for encoder in ENCODERS:
        ids: dict[str, str] = {}
        config = SAE_CONFIGS.get(encoder, "demo")
        ids["sae"] = stage(f"train-sae {encoder} ({SAE_SEEDS} seeds)", lambda: [train_sae(
            lake, encoder, config_path=config, progress=True,
            overrides=[f"random_seed={42 + s}"] if s else None) for s in range(SAE_SEEDS)][0].run_id)
        ids["pca"] = stage(f"pca {encoder}", lambda: fit_pca(lake, encoder))
        # novelty controls for what is not morphology (flux, size, axis ratio, PSF, sky)
        stage(f"analyze {encoder}", lambda: [analyze(lake, ids[kind], skip_empty_labels=True,
                                                     control="truth")
                                             for kind in ("sae", "pca")])
        result.models[encoder] = ids
    for encoder in ENCODERS:
        sae_id = result.models[encoder]["sae"]
        files = stage(f"figures {encoder}", lambda: make_figures(lake, sae_id, formats=formats))
        result.figures[encoder] = str(lake.figures_dir(sae_id))
        log(f"    {len(files)} files in {result.figures[encoder]}")
    stage("summary", lambda: summarize(lake, result))
    return result


# ----------------------------------------------------------------------------- the summary


def summarize(lake: Lake, result: DemoResult, split: str = "test", top: int = 5) -> DemoResult:
    """Fill the result's alignment, top-feature and planted-factor tables from the lake."""
    con = lake.connect(["feature_summary", "label_null"])
    rows = []
    for encoder, ids in result.models.items():
        for kind in ("sae", "pca"):
            summary = con.execute(
                "SELECT count(*) AS features, "
                "avg(max_abs_spearman) FILTER (WHERE frequency_rank < 64) AS top64, "
                "avg(max_abs_spearman_secondary) FILTER (WHERE frequency_rank < 64) AS top64_2nd, "
                "avg(max_abs_spearman) AS live, median(novelty) AS median_novelty "
                "FROM feature_summary WHERE model_id = $id AND split = $split AND method = $kind "
                "AND frequency > 0",
                {"id": ids[kind], "split": split, "kind": kind}).fetchall()[0]
            null = con.execute("SELECT median(null_q95) FROM label_null WHERE model_id = $id "
                               "AND split = $split AND method = $kind",
                               {"id": ids[kind], "split": split, "kind": kind}).fetchall()[0][0]
            rows.append({"encoder": encoder, "method": kind, "model_id": ids[kind],
                         "live_features": summary[0], "top64": summary[1],
                         "top64_no_smooth": summary[2],
                         "all_live": summary[3], "median_novelty": summary[4],
                         "null_q95": null})
        result.top_features[encoder] = con.sql(
            "SELECT feature, round(frequency, 3) AS frequency, round(max_abs_spearman, 3) AS "
            "max_abs_rho, best_label, round(max_abs_spearman_secondary, 3) AS max_abs_rho_2nd, "
            "best_label_secondary, round(novelty, 3) AS novelty FROM feature_summary "
            "WHERE model_id = $id AND split = $split AND method = 'sae' "
            "ORDER BY max_abs_spearman DESC LIMIT $top",
            params={"id": ids["sae"], "split": split, "top": top}).pl()
        result.discoveries[encoder] = con.sql(
            "SELECT discovery_rank, feature, round(discovery_score, 3) AS score, "
            "round(novelty, 3) AS novelty, round(stability, 3) AS stability, "
            "round(frequency, 3) AS frequency, best_label, round(max_abs_spearman, 3) AS "
            "max_abs_rho FROM feature_summary WHERE model_id = $id AND split = $split "
            "AND method = 'sae' ORDER BY discovery_rank LIMIT $top",
            params={"id": ids["sae"], "split": split, "top": top}).pl()
        result.planted[encoder] = planted_factors(lake, ids["sae"], ids["pca"], split)
    result.alignment = pl.DataFrame(rows)
    return result


def planted_factors(lake: Lake, sae_id: str, pca_id: str, split: str = "test",
                    planted: tuple[tuple[str, str, bool], ...] = PLANTED, top: int = 50
                    ) -> pl.DataFrame:
    """For each planted factor: the best SAE feature's and best PCA component's |Spearman rho|.

    Uses the same exact sparse Spearman as ``analyze`` (implicit zeros count; rows where a factor
    does not apply are dropped). For each factor also the best SAE feature's precision among its
    ``top`` most active galaxies (share where the factor is non-zero), its novelty, its novelty
    rank among the SAE's live features (0 = most novel) and its ``discovery_rank`` (0 = most
    promising; :mod:`galsae_lake.discovery`), and the same precision for the best PCA component
    (its ``top`` highest or lowest scores, by the sign of rho).
    """
    from galsae_lake.analysis import read_codes, split_ids
    from galsae_lake.numpy_engine import spearman
    from galsae_lake.models import resolve_model

    factors = [name for name, _, _ in planted]
    con = lake.connect(["truth"])
    best: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for model_id in (sae_id, pca_id):
        model = resolve_model(lake, model_id)
        ids = split_ids(lake, model.encoder, split)
        truth = _truth_matrix(lake, ids, split, factors)
        rows_of_split = np.arange(len(ids), dtype=np.int64)
        codes = read_codes(lake, model, split, rows_of_split, ids, con)
        rho, _, _ = spearman(codes, truth)
        column = np.abs(rho).argmax(axis=0)
        precision = np.array([_top_precision(codes, int(f), truth[:, j], top, rho[f, j] < 0)
                              for j, f in enumerate(column)])
        best[model.kind] = (np.abs(rho).max(axis=0), column, precision)
    summary = lake.read("feature_summary", model_id=sae_id, split=split).filter(
        (pl.col("method") == "sae") & (pl.col("frequency") > 0))
    novelty = dict(zip(summary["feature"].to_list(), summary["novelty"].to_list()))
    ranks = dict(zip(summary["feature"].to_list(),
                     summary["novelty"].rank("ordinal", descending=True).cast(pl.Int64) - 1))
    discovery = (dict(zip(summary["feature"].to_list(), summary["discovery_rank"].to_list()))
                 if "discovery_rank" in summary.columns else {})
    rows = []
    for j, (name, what, asked) in enumerate(planted):
        feature = int(best["sae"][1][j])
        rows.append({
            "factor": name, "what": what, "in_gz_tree": asked,
            "sae_feature": feature, "sae_abs_rho": float(best["sae"][0][j]),
            "sae_top_precision": float(best["sae"][2][j]),
            "pca_component": int(best["pca"][1][j]), "pca_abs_rho": float(best["pca"][0][j]),
            "pca_top_precision": float(best["pca"][2][j]),
            "sae_novelty": novelty.get(feature),
            "sae_novelty_rank": ranks.get(feature),
            "sae_discovery_rank": discovery.get(feature),
            "live_features": len(novelty),
        })
    return pl.DataFrame(rows)


def _top_precision(codes, feature: int, truth: np.ndarray, top: int, lowest: bool = False) -> float:
    """Share of the ``top`` rows with the highest (``lowest``: lowest) code of ``feature`` where
    ``truth`` is non-zero (rows where it is NaN left out; implicit zeros rank below any positive
    code)."""
    dense = np.zeros(len(truth))
    mine = codes.feature == feature
    dense[codes.row[mine]] = codes.value[mine]
    keep = np.flatnonzero(~np.isnan(truth))
    order = keep[np.argsort(dense[keep] if lowest else -dense[keep], kind="stable")[:top]]
    return float((truth[order] > 0).mean()) if len(order) else float("nan")


def _truth_matrix(lake: Lake, ids: np.ndarray, split: str, factors: list[str]) -> np.ndarray:
    """[galaxies x factors] planted values in ``ids`` order; NaN where a factor does not apply."""
    truth = (lake.scan("truth", split=split)
             .filter(pl.col("factor").is_in(factors))
             .collect()
             .pivot(on="factor", index="id_str", values="value"))
    order = pl.DataFrame({"id_str": list(ids)})
    matrix = order.join(truth, on="id_str", how="left")
    for name in factors:
        if name not in matrix.columns:
            matrix = matrix.with_columns(pl.lit(None, pl.Float64).alias(name))
    return matrix.select(factors).to_numpy().astype(np.float64)


def format_summary(result: DemoResult) -> str:
    """The demo's closing report as plain text."""
    lines = [f"galsae-lake demo: {result.n} synthetic galaxies, "
             f"{sum(result.seconds.values()):.0f} s in all", ""]
    lines.append("Alignment with Galaxy Zoo labels on the test split: mean over features of the "
                 "max |Spearman rho| with any label")
    lines.append("(top64: the 64 most frequent SAE features or the 64 PCA components, as the seed "
                 "compares them; top64_no_smooth: without smooth-or-featured; null_q95: the 95th "
                 "percentile of the best feature's |rho| with shuffled votes)")
    with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   float_precision=3, tbl_width_chars=160, tbl_rows=100, tbl_cols=-1,
                   fmt_str_lengths=40):
        if result.alignment is not None:
            lines.append(str(result.alignment.drop("model_id")))
        for encoder, ids in result.models.items():
            hand = " (hand-designed, not learned)" if encoder == "polar-fourier" else ""
            lines += ["", f"{encoder}{hand}: SAE {ids['sae']} vs PCA {ids['pca']}",
                      "  top SAE features by max |rho|:", str(result.top_features[encoder])]
            if encoder in result.discoveries:
                lines += ["  top discoveries by discovery_rank (novelty with flux, size, axis "
                          "ratio, PSF and sky controlled, x stability^4 across seeds; no truth "
                          "used):", str(result.discoveries[encoder])]
            planted = result.planted[encoder]
            lines += ["  planted factors (from truth): best SAE feature vs best PCA component "
                      "(|rho| with the truth; precision: share of its top 50 test galaxies "
                      "where the factor is present)",
                      str(planted.select("factor", "in_gz_tree", "sae_feature", "sae_abs_rho",
                                         "sae_top_precision", "pca_component", "pca_abs_rho",
                                         "pca_top_precision", "sae_novelty",
                                         "sae_discovery_rank"))]
            outside = planted.filter(~pl.col("in_gz_tree"))
            for row in outside.iter_rows(named=True):
                if row["sae_discovery_rank"] is None:
                    continue
                share = row["sae_discovery_rank"] / max(row["live_features"], 1)
                better = "SAE" if row["sae_abs_rho"] > row["pca_abs_rho"] else "PCA"
                lines.append(f"  {row['what']} (not in the GZ tree): best SAE feature "
                             f"{row['sae_feature']} (|rho| {row['sae_abs_rho']:.2f}, top-50 "
                             f"precision {row['sae_top_precision']:.2f}; PCA |rho| "
                             f"{row['pca_abs_rho']:.2f}: {better} better), novelty "
                             f"{row['sae_novelty']:.2f}, discovery rank "
                             f"{row['sae_discovery_rank']} of {row['live_features']} live features "
                             f"(top {100 * share:.0f}%)")
    lines += ["", "Figures and feature browsers:"]
    lines += [f"  {encoder}: {folder}/browser.html" for encoder, folder in result.figures.items()]
    return "\n".join(lines)
