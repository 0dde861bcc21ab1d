"""Chart builders: pure functions from Polars frames to Altair charts, in one theme.

Tested through ``chart.to_dict()`` (marks, encodings and data), never pixels.
"""

from __future__ import annotations

import math
from typing import Sequence

import altair as alt
import polars as pl

from galsae_lake.figures.numerics import EV_COMPONENTS, kde_curves

# ---------------------------------------------------------------- look
SAE_COLOR = "#ff6361"
PCA_COLOR = "#003f5c"
#: frequency-rank groups, light (frequent) to dark (rare); wider than the seed's ramp, which
#: could not be told apart in print
GROUP_COLORS = ("#fdae6b", "#fd8d3c", "#f16913", "#d94801", "#a63603", "#7f2704", "#4d1802")
FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
THEME = "galsae"


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
