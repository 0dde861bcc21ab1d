"""Figures: Altair charts of the lake's analysis tables, their export, and the feature browser.

Every figure is drawn from lake tables (``feature_summary``, ``feature_label_corr``, ``sae_runs``,
``sae_training_log``, ``sae_activations``, ``pca_components``, ``pca_scores``, ``images``):

* chart builders are pure functions from Polars frames to ``alt.Chart`` objects (tested through
  ``chart.to_dict()``: marks, encodings and data, never pixels);
* :func:`load_figure_data` gathers what the builders need for one model and split;
* :func:`make_figures` builds every figure and writes PNG/SVG files (vl-convert), one offline HTML
  report holding every chart (Vega bundled inline, no CDN) and the feature browser
  (``browser.html``: one self-contained file, vanilla JS, embedded data and thumbnails).

The names this module reads from tables written by other stages are collected in the block below
so that they can be changed in one place.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import altair as alt
import numpy as np
import polars as pl

from galsae_lake.errors import InputError, LakeError
from galsae_lake.lake import TABLES, Lake

# ---------------------------------------------------------------- names read from other stages
#: feature_summary columns (our name -> the table's column); secondary = smooth-or-featured excluded
SUMMARY_COLUMNS = {
    "frequency": "frequency",
    "frequency_rank": "frequency_rank",
    "max_abs": "max_abs_spearman",
    "best_label": "best_label",
    "novelty": "novelty",
    "max_abs_secondary": "max_abs_spearman_secondary",
    "best_label_secondary": "best_label_secondary",
}
#: the question left out of the "secondary" view (the seed's exclude_smooth_featured)
SECONDARY_EXCLUDED_QUESTION = "smooth-or-featured"
#: the permutation-null table (partitioned by model_id, split); per label, the null's max |rho|
NULL_TABLE = "label_null"
NULL_LABEL_COLUMN = "label"
#: the first of these columns present in NULL_TABLE is the per-label null threshold of |rho|
NULL_VALUE_COLUMNS = ("null_q95", "null_max_abs_spearman", "null_max")
NULL_VALUE_TEXT = ("dotted: permutation null, the 95th percentile of the largest |ρ| of a label "
                   "with shuffled votes")
#: an optional table of PCA runs with an `encoder` column (else the id pattern pca-<encoder>-<hex>)
PCA_RUNS_TABLE = "pca_runs"

# ---------------------------------------------------------------- look
SAE_COLOR = "#ff6361"
PCA_COLOR = "#003f5c"
#: frequency-rank groups, light (frequent) to dark (rare); wider than the seed's ramp, which
#: could not be told apart in print
GROUP_COLORS = ("#fdae6b", "#fd8d3c", "#f16913", "#d94801", "#a63603", "#7f2704", "#4d1802")
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
THEME = "galsae"
#: the seed's comparisons use the first 64 PCA components and the 64 most frequent SAE features
TOP_COMPARED = 64
#: the seed's kdeplot(bw_adjust=0.7) on Scott's rule
BW_ADJUST = 0.7
EV_COMPONENTS = (1, 2, 4, 8, 16, 32, 64)
#: the seed compares SAE features active in more than 1% of galaxies (get_top_sae_features)
MIN_FREQUENCY = 0.01


@alt.theme.register(THEME, enable=False)
def galsae_theme() -> alt.theme.ThemeConfig:
    """One readable look for every figure: large type, light grid, no chart border."""
    return alt.theme.ThemeConfig({
        "config": {
            "font": FONT,
            "background": "white",
            "padding": 12,
            "view": {"continuousWidth": 420, "continuousHeight": 280, "stroke": None},
            "title": {"fontSize": 17, "fontWeight": "bold", "anchor": "start", "offset": 10,
                      "subtitleFontSize": 12, "subtitleColor": "#444", "subtitlePadding": 4},
            "axis": {"labelFontSize": 12, "titleFontSize": 13, "titleFontWeight": "normal",
                     "gridColor": "#e6e6e6", "domainColor": "#888", "tickColor": "#888",
                     "titlePadding": 8},
            "legend": {"labelFontSize": 12, "titleFontSize": 12, "titleFontWeight": "normal",
                       "symbolStrokeWidth": 3, "labelLimit": 260},
            "header": {"labelFontSize": 13, "titleFontSize": 13},
            "line": {"strokeWidth": 2.5},
            "text": {"fontSize": 12},
        }
    })


# ---------------------------------------------------------------- data
@dataclass
class FigureData:
    """What the figures of one model on one split are drawn from.

    ``features`` (and ``baseline`` for the paired PCA) hold one row per feature with the columns
    feature, frequency, position (0-based order by frequency), max_abs, best_label,
    max_abs_secondary, best_label_secondary, novelty (and group for SAE latents).
    """

    model_id: str
    kind: str  # "sae" or "pca"
    split: str
    encoder: str | None
    features: pl.DataFrame
    corr: pl.DataFrame  # feature, label, spearman (this model's method)
    labels: list[str]
    baseline_id: str | None = None
    baseline: pl.DataFrame | None = None
    null: pl.DataFrame | None = None  # label, null_max_abs
    baseline_null: pl.DataFrame | None = None
    run: dict[str, Any] | None = None  # sae_runs row with config/metrics parsed
    pca_id: str | None = None  # the PCA whose components/scores the figures use
    notes: list[str] = field(default_factory=list)

    @property
    def n_features(self) -> int:
        return self.features.height

    def describe(self) -> str:
        """One subtitle line: model, encoder, size, split."""
        size = f"{self.n_features} latents" if self.kind == "sae" else f"{self.n_features} components"
        enc = f", encoder {self.encoder}" if self.encoder else ""
        return f"{self.model_id} ({size}{enc}), {self.split} split"


def _model_kind(model_id: str) -> str:
    return "pca" if model_id.startswith("pca-") else "sae"


def find_pca_baseline(lake: Lake, encoder: str, split: str = "test") -> str | None:
    """The newest PCA of ``encoder`` analyzed on ``split`` (None if there is none).

    PCA runs are found in ``pca_runs`` (if that table exists) or by their id, ``pca-<encoder>-<hex>``.
    """
    analyzed = {p["model_id"] for p in lake.partitions("feature_summary", split=split)}
    ids: set[str] = set()
    created: dict[str, str] = {}
    if PCA_RUNS_TABLE in TABLES and lake.exists(PCA_RUNS_TABLE):
        runs = lake.read(PCA_RUNS_TABLE)
        if {"pca_id", "encoder"} <= set(runs.columns):
            runs = runs.filter(pl.col("encoder") == encoder)
            ids = set(runs["pca_id"].to_list())
            if "created_at" in runs.columns:  # newest by fit time, as analysis.latest_pca
                created = {m: t.isoformat() for m, t in zip(runs["pca_id"], runs["created_at"])
                           if t is not None}
    pattern = re.compile(rf"^pca-{re.escape(encoder)}-[0-9a-f]+$")
    ids |= {m for m in analyzed if pattern.match(m)}
    candidates = [m for m in ids if m in analyzed]
    if not candidates:
        return None
    def written_at(m: str) -> str:
        return str(lake.partition_info("feature_summary", model_id=m, split=split)
                   .get("written_at", ""))

    return max(candidates, key=lambda m: (created.get(m) or written_at(m), m))


def _summary_frame(summary: pl.DataFrame, corr: pl.DataFrame) -> pl.DataFrame:
    """Normalize a feature_summary slice to our column names, filling the secondary view from corr."""
    c = SUMMARY_COLUMNS
    out = summary.select(
        pl.col("feature").cast(pl.Int64),
        pl.col(c["frequency"]).cast(pl.Float64).alias("frequency"),
        pl.col(c["frequency_rank"]).cast(pl.Float64).alias("frequency_rank"),
        pl.col(c["max_abs"]).cast(pl.Float64).alias("max_abs"),
        pl.col(c["best_label"]).cast(pl.String).alias("best_label"),
        pl.col(c["novelty"]).cast(pl.Float64).alias("novelty"),
        *([pl.col(c["max_abs_secondary"]).cast(pl.Float64).alias("max_abs_secondary"),
           pl.col(c["best_label_secondary"]).cast(pl.String).alias("best_label_secondary")]
          if c["max_abs_secondary"] in summary.columns and c["best_label_secondary"] in summary.columns
          else []),
    )
    if "max_abs_secondary" not in out.columns:
        out = out.join(secondary_alignment(corr), on="feature", how="left")
    # position: 0-based order by frequency rank (robust to 0- or 1-based ranks and ties)
    return out.sort(["frequency_rank", "feature"]).with_row_index("position").with_columns(
        pl.col("position").cast(pl.Int64))


def secondary_alignment(corr: pl.DataFrame) -> pl.DataFrame:
    """Per feature, max |rho| and its label over labels outside the smooth-or-featured question."""
    kept = corr.filter(~pl.col("label").str.starts_with(SECONDARY_EXCLUDED_QUESTION + "_"))
    return (kept.with_columns(pl.col("spearman").abs().alias("abs"))
            .sort(["feature", "abs", "label"], descending=[False, True, False])
            .group_by("feature", maintain_order=True)
            .agg(pl.col("abs").first().alias("max_abs_secondary"),
                 pl.col("label").first().alias("best_label_secondary"))
            .with_columns(pl.col("feature").cast(pl.Int64)))


def _read_null(lake: Lake, model_id: str, split: str, method: str) -> pl.DataFrame | None:
    """Per label, the permutation null's threshold of |rho| (label, null_max_abs), or None."""
    if NULL_TABLE not in TABLES or not lake.exists(NULL_TABLE, model_id=model_id, split=split):
        return None
    frame = lake.read(NULL_TABLE, model_id=model_id, split=split)
    value = next((c for c in NULL_VALUE_COLUMNS if c in frame.columns), None)
    if value is None or NULL_LABEL_COLUMN not in frame.columns:
        return None
    if "method" in frame.columns:
        frame = frame.filter(pl.col("method") == method)
    frame = (frame.select(pl.col(NULL_LABEL_COLUMN).alias("label"),
                          pl.col(value).cast(pl.Float64).alias("null_max_abs"))
             .drop_nulls().filter(pl.col("null_max_abs").is_not_nan()))  # no permutations run
    if frame.is_empty():
        return None
    return frame.group_by("label").agg(pl.col("null_max_abs").max()).sort("label")


def _sae_run(lake: Lake, run_id: str) -> dict[str, Any] | None:
    if not lake.exists("sae_runs"):
        return None
    rows = lake.read("sae_runs").filter(pl.col("run_id") == run_id)
    if rows.is_empty():
        return None
    row = rows.row(0, named=True)
    for key in ("config", "metrics"):
        try:
            row[key] = json.loads(row[key]) if row[key] else {}
        except (TypeError, json.JSONDecodeError):
            row[key] = {}
    return row


def load_figure_data(lake: Lake, model_id: str, split: str = "test") -> FigureData:
    """Gather the analysis of ``model_id`` (an SAE run_id or a pca_id) on ``split``.

    For an SAE the newest PCA of the same encoder is paired as the baseline when one has been
    analyzed (PCA rows inside the SAE's own feature_summary partition are used first).
    Raises InputError when the model has not been analyzed on that split.
    """
    if not lake.exists("feature_summary", model_id=model_id, split=split):
        raise InputError(
            f"no analysis of model {model_id!r} on split {split!r} in {lake.root}; run "
            f"galsae-lake analyze --model {model_id} --split {split} first")
    kind = _model_kind(model_id)
    summary = lake.read("feature_summary", model_id=model_id, split=split)
    corr_all = lake.read("feature_label_corr", model_id=model_id, split=split).select(
        "method", pl.col("feature").cast(pl.Int64), "label", pl.col("spearman").cast(pl.Float64))
    mine = summary.filter(pl.col("method") == kind) if "method" in summary.columns else summary
    if mine.is_empty():
        mine, kind = summary, str(summary["method"][0])
    corr = corr_all.filter(pl.col("method") == kind).drop("method")
    features = _summary_frame(mine, corr)
    labels = sorted(corr["label"].unique().to_list(), key=_label_order)
    data = FigureData(model_id=model_id, kind=kind, split=split, encoder=None, features=features,
                      corr=corr, labels=labels, null=_read_null(lake, model_id, split, kind))
    if kind == "pca":
        data.pca_id = model_id
        data.encoder = _encoder_of_pca(model_id)
        return data
    data.run = _sae_run(lake, model_id)
    data.encoder = data.run["encoder"] if data.run else None
    if lake.exists("sae_features", run_id=model_id):
        groups = lake.read("sae_features", run_id=model_id).select(
            pl.col("feature").cast(pl.Int64), pl.col("group").cast(pl.Int64))
        data.features = data.features.join(groups, on="feature", how="left")
    inline = summary.filter(pl.col("method") == "pca") if "method" in summary.columns else None
    if inline is not None and not inline.is_empty():
        data.baseline = _summary_frame(inline, corr_all.filter(pl.col("method") == "pca")
                                       .drop("method"))
        data.baseline_id = "PCA (same analysis)"
    pca_id = find_pca_baseline(lake, data.encoder, split) if data.encoder else None
    if pca_id is not None:
        data.pca_id = pca_id
        if data.baseline is None:
            base = lake.read("feature_summary", model_id=pca_id, split=split)
            base = base.filter(pl.col("method") == "pca") if "method" in base.columns else base
            base_corr = lake.read("feature_label_corr", model_id=pca_id, split=split)
            base_corr = base_corr.filter(pl.col("method") == "pca") if "method" in base_corr.columns \
                else base_corr
            data.baseline = _summary_frame(base, base_corr.select(
                pl.col("feature").cast(pl.Int64), "label", pl.col("spearman").cast(pl.Float64)))
            data.baseline_id = pca_id
            data.baseline_null = _read_null(lake, pca_id, split, "pca")
    if data.baseline is None:
        data.notes.append(f"no analyzed PCA of encoder {data.encoder!r} on split {split!r}: "
                          "the PCA comparison is left out (run galsae-lake pca and analyze)")
    return data


def _encoder_of_pca(pca_id: str) -> str | None:
    match = re.match(r"^pca-(.+)-[0-9a-f]+$", pca_id)
    return match.group(1) if match else None


def _label_order(label: str) -> tuple[int, str]:
    from galsae_lake.gz import LABEL_NAMES

    return (LABEL_NAMES.index(label), label) if label in LABEL_NAMES else (len(LABEL_NAMES), label)


# ---------------------------------------------------------------- frames for the charts
def rank_group_edges(n_features: int, first: int = 64) -> list[int]:
    """The seed's frequency-rank groups: 0, 64, 128, 256, ... doubling, closed at ``n_features``."""
    edges = [0]
    edge = first
    while edge < n_features:
        edges.append(edge)
        edge *= 2
    edges.append(n_features)
    return edges


def rank_group_label(lo: int, hi: int) -> str:
    return f"{lo}–{hi}"


def comparison_values(sae: pl.DataFrame | None, pca: pl.DataFrame | None, column: str,
                      by_group: bool, top: int = TOP_COMPARED,
                      min_frequency: float = 0.0) -> pl.DataFrame:
    """Long frame (series, feature, value) of ``column`` for the SAE and PCA series.

    SAE features active in at most ``min_frequency`` of the galaxies are left out first (the
    seed's ``get_top_sae_features(min_freq=0.01)``), then ranked by frequency. Without
    ``by_group``: the ``top`` most frequent SAE features and the first ``top`` PCA components.
    With it: every kept SAE feature in frequency-rank groups (0–64, 64–128, ... up to the SAE size).
    """
    parts = []
    if sae is not None:
        size = sae.height
        sae = (sae.filter(pl.col("frequency") > min_frequency).sort("position").drop("position")
               .with_row_index("position").with_columns(pl.col("position").cast(pl.Int64)))
        if by_group:
            edges = rank_group_edges(size)
            names = [f"SAE {rank_group_label(lo, hi)}" for lo, hi in zip(edges[:-1], edges[1:])]
            which = np.searchsorted(np.asarray(edges[1:-1]), sae["position"].to_numpy(),
                                    side="right").astype(np.int64)
            grouped = sae.with_columns(pl.Series("series", np.asarray(names, dtype=object)[which],
                                                 dtype=pl.String))
            parts.append(grouped.select("series", "feature", pl.col(column).alias("value")))
        else:
            n = min(top, sae.height)
            parts.append(sae.filter(pl.col("position") < top).select(
                pl.lit(f"SAE (top {n} by frequency)").alias("series"), "feature",
                pl.col(column).alias("value")))
    if pca is not None:
        first = pca.sort("feature").head(top)
        parts.append(first.select(pl.lit(f"PCA (first {first.height} components)").alias("series"),
                                  "feature", pl.col(column).alias("value")))
    if not parts:
        return pl.DataFrame(schema={"series": pl.String, "feature": pl.Int64, "value": pl.Float64})
    # a feature without any rho (never active) has no value: leave it out (NaN breaks Vega JSON)
    return (pl.concat(parts).with_columns(pl.col("feature").cast(pl.Int64),
                                          pl.col("value").cast(pl.Float64))
            .drop_nulls("value").filter(pl.col("value").is_finite()))


def kde_curves(values: pl.DataFrame, lo: float = 0.0, hi: float = 1.0, steps: int = 201,
               bw_adjust: float = BW_ADJUST) -> pl.DataFrame:
    """Gaussian KDE (Scott's rule x ``bw_adjust``, as seaborn) of each series on [lo, hi].

    Series with fewer than two distinct values have no density and are left out (the rug shows them).
    """
    grid = np.linspace(lo, hi, steps)
    parts = []
    for (series,), group in values.group_by("series", maintain_order=True):
        x = group["value"].drop_nulls().drop_nans().to_numpy().astype(np.float64)
        if x.size < 2 or np.ptp(x) == 0:
            continue
        sd = x.std(ddof=1)
        bw = sd * x.size ** (-1 / 5) * bw_adjust  # scipy's scott_factor x data sd
        dens = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / bw) ** 2).sum(1)
        dens /= x.size * bw * math.sqrt(2 * math.pi)
        parts.append(pl.DataFrame({"series": series, "x": grid, "density": dens}))
    if not parts:
        return pl.DataFrame(schema={"series": pl.String, "x": pl.Float64, "density": pl.Float64})
    return pl.concat(parts)


def _series_scale(series: Sequence[str]) -> tuple[list[str], list[str], list[list[int]]]:
    """Colors and dashes: PCA dark blue dashed, SAE coral (groups on the seed's red ramp)."""
    colors, dashes = [], []
    groups = [s for s in series if s.startswith("SAE ") and "–" in s]
    for s in series:
        if s.startswith("PCA"):
            colors.append(PCA_COLOR)
            dashes.append([6, 3])
        elif s in groups:
            colors.append(GROUP_COLORS[min(groups.index(s), len(GROUP_COLORS) - 1)])
            dashes.append([1, 0])
        else:
            colors.append(SAE_COLOR)
            dashes.append([1, 0])
    return list(series), colors, dashes


# ---------------------------------------------------------------- chart builders
def distribution_chart(values: pl.DataFrame, *, title: str, subtitle: Sequence[str],
                       x_title: str,
                       nulls: Sequence[tuple[str, float, str]] = ()) -> alt.VConcatChart:
    """Density curves of ``values`` (series, feature, value) over [0, 1] and a rug of every value.

    ``nulls``: (text, x, color) of dashed rules, e.g. each model's permutation-null threshold.
    """
    order = list(dict.fromkeys(values["series"].to_list()))
    domain, colors, dashes = _series_scale(order)
    color = alt.Color("series:N", scale=alt.Scale(domain=domain, range=colors),
                      legend=alt.Legend(title=None, orient="right", direction="vertical",
                                        symbolType="stroke", symbolSize=400), sort=order)
    dash = alt.StrokeDash("series:N", scale=alt.Scale(domain=domain, range=dashes), legend=None,
                          sort=order)
    x_scale = alt.Scale(domain=[0, 1], nice=False)
    curves = kde_curves(values)
    density = alt.Chart(curves, width=520, height=260).mark_line(clip=True).encode(
        x=alt.X("x:Q", scale=x_scale, title=None, axis=alt.Axis(labels=False, ticks=False)),
        y=alt.Y("density:Q", title="Density"),
        color=color, strokeDash=dash, detail="series:N",
        tooltip=[alt.Tooltip("series:N"), alt.Tooltip("x:Q", format=".2f"),
                 alt.Tooltip("density:Q", format=".2f")],
    )
    layers = [density]
    for i, (label, x, rule_color) in enumerate(nulls):
        rule_data = pl.DataFrame({"x": [float(x)], "text": [f"{label} {x:.2f}"]})
        rule = alt.Chart(rule_data).mark_rule(strokeDash=[2, 2], strokeWidth=1.5,
                                              color=rule_color).encode(
            x=alt.X("x:Q", scale=x_scale))
        left = x < 0.5  # write away from the axis
        text = alt.Chart(rule_data).mark_text(align="left" if left else "right", baseline="top",
                                              dx=4 if left else -4, dy=4 + 16 * i, fontSize=11,
                                              color=rule_color).encode(
            x=alt.X("x:Q", scale=x_scale), y=alt.value(0), text="text:N")
        layers += [rule, text]
    top = alt.layer(*layers)
    rug = alt.Chart(values, width=520, height=max(14 * len(order), 14)).mark_tick(
        thickness=1, opacity=0.7, size=10).encode(
        x=alt.X("value:Q", scale=x_scale, title=x_title),
        y=alt.Y("series:N", sort=order, title=None, axis=alt.Axis(labels=False, ticks=False,
                                                                  domain=False)),
        color=alt.Color("series:N", scale=alt.Scale(domain=domain, range=colors), legend=None,
                        sort=order),
        tooltip=["series:N", "feature:Q", alt.Tooltip("value:Q", format=".3f")],
    )
    return alt.vconcat(top, rug, spacing=4).resolve_scale(color="shared").properties(
        title=alt.TitleParams(title, subtitle=list(subtitle)))


def fvu_chart(levels: pl.DataFrame, *, title: str, subtitle: Sequence[str]) -> alt.LayerChart:
    """Fraction of variance unexplained per Matryoshka level (levels: level, latents, fvu)."""
    ticks = levels["latents"].to_list()
    base = alt.Chart(levels).encode(
        x=alt.X("latents:Q", scale=alt.Scale(type="log", base=2, nice=False),
                axis=alt.Axis(values=ticks, format="d", grid=False),
                title="Latents used (cumulative Matryoshka level size)"),
        y=alt.Y("fvu:Q", title="Fraction of variance unexplained", scale=alt.Scale(zero=True)),
    )
    line = base.mark_line(color=SAE_COLOR)
    points = base.mark_point(color=SAE_COLOR, filled=True, size=70).encode(
        tooltip=["level:O", "latents:Q", alt.Tooltip("fvu:Q", format=".4f")])
    labels = base.mark_text(dy=-12, fontSize=11, color="#333").encode(
        text=alt.Text("fvu:Q", format=".3f"))
    return alt.layer(line, points, labels).properties(
        title=alt.TitleParams(title, subtitle=list(subtitle)))


def explained_variance_chart(curves: pl.DataFrame, *, title: str,
                             subtitle: Sequence[str]) -> alt.LayerChart:
    """Cumulative explained variance vs components (curves: method, components, cumulative)."""
    order = list(dict.fromkeys(curves["method"].to_list()))
    palette = [PCA_COLOR if m.startswith("PCA") else SAE_COLOR for m in order]
    color = alt.Color("method:N", scale=alt.Scale(domain=order, range=palette), sort=order,
                      legend=alt.Legend(title=None, orient="bottom", direction="vertical",
                                        labelLimit=600))
    base = alt.Chart(curves).encode(
        x=alt.X("components:Q", scale=alt.Scale(type="log", base=2, nice=False),
                axis=alt.Axis(values=list(EV_COMPONENTS), format="d"), title="Number of components"),
        y=alt.Y("cumulative:Q", scale=alt.Scale(domain=[0, 1]),
                title="Cumulative explained variance"),
        color=color,
    )
    return alt.layer(
        base.mark_line(),
        base.mark_point(filled=True, size=60).encode(
            tooltip=["method:N", "components:Q", alt.Tooltip("cumulative:Q", format=".3f")]),
    ).properties(title=alt.TitleParams(title, subtitle=list(subtitle)))


TRAINING_METRICS = ("loss", "mse", "l1", "aux", "l0", "dead_fraction", "lr")


def training_chart(log: pl.DataFrame, *, title: str, subtitle: Sequence[str],
                   max_points: int = 600) -> alt.FacetChart:
    """One small panel per training metric against step (long runs are averaged into bins)."""
    metrics = [m for m in TRAINING_METRICS if m in log.columns]
    log = log.sort("step")
    if log.height > max_points:
        width = math.ceil(log.height / max_points)
        log = (log.with_row_index("_i").with_columns((pl.col("_i") // width).alias("_bin"))
               .group_by("_bin", maintain_order=True)
               .agg(pl.col("step").max(), *[pl.col(m).mean() for m in metrics]))
    long = log.select("step", *metrics).unpivot(index="step", variable_name="metric",
                                               value_name="value").drop_nulls("value")
    return alt.Chart(long, width=240, height=150).mark_line(color=SAE_COLOR, strokeWidth=1.8).encode(
        x=alt.X("step:Q", title="Step", axis=alt.Axis(tickCount=4)),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False),
                axis=alt.Axis(format="~g", tickCount=5)),
        tooltip=["metric:N", "step:Q", alt.Tooltip("value:Q", format=".4g")],
    ).facet(
        facet=alt.Facet("metric:N", sort=metrics, title=None,
                        header=alt.Header(labelFontSize=13, labelFontWeight="bold")),
        columns=4, spacing={"row": 24, "column": 36},
    ).resolve_scale(y="independent").properties(
        title=alt.TitleParams(title, subtitle=list(subtitle)))


def gallery_chart(tiles: pl.DataFrame, *, title: str, subtitle: Sequence[str],
                  size: int = 96) -> alt.LayerChart:
    """A row of galaxy images per ``end`` with the activation (or score) written under each.

    tiles: end (e.g. "highest"), rank (0-based), id_str, value, url (a data: URL of the image).
    """
    ends = list(dict.fromkeys(tiles["end"].to_list()))
    step = size + 8
    base = alt.Chart(tiles, width=alt.Step(step), height=(size + 30) * len(ends)).encode(
        x=alt.X("rank:O", axis=None),
    )
    y_img = alt.Y("end:N", sort=ends, axis=alt.Axis(title=None, labelFontSize=12, domain=False,
                                                    ticks=False, labelPadding=6,
                                                    labelAngle=-90, labelAlign="center",
                                                    labelBaseline="bottom"))
    image = base.mark_image(width=size, height=size, yOffset=-10).encode(
        y=y_img, url="url:N",
        tooltip=["id_str:N", alt.Tooltip("value:Q", format=".3f")])
    text = base.mark_text(baseline="top", yOffset=size / 2 - 6, fontSize=12).encode(
        y=alt.Y("end:N", sort=ends), text=alt.Text("value:Q", format=".2f"))
    return alt.layer(image, text).properties(title=alt.TitleParams(title, subtitle=list(subtitle)))


# ---------------------------------------------------------------- computations for charts
def cumulative_explained(ratios: Sequence[float], at: Sequence[int] = EV_COMPONENTS) -> list[float]:
    """Cumulative sums of explained-variance ratios at the given component counts (capped)."""
    c = np.cumsum(np.asarray(ratios, dtype=np.float64))
    return [float(c[min(k, len(c)) - 1]) for k in at]


def sparse_code_explained_variance(rows: np.ndarray, features: np.ndarray, values: np.ndarray,
                                   n_rows: int, n_features: int, n_components: int = 64) -> np.ndarray:
    """The seed's SAE curve: PCA explained-variance ratios of the standardized SAE codes.

    Equals ``PCA(n_components).fit(StandardScaler().fit_transform(X)).explained_variance_ratio_``
    for the dense ``X`` (n_rows x n_features) whose non-zeros are given, computed from the sparse
    Gram matrix (so a 35k x 2048 code costs a few seconds, not a dense SVD).
    """
    from scipy import sparse
    from scipy.linalg import eigh
    from scipy.sparse.linalg import eigsh

    x = sparse.csr_matrix((values.astype(np.float64), (rows, features)),
                          shape=(n_rows, n_features))
    gram = (x.T @ x).toarray() / n_rows
    mean = np.asarray(x.sum(axis=0)).ravel() / n_rows
    cov = gram - np.outer(mean, mean)
    std = np.sqrt(np.clip(np.diag(cov), 0, None))
    live = std > 1e-12 * max(std.max(initial=0), 1e-300)
    # StandardScaler leaves constant columns at zero: they add no variance
    corr = np.zeros_like(cov)
    corr[np.ix_(live, live)] = cov[np.ix_(live, live)] / np.outer(std[live], std[live])
    total = float(live.sum())
    if total == 0:
        return np.zeros(min(n_components, n_features))
    k = min(n_components, n_features)
    if k < n_features - 1:  # Lanczos: a few hundred products instead of a full tridiagonalization
        top = np.sort(eigsh(corr, k=k, which="LA", return_eigenvectors=False, tol=1e-12,
                            v0=np.ones(n_features)))
    else:
        top = eigh(corr, eigvals_only=True, subset_by_index=[n_features - k, n_features - 1])
    return np.clip(top[::-1], 0, None) / total


def _n_galaxies(lake: Lake, encoder: str | None, split: str, fallback: int) -> int:
    """Galaxies in the split (codes are stored sparse: a galaxy with no active latent has no row)."""
    if encoder and lake.exists("embeddings", encoder=encoder, split=split):
        return int(lake.scan("embeddings", encoder=encoder, split=split).select(pl.len())
                   .collect().item())
    return fallback


def sae_explained_variance(lake: Lake, data: FigureData) -> np.ndarray | None:
    """PCA explained-variance ratios of the model's standardized codes on its split (or None)."""
    if not lake.exists("sae_activations", run_id=data.model_id, split=data.split):
        return None
    acts = lake.read("sae_activations", run_id=data.model_id, split=data.split).select(
        "id_str", "feature", "activation")
    codes = acts.with_columns(pl.col("id_str").cast(pl.Categorical).to_physical().alias("row"))
    present = int(codes["row"].max()) + 1 if codes.height else 0
    n_rows = max(_n_galaxies(lake, data.encoder, data.split, present), present)
    n_features = max(data.n_features, int(codes["feature"].max()) + 1 if codes.height else 0)
    return sparse_code_explained_variance(
        codes["row"].to_numpy(), codes["feature"].to_numpy(), codes["activation"].to_numpy(),
        n_rows, n_features, n_components=min(64, n_features))


def top_activations(lake: Lake, data: FigureData, features: Sequence[int], n: int,
                    pca_id: str | None = None) -> pl.DataFrame:
    """The ``n`` galaxies with the highest (and for PCA also the lowest) value per feature.

    Returns end ("highest"/"lowest"), feature, rank, id_str, value. SAE codes come from
    ``sae_activations`` (non-zero codes only), PCA scores from ``pca_scores``.
    """
    wanted = [int(f) for f in features]
    if pca_id is None:
        lazy = (lake.scan("sae_activations", run_id=data.model_id, split=data.split)
                .filter(pl.col("feature").is_in(wanted))
                .select(pl.col("feature").cast(pl.Int64), "id_str",
                        pl.col("activation").cast(pl.Float64).alias("value")))
        ends = [("highest", True)]
    else:
        lazy = (lake.scan("pca_scores", pca_id=pca_id, split=data.split)
                .filter(pl.col("component").is_in(wanted))
                .select(pl.col("component").cast(pl.Int64).alias("feature"), "id_str",
                        pl.col("score").cast(pl.Float64).alias("value")))
        ends = [("highest", True), ("lowest", False)]
    frame = lazy.collect()
    parts = []
    for end, desc in ends:
        part = (frame.sort(["feature", "value", "id_str"], descending=[False, desc, False])
                .group_by("feature", maintain_order=True).head(n)
                .with_columns(pl.int_range(pl.len()).over("feature").alias("rank"),
                              pl.lit(end).alias("end")))
        parts.append(part)
    return pl.concat(parts).select("end", "feature", "rank", "id_str", "value")


def load_images(lake: Lake, split: str, ids: Iterable[str]) -> dict[str, bytes]:
    """PNG/JPEG bytes of the given galaxies from the ``images`` table (missing ids are absent)."""
    ids = sorted(set(ids))
    if not ids or not lake.exists("images", split=split):
        return {}
    frame = (lake.scan("images", split=split).filter(pl.col("id_str").is_in(ids))
             .select("id_str", "image").collect())
    return dict(zip(frame["id_str"].to_list(), frame["image"].to_list()))


def thumbnail_url(image: bytes, size: int, fmt: str = "PNG") -> str:
    """A data: URL of the image scaled to ``size`` px on its longer side (RGB)."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        if im.size != (size, size):  # upscale small cutouts so galleries line up
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        if fmt == "JPEG":
            im.save(out, "JPEG", quality=82, optimize=True)
            mime = "image/jpeg"
        else:
            im.save(out, "PNG", optimize=True)
            mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(out.getvalue()).decode("ascii")


# ---------------------------------------------------------------- figure assembly
@dataclass
class Figure:
    name: str  # file stem, e.g. "max_rho" or "gallery/00-sae-feature-17"
    chart: alt.TopLevelMixin
    caption: str = ""


def _null_threshold(null: pl.DataFrame | None, secondary: bool) -> float | None:
    """The largest per-label null threshold (over the labels of the view), or None."""
    if null is None or null.is_empty():
        return None
    if secondary:
        null = null.filter(~pl.col("label").str.starts_with(SECONDARY_EXCLUDED_QUESTION + "_"))
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
    views = [
        ("max_rho", "max_abs", False, "Max |Spearman ρ| with any GZ label  (→ more aligned)",
         "Alignment with Galaxy Zoo labels"),
        ("max_rho_secondary", "max_abs_secondary", True,
         "Max |Spearman ρ| with any GZ label except smooth-or-featured  (→ more aligned)",
         "Alignment with GZ labels, smooth-or-featured left out"),
        ("novelty", "novelty", None, "Unexplained GZ variance, 1 − R²  (→ less predictable)",
         "Novelty: what the GZ labels cannot predict"),
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
                x = _null_threshold(frame, secondary)
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
    if data.kind == "sae" and data.run:
        levels = data.run["metrics"].get("fvu_per_level") or []
        if levels:
            frame = pl.DataFrame(levels).select(pl.col("level").cast(pl.Int64),
                                                pl.col("latents").cast(pl.Int64),
                                                pl.col("fvu").cast(pl.Float64))
            m = data.run["metrics"]
            where = m.get("split", data.split)
            groups = data.run["config"].get("group_sizes")
            sub = [f"{data.describe()}",
                   f"reconstruction on the {where} split; group sizes {groups}, top-k "
                   f"{data.run['config'].get('top_k', '?')}"]
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


def _value_word(data: FigureData, pca: bool) -> str:
    return "score" if pca else "activation"


def gallery_figures(lake: Lake, data: FigureData, top: int, n_images: int = 10) -> list[Figure]:
    """One gallery per top feature (by frequency), or per PCA component with both ends."""
    figures = []
    if top <= 0:
        return figures
    if not lake.exists("images", split=data.split):
        data.notes.append(f"no images table for split {data.split!r}: galleries are left out")
        return figures
    jobs: list[tuple[str, FigureData, pl.DataFrame, str | None]] = []
    if data.kind == "sae":
        if lake.exists("sae_activations", run_id=data.model_id, split=data.split):
            jobs.append(("sae", data, data.features.sort("position").head(top), None))
        if data.pca_id and lake.exists("pca_scores", pca_id=data.pca_id, split=data.split):
            base = data.baseline if data.baseline is not None else None
            comps = (base.sort("feature").head(min(top, 5)) if base is not None
                     else pl.DataFrame({"feature": list(range(min(top, 5)))}))
            jobs.append(("pca", data, comps, data.pca_id))
    elif lake.exists("pca_scores", pca_id=data.model_id, split=data.split):
        jobs.append(("pca", data, data.features.sort("feature").head(top), data.model_id))
    for kind, d, feats, pca_id in jobs:
        tops = top_activations(lake, d, feats["feature"].to_list(), n_images, pca_id=pca_id)
        images = load_images(lake, d.split, tops["id_str"].to_list())
        urls = {i: thumbnail_url(b, 96) for i, b in images.items()}
        tops = tops.with_columns(pl.col("id_str").replace_strict(urls, default=None).alias("url"))
        info = {r["feature"]: r for r in feats.to_dicts()}
        for i, feature in enumerate(feats["feature"].to_list()):
            tiles = tops.filter(pl.col("feature") == feature)
            if tiles.is_empty():
                continue
            row = info.get(feature, {})
            word = _value_word(d, kind == "pca")
            if kind == "sae":
                head = (f"SAE feature {feature}: top {tiles.height} galaxies by activation "
                        f"(frequency rank {i + 1}, active in {row.get('frequency', 0):.1%})")
                stem = f"gallery/{i:02d}-sae-feature-{feature}"
            else:
                pid = pca_id
                head = f"PCA component {feature} of {pid}: both ends by score"
                stem = f"gallery/{i:02d}-pca-component-{feature}"
            lines = []
            if row.get("best_label") is not None and row.get("max_abs") is not None:
                lines.append(f"best label {row['best_label']} (|ρ| = {row['max_abs']:.2f})"
                             + (f", novelty {row['novelty']:.2f}" if row.get("novelty") is not None
                                else ""))
            lines.append(f"{d.model_id}, {d.split} split; number under each image: {word}")
            missing = tiles.filter(pl.col("url").is_null()).height
            if missing:
                lines.append(f"{missing} image(s) missing from the images table")
            figures.append(Figure(stem, gallery_chart(tiles.filter(pl.col("url").is_not_null())
                                                      if missing < tiles.height else tiles,
                                                      title=head, subtitle=lines)))
    return figures


# ---------------------------------------------------------------- export
def _check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    bad = [f for f in formats if f not in ("html", "png", "svg")]
    if bad or not formats:
        raise InputError(f"unknown figure format(s) {', '.join(bad) or '(none)'}; "
                         "use html, png and/or svg")
    return formats


def save_chart(chart: alt.TopLevelMixin, stem: Path, formats: Iterable[str],
               scale: float = 2.0) -> list[Path]:
    """Write ``chart`` as ``stem.png`` / ``stem.svg`` (vl-convert, themed); returns the paths."""
    import vl_convert as vlc

    with alt.theme.enable(THEME):
        spec = chart.to_dict()
    written = []
    stem.parent.mkdir(parents=True, exist_ok=True)
    if "png" in formats:
        path = stem.with_suffix(".png")
        path.write_bytes(vlc.vegalite_to_png(spec, scale=scale))
        written.append(path)
    if "svg" in formats:
        path = stem.with_suffix(".svg")
        path.write_text(vlc.vegalite_to_svg(spec))
        written.append(path)
    return written


def _script_json(value: Any) -> str:
    """JSON safe inside a <script> element."""
    return (json.dumps(value, separators=(",", ":"), allow_nan=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _vega_bundle() -> str:
    import vl_convert as vlc

    return vlc.javascript_bundle().replace("</script", "<\\/script")


def report_html(figures: Sequence[Figure], title: str, notes: Sequence[str] = ()) -> str:
    """One offline HTML page with every chart (Vega, Vega-Lite and vega-embed inlined)."""
    with alt.theme.enable(THEME):
        specs = [(f.name, f.chart.to_dict()) for f in figures]
    items = "\n".join(
        f'<section id="fig-{i}"><h2>{html.escape(name)}</h2><div class="chart" id="chart-{i}"></div>'
        f"</section>" for i, (name, _) in enumerate(specs))
    toc = "".join(f'<li><a href="#fig-{i}">{html.escape(name)}</a></li>'
                  for i, (name, _) in enumerate(specs))
    note_html = "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:{FONT};margin:24px;color:#222}} h1{{font-size:22px}}
h2{{font-size:14px;color:#666;font-weight:normal;margin:28px 0 6px}} .note{{color:#a33}}
ul{{columns:3;font-size:13px}}</style>
<script>{_vega_bundle()}</script></head>
<body><h1>{html.escape(title)}</h1>{note_html}<ul>{toc}</ul>
{items}
<script>
const SPECS = {_script_json([s for _, s in specs])};
SPECS.forEach((spec, i) => vegaEmbed("#chart-" + i, spec, {{actions: false, renderer: "svg"}})
  .catch(err => {{ document.getElementById("chart-" + i).textContent = String(err); }}));
</script></body></html>
"""


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
    formats = _check_formats(formats)
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
        from galsae_lake.browser import browser_html

        browser = out / "browser.html"
        browser.write_text(browser_html(lake, data, top=browser_top, n_images=browser_images))
        written.append(browser)
        timings["html"] = time.perf_counter() - t3
    if log is not None:
        for note in data.notes:
            log(f"note: {note}")
        log("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    return written
