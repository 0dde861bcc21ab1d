"""Writing figures: PNG/SVG files through vl-convert, and offline HTML pages from the templates
in ``galsae_lake/figures/templates/`` (Vega bundled inline, no CDN)."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

import altair as alt

from galsae_lake.errors import InputError
from galsae_lake.figures.charts import FONT, THEME

IMAGE_FORMATS = ("html", "png", "svg")


@dataclass
class Figure:
    name: str  # file stem, e.g. "max_rho" or "gallery/00-sae-feature-17"
    chart: alt.TopLevelMixin
    caption: str = ""


def check_image_formats(formats: Iterable[str]) -> tuple[str, ...]:
    """The requested figure formats, deduplicated; an InputError for an unknown one."""
    formats = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    bad = [f for f in formats if f not in IMAGE_FORMATS]
    if bad or not formats:
        raise InputError(f"unknown image format(s) {', '.join(bad) or '(none)'}; "
                         "use html, png and/or svg")
    return formats


def template(name: str) -> str:
    """The text of ``templates/<name>`` (package data, shipped in the wheel)."""
    return resources.files("galsae_lake.figures").joinpath("templates", name).read_text("utf-8")


def fill(text: str, **values: str) -> str:
    """Replace each ``__KEY__`` of a template with ``values[key]`` in one pass (a value is never
    searched for placeholders itself)."""
    pattern = re.compile("|".join(f"__{re.escape(key.upper())}__" for key in values))
    return pattern.sub(lambda match: values[match.group(0)[2:-2].lower()], text)


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


def script_json(value: Any) -> str:
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
    return fill(template("report.html"), title=html.escape(title), font=FONT, notes=note_html,
                toc=toc, items=items, specs=script_json([s for _, s in specs]),
                vega=_vega_bundle())
