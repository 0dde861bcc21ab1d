"""Which figures a model gets, and :func:`make_figures`, which builds and writes them all.

Every figure is drawn from lake tables through :mod:`galsae_lake.figures.data`: the seed's
max-|rho| and novelty distributions (SAE vs PCA, all labels and the secondary view), FVU per
Matryoshka level, cumulative explained variance, training curves, galleries of top-activating
galaxies; then one offline report (``figures.html``) and the feature browser (``browser.html``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import polars as pl

from galsae_lake.errors import InputError
from galsae_lake.figures.browser import browser_html
from galsae_lake.figures.charts import (PCA_COLOR, SAE_COLOR, distribution_chart,
                                        explained_variance_chart, fvu_chart, gallery_chart,
                                        training_chart)
from galsae_lake.figures.discovery import discovery_figures
from galsae_lake.figures.data import (NULL_VALUE_TEXT, FigureData, gallery_images,
                                      load_figure_data, sae_explained_variance, top_activations)
from galsae_lake.figures.export import Figure, check_image_formats, report_html, save_chart
from galsae_lake.figures.numerics import (EV_COMPONENTS, MIN_FREQUENCY, TOP_COMPARED,
                                          comparison_values, cumulative_explained)
from galsae_lake.lake import Lake
from galsae_lake.models import Model, has_codes, resolve_model


def _null_threshold(data: FigureData, null: pl.DataFrame | None, secondary: bool) -> float | None:
    """The largest per-label null threshold (over the labels of the view), or None."""
    if null is None or null.is_empty():
        return None
    if secondary:
        null = null.filter(pl.col("label").map_elements(data.in_secondary_view,
                                                        return_dtype=pl.Boolean))
    return float(null["null_max_abs"].max()) if not null.is_empty() else None


def _sizes_line(data: FigureData) -> str:
    if data.kind == "pca":
        return data.describe()
    base = f"PCA baseline {data.baseline_id}" if data.baseline is not None else "no PCA baseline"
    return f"{data.describe()}; {base}"


def comparison_figures(data: FigureData) -> list[Figure]:
    """The seed's max-|rho| and novelty distributions (all labels and secondary; top 64 and by group)."""
    sae = data.features if data.kind == "sae" else None
    pca = data.baseline if data.kind == "sae" else data.features
    model_line = _sizes_line(data)
    gz, zoo = ("GZ ", "Galaxy Zoo") if data.galaxy_zoo else ("", "the")  # plain labels: no GZ
    views = [
        ("max_rho", "max_abs", False, f"Max |Spearman ρ| with any {gz}label  (→ more aligned)",
         f"Alignment with {zoo} labels"),
        ("max_rho_secondary", "max_abs_secondary", True,
         f"Max |Spearman ρ| with any {gz}label, {data.secondary_text()}  (→ more aligned)",
         f"Alignment with {gz or 'the '}labels, {data.secondary_text()}"),
        ("novelty", "novelty", None, f"Unexplained {gz or 'label '}variance, 1 − R²  (→ less predictable)",
         f"Novelty: what the {gz}labels cannot predict"),
    ]
    n_pca = min(TOP_COMPARED, pca.height) if pca is not None else 0
    n_kept = int((sae["frequency"] > MIN_FREQUENCY).sum()) if sae is not None else 0
    pca_part = f" vs the first {n_pca} PCA components" if pca is not None else ""
    figures = []
    for stem, column, secondary, x_title, title in views:
        nulls = []
        if secondary is not None:  # novelty has no permutation null
            for name, frame, color in ((("SAE" if data.kind == "sae" else "PCA"), data.null,
                                        SAE_COLOR if data.kind == "sae" else PCA_COLOR),
                                       ("PCA", data.baseline_null, PCA_COLOR)):
                x = _null_threshold(data, frame, secondary)
                if x is not None:
                    nulls.append((f"{name} null", x, color))
        lines = ["", model_line]
        if nulls:
            lines.append(NULL_VALUE_TEXT)
        if sae is not None:
            what = f"The {min(TOP_COMPARED, n_kept)} most frequent SAE features{pca_part}"
        else:
            what = f"The first {n_pca} PCA components"
        values = comparison_values(sae, pca, column, by_group=False, min_frequency=MIN_FREQUENCY)
        figures.append(Figure(stem, distribution_chart(
            values, title=title, subtitle=[what, *lines[1:]], x_title=x_title, nulls=nulls)))
        if sae is not None:
            grouped = comparison_values(sae, pca, column, by_group=True,
                                        min_frequency=MIN_FREQUENCY)
            what = (f"The {n_kept} of {sae.height} SAE features active in more than "
                    f"{MIN_FREQUENCY:.0%} of galaxies, by frequency rank{pca_part}")
            name = stem.replace("max_rho", "max_rho_by_rank_group").replace(
                "novelty", "novelty_by_rank_group")
            figures.append(Figure(name, distribution_chart(
                grouped, title=title, subtitle=[what, *lines[1:]], x_title=x_title,
                nulls=nulls)))
    return figures


def run_figures(lake: Lake, data: FigureData, timings: dict[str, float]) -> list[Figure]:
    """FVU per Matryoshka level, cumulative explained variance and training curves."""
    figures = []
    t0 = time.perf_counter()
    if data.kind == "sae" and data.model is not None:
        metrics, config = data.model.metrics, data.model.config
        levels = metrics.get("fvu_per_level") or []
        if levels:
            frame = pl.DataFrame(levels).select(pl.col("level").cast(pl.Int64),
                                                pl.col("latents").cast(pl.Int64),
                                                pl.col("fvu").cast(pl.Float64))
            where = metrics.get("split", data.split)
            groups = config.get("group_sizes")
            sub = [f"{data.describe()}",
                   f"reconstruction on the {where} split; group sizes {groups}, top-k "
                   f"{config.get('top_k', '?')}"]
            figures.append(Figure("fvu_per_level", fvu_chart(
                frame, title="Reconstruction error per Matryoshka level", subtitle=sub)))
    curves = []
    if data.pca_id and lake.exists("pca_components", pca_id=data.pca_id):
        ratios = (lake.scan("pca_components", pca_id=data.pca_id)
                  .select("component", "explained_variance_ratio").collect()
                  .sort("component")["explained_variance_ratio"].to_numpy())
        at = [k for k in EV_COMPONENTS if k <= len(ratios)]
        curves.append(pl.DataFrame({"method": f"PCA of the standardized embeddings ({data.pca_id})",
                                    "components": at, "cumulative": cumulative_explained(ratios, at)}))
    if data.kind == "sae":
        ratios = sae_explained_variance(lake, data)
        if ratios is not None and len(ratios):
            at = [k for k in EV_COMPONENTS if k <= len(ratios)]
            curves.append(pl.DataFrame({
                "method": f"SAE codes ({data.n_features} latents): PCA of the standardized codes",
                "components": at, "cumulative": cumulative_explained(ratios, at)}))
    if curves:
        frame = pl.concat(curves).with_columns(pl.col("components").cast(pl.Int64))
        figures.append(Figure("explained_variance", explained_variance_chart(
            frame, title="Cumulative explained variance",
            subtitle=[data.describe(),
                      f"SAE curve on the {data.split} split; PCA ratios as fitted"])))
    timings["explained_variance"] = time.perf_counter() - t0
    if data.kind == "sae" and lake.exists("sae_training_log", run_id=data.model_id):
        log = lake.read("sae_training_log", run_id=data.model_id)
        if log.height:
            figures.append(Figure("training_curves", training_chart(
                log, title="SAE training curves",
                subtitle=[f"{data.model_id} ({data.n_features} latents, encoder {data.encoder}); "
                          "long runs averaged into bins"])))
    return figures


def gallery_figures(lake: Lake, data: FigureData, top: int, n_images: int = 10) -> list[Figure]:
    """One gallery per top feature (by frequency), or per PCA component with both ends."""
    figures = []
    if top <= 0:
        return figures
    if not lake.exists("images", split=data.split):
        data.notes.append(f"no images table for split {data.split!r}: galleries are left out")
        return figures
    jobs: list[tuple[Model, pl.DataFrame]] = []
    if data.kind == "sae":
        if has_codes(lake, data.model, data.split):
            jobs.append((data.model, data.features.sort("position").head(top)))
        if data.pca_id:
            pca = resolve_model(lake, data.pca_id)
            if has_codes(lake, pca, data.split):
                comps = data.baseline.sort("feature").head(min(top, 5))
                jobs.append((pca, comps))
    elif has_codes(lake, data.model, data.split):
        jobs.append((data.model, data.features.sort("feature").head(top)))
    for model, feats in jobs:
        tops = top_activations(lake, model, data.split, feats["feature"].to_list(), n_images)
        urls = gallery_images(lake, data.split, tops["id_str"].to_list(), 96)
        tops = tops.with_columns(pl.col("id_str").replace_strict(urls, default=None).alias("url"))
        info = {r["feature"]: r for r in feats.to_dicts()}
        for i, feature in enumerate(feats["feature"].to_list()):
            tiles = tops.filter(pl.col("feature") == feature)
            if tiles.is_empty():
                continue
            row = info.get(feature, {})
            word = model.codes.value
            if model.kind == "sae":
                head = (f"SAE feature {feature}: top {tiles.height} galaxies by activation "
                        f"(frequency rank {i + 1}, active in {row.get('frequency', 0):.1%})")
                stem = f"gallery/{i:02d}-sae-feature-{feature}"
            else:
                head = f"PCA component {feature} of {model.model_id}: both ends by score"
                stem = f"gallery/{i:02d}-pca-component-{feature}"
            lines = []
            if row.get("best_label") is not None and row.get("max_abs") is not None:
                lines.append(f"best label {row['best_label']} (|ρ| = {row['max_abs']:.2f})"
                             + (f", novelty {row['novelty']:.2f}" if row.get("novelty") is not None
                                else ""))
            lines.append(f"{data.model_id}, {data.split} split; number under each image: {word}")
            missing = tiles.filter(pl.col("url").is_null()).height
            if missing:
                lines.append(f"{missing} image(s) missing from the images table")
            figures.append(Figure(stem, gallery_chart(tiles.filter(pl.col("url").is_not_null())
                                                      if missing < tiles.height else tiles,
                                                      title=head, subtitle=lines)))
    return figures


def make_figures(lake: Lake, model_id: str, out: str | Path | None = None,
                 formats: Iterable[str] = ("html", "png"), split: str = "test", top: int = 8,
                 browser_top: int = 256, browser_images: int = 12,
                 log: Any = None) -> list[Path]:
    """Build every figure of ``model_id`` on ``split`` and write them under ``out``.

    ``out`` defaults to ``lake.figures_dir(model_id)``. PNG/SVG: one file per chart and per gallery
    (``gallery/NN-...``); HTML: ``figures.html`` (every chart, offline) and ``browser.html`` (the
    feature browser, with galleries of the ``browser_top`` most frequent features). Returns the
    files written.
    """
    formats = check_image_formats(formats)
    if top < 0 or browser_top < 0:
        raise InputError("--top must be zero or more")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data = load_figure_data(lake, model_id, split)
    timings["load"] = time.perf_counter() - t0
    out = Path(out) if out is not None else lake.figures_dir(model_id)
    out.mkdir(parents=True, exist_ok=True)
    figures = comparison_figures(data)
    figures += run_figures(lake, data, timings)
    t1 = time.perf_counter()
    galleries = gallery_figures(lake, data, top)
    galleries += discovery_figures(lake, data, min(top, 5))
    timings["galleries"] = time.perf_counter() - t1
    written: list[Path] = []
    t2 = time.perf_counter()
    for figure in figures + galleries:
        written += save_chart(figure.chart, out / figure.name, formats)
    timings["export"] = time.perf_counter() - t2
    if "html" in formats:
        t3 = time.perf_counter()
        report = out / "figures.html"
        report.write_text(report_html(figures + galleries,
                                      f"galsae-lake figures: {data.describe()}", data.notes))
        written.append(report)
        browser = out / "browser.html"
        browser.write_text(browser_html(lake, data, top=browser_top, n_images=browser_images))
        written.append(browser)
        timings["html"] = time.perf_counter() - t3
    if log is not None:
        for note in data.notes:
            log(f"note: {note}")
        log("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return written

