"""Galleries of an SAE's top discoveries: its features ranked by ``feature_summary.discovery_rank``
(:mod:`galsae_lake.discovery`), the most promising candidates for morphology the labels do not
name."""

from __future__ import annotations

import polars as pl

from galsae_lake.figures.charts import gallery_chart
from galsae_lake.figures.data import FigureData, gallery_images, top_activations
from galsae_lake.figures.export import Figure
from galsae_lake.lake import Lake
from galsae_lake.models import has_codes


def discovery_figures(lake: Lake, data: FigureData, top: int, n_images: int = 10) -> list[Figure]:
    """One gallery per feature among the ``top`` by discovery rank (with a positive score)."""
    if (top <= 0 or data.kind != "sae" or not lake.exists("images", split=data.split)
            or not has_codes(lake, data.model, data.split)):
        return []
    summary = lake.read("feature_summary", model_id=data.model_id, split=data.split)
    if "discovery_rank" not in summary.columns:  # analyzed before discovery ranks existed
        return []
    summary = summary.filter(
        (pl.col("method") == "sae") & pl.col("discovery_rank").is_not_null()
        & (pl.col("discovery_score") > 0)).sort("discovery_rank").head(top)
    if summary.is_empty():
        return []
    tops = top_activations(lake, data.model, data.split, summary["feature"].to_list(), n_images)
    urls = gallery_images(lake, data.split, tops["id_str"].to_list(), 96)
    tops = tops.with_columns(pl.col("id_str").replace_strict(urls, default=None).alias("url"))
    figures = []
    for row in summary.iter_rows(named=True):
        tiles = tops.filter((pl.col("feature") == row["feature"]) & pl.col("url").is_not_null())
        if tiles.is_empty():
            continue
        stability = "n/a" if row["stability"] is None else f"{row['stability']:.2f}"
        control = "" if row["control_r2"] is None else f" x (1 - control R² {row['control_r2']:.2f})²"
        head = (f"Discovery {row['discovery_rank'] + 1}: SAE feature {row['feature']} "
                f"(active in {row['frequency']:.1%})")
        lines = [f"discovery score {row['discovery_score']:.2f} = novelty {row['novelty']:.2f} "
                 f"x stability across seeds {stability}⁴{control}",
                 f"best label {row['best_label']} (|ρ| = {row['max_abs_spearman']:.2f}); "
                 f"{data.model_id}, {data.split} split; number under each image: activation"]
        figures.append(Figure(f"discovery/{row['discovery_rank']:02d}-sae-feature-{row['feature']}",
                              gallery_chart(tiles, title=head, subtitle=lines)))
    return figures
